import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../src/config/load.js";
import { runDoctor } from "../src/doctor/doctor.js";
import { createTestPki, type TestPki } from "./support/certs.js";
import { type FakeUpstream, startFakeUpstream } from "./support/fake-upstream.js";
import { tempFile } from "./support/relay.js";
import { writeConfigFile } from "./support/relay-process.js";
import { startTokenEndpoint, type TokenEndpoint } from "./support/token-endpoint.js";

const GOOD = "scanner@contoso.com";
const DISABLED = "disabled@contoso.com";
const APP_MAILBOX = "reports@contoso.com";
const APP = "11111111-2222-3333-4444-555555555555";
const run = promisify(execFile);
const cli = join(import.meta.dirname, "../src/cli.ts");

let pki: TestPki;
let upstream: FakeUpstream;
let clearUpstream: FakeUpstream;
let endpoint: TokenEndpoint;
let caFile: string;

function config(mailboxes: Record<string, unknown>, upstreamPort = upstream.port) {
  return {
    upstream: { host: "127.0.0.1", port: upstreamPort, ca: caFile },
    mailboxes,
    hostname: "relay.test",
  };
}

function doctor(raw: Record<string, unknown>, options: { mailbox?: string; sendTest?: string } = {}) {
  const { config: parsed } = parseConfig(raw, process.env, "test");
  return runDoctor(parsed, { ...options, logger: pino({ level: "silent" }) });
}

beforeAll(async () => {
  pki = await createTestPki();
  caFile = tempFile("ca.pem", pki.ca);
  endpoint = await startTokenEndpoint({
    tls: await pki.issue(["127.0.0.1", "localhost"]),
    apps: { [APP]: { secret: "app-secret" } },
  });
  const tls = await pki.issue(["127.0.0.1"]);
  upstream = await startFakeUpstream({
    tls,
    users: { [GOOD]: "pw", [DISABLED]: "pw" },
    smtpAuthDisabled: [DISABLED],
    oauth2: { validateToken: (user, token) => endpoint.validateToken(user, token) },
  });
  clearUpstream = await startFakeUpstream({ tls, offerStartTls: false, users: { [GOOD]: "pw" } });
});

afterAll(async () => {
  await upstream?.stop();
  await clearUpstream?.stop();
  await endpoint?.stop();
});

describe("sluice doctor", () => {
  it("passes a mailbox whose every step works, reporting TLS and certificate, and sends no mail", async () => {
    const report = await doctor(config({ [GOOD]: { password: "pw" } }));
    expect(report.ok).toBe(true);
    const [diagnosis] = report.mailboxes;
    expect(diagnosis?.steps.map((s) => s.step)).toEqual([
      "resolve",
      "connect",
      "starttls",
      "auth",
      "mail-from",
      "rset",
      "quit",
    ]);
    expect(diagnosis?.steps.every((s) => s.ok)).toBe(true);
    const starttls = diagnosis?.steps.find((s) => s.step === "starttls");
    expect(starttls?.detail).toMatch(
      /^TLSv1\.[23], certificate CN=127\.0\.0\.1 issued by sluice test CA .*, expires \d{4}-\d\d-\d\d \(\d+ days\)/,
    );
    expect(diagnosis?.steps.find((s) => s.step === "mail-from")?.detail).toMatch(/^250/);
    expect(upstream.messages.filter((m) => m.user === GOOD)).toHaveLength(0);
  });

  it("obtains a token for an OAuth2 mailbox and authenticates with it", async () => {
    const report = await doctor(
      config({
        [APP_MAILBOX]: {
          oauth2: {
            tenant: "contoso.onmicrosoft.com",
            clientId: APP,
            clientSecret: "app-secret",
            authority: endpoint.url,
            ca: caFile,
          },
        },
      }),
    );
    expect(report.ok).toBe(true);
    expect(report.mailboxes[0]?.steps.map((s) => s.step)).toContain("token");
    expect(report.mailboxes[0]?.steps.find((s) => s.step === "auth")?.detail).toMatch(/^235 .*\(oauth2\)$/);
  });

  it("fails AUTH for a wrong password, with the reply and what to check", async () => {
    const report = await doctor(config({ [GOOD]: { password: "wrong" } }));
    expect(report.ok).toBe(false);
    const last = report.mailboxes[0]?.steps.at(-1);
    expect(last).toMatchObject({ step: "auth", ok: false });
    expect(last?.detail).toMatch(/^535 5\.7\.3/);
    expect(last?.hint).toMatch(/Wrong password or token/);
  });

  it("says how to enable SMTP AUTH when Exchange answers 535 5.7.139", async () => {
    const report = await doctor(config({ [DISABLED]: { password: "pw" } }));
    const last = report.mailboxes[0]?.steps.at(-1);
    expect(last).toMatchObject({ step: "auth", ok: false });
    expect(last?.detail).toMatch(/^535 5\.7\.139/);
    expect(last?.hint).toContain(
      `Set-CASMailbox -Identity ${DISABLED} -SmtpClientAuthenticationDisabled $false`,
    );
  });

  it("fails at STARTTLS when the upstream does not offer it, and never sends the password", async () => {
    const report = await doctor(config({ [GOOD]: { password: "pw" } }, clearUpstream.port));
    expect(report.ok).toBe(false);
    const steps = report.mailboxes[0]?.steps ?? [];
    expect(steps.map((s) => [s.step, s.ok])).toEqual([
      ["resolve", true],
      ["connect", true],
      ["starttls", false],
    ]);
    expect(steps.at(-1)?.hint).toMatch(/STARTTLS not offered or refused/);
    expect(clearUpstream.authCount(GOOD)).toBe(0);
    expect(clearUpstream.authFailures).toBe(0);
  });

  it("fails at connect when nothing listens, naming host and port", async () => {
    const closed = await startFakeUpstream({ users: {} });
    const port = closed.port;
    await closed.stop();
    const report = await doctor(config({ [GOOD]: { password: "pw" } }, port));
    expect(report.mailboxes[0]?.steps.at(-1)).toMatchObject({ step: "connect", ok: false });
    expect(report.mailboxes[0]?.steps.at(-1)?.hint).toMatch(/check upstream\.host and upstream\.port/);
  });

  it("sends exactly one test message with --send-test", async () => {
    const before = upstream.messages.length;
    const report = await doctor(config({ [GOOD]: { password: "pw" } }), { sendTest: "it@example.com" });
    expect(report.ok).toBe(true);
    expect(report.mailboxes[0]?.steps.find((s) => s.step === "send-test")?.detail).toMatch(
      /^it@example\.com: 250/,
    );
    expect(upstream.messages.length - before).toBe(1);
    expect(upstream.messages.at(-1)?.rcptTo).toEqual(["it@example.com"]);
  });

  it("as a command: exits 1 when a mailbox fails, 0 when every checked mailbox passes, --json for machines", async () => {
    const file = writeConfigFile(config({ [GOOD]: { password: "pw" }, [DISABLED]: { password: "pw" } }));
    const failing = await run("node", ["--import", "tsx", cli, "doctor", "--config", file, "--json"]).catch(
      (e) => e,
    );
    expect(failing.code).toBe(1);
    const report = JSON.parse(failing.stdout);
    expect(report.mailboxes.map((m: { mailbox: string; ok: boolean }) => [m.mailbox, m.ok])).toEqual([
      [GOOD, true],
      [DISABLED, false],
    ]);
    const passing = await run("node", [
      "--import",
      "tsx",
      cli,
      "doctor",
      "--config",
      file,
      "--mailbox",
      GOOD,
    ]);
    expect(passing.stdout).toMatch(/PASS {2}auth/);
    expect(passing.stdout).toMatch(/=> ready to send/);
  });
});
