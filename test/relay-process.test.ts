import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestPki } from "./support/certs.js";
import { type FakeUpstream, startFakeUpstream } from "./support/fake-upstream.js";
import { findFreePort } from "./support/free-port.js";
import { tempFile, waitFor } from "./support/relay.js";
import { startRelayProcess } from "./support/relay-process.js";
import { buildMessage, openRawSmtp, submit } from "./support/smtp-client.js";

const MAILBOX = "scanner@contoso.com";

let upstream: FakeUpstream;
let configFile: string;
let port: number;

beforeAll(async () => {
  const pki = await createTestPki();
  upstream = await startFakeUpstream({
    tls: await pki.issue(["127.0.0.1"]),
    users: { [MAILBOX]: "mailbox-pass" },
  });
  port = await findFreePort();
  const dataDir = mkdtempSync(join(tmpdir(), "sluice-proc-"));
  configFile = join(dataDir, "sluice.yaml");
  writeFileSync(
    configFile,
    [
      "listen:",
      `  - { port: ${port}, host: 127.0.0.1 }`,
      `dataDir: ${dataDir}`,
      "retry: { firstDelay: 200, maxDelay: 1000 }",
      `upstream: { host: 127.0.0.1, port: ${upstream.port}, ca: ${tempFile("ca.pem", pki.ca)} }`,
      "mailboxes:",
      `  ${MAILBOX}: { password: "\${TEST_MAILBOX_PASSWORD}" }`,
      "clients:",
      "  - { name: loopback, networks: [127.0.0.0/8], from: keep }",
    ].join("\n"),
  );
});

afterAll(async () => {
  await upstream?.stop();
});

describe("sluice start with the embedded Redis", () => {
  it("on SIGTERM refuses new sessions with 421, finishes the message in DATA, exits 0, and a restart delivers the queue", async () => {
    await upstream.refuseConnections(true);
    const env = { TEST_MAILBOX_PASSWORD: "mailbox-pass" };
    const first = startRelayProcess(configFile, env);
    await waitFor(
      () => first.output.some((l) => l.includes("smtp listener ready")),
      30_000,
      "relay listening",
    );

    const queued = await submit({
      port,
      startTls: false,
      from: "a@example.com",
      to: ["one@example.com"],
      raw: buildMessage({ from: "a@example.com", to: ["one@example.com"] }),
    });
    expect(queued.ok, queued.response).toBe(true);

    const inData = await openRawSmtp({ port });
    await inData.greeting();
    await inData.command("EHLO app.example");
    await inData.command("MAIL FROM:<a@example.com>");
    await inData.command("RCPT TO:<two@example.com>");
    expect((await inData.command("DATA")).code).toBe(354);
    inData.write("Subject: in flight\r\n\r\nfirst half\r\n");

    first.child.kill("SIGTERM");
    await waitFor(
      () => first.output.some((l) => l.includes("shutdown requested")),
      10_000,
      "shutdown started",
    );
    const late = await openRawSmtp({ port });
    const greeting = await late.greeting();
    expect(greeting.code).toBe(421);
    late.close();

    const finished = await inData.command("second half\r\n.");
    expect(finished.code, finished.text).toBe(250);
    inData.close();
    expect(await first.exited).toBe(0);
    expect(upstream.messages).toHaveLength(0);

    await upstream.refuseConnections(false);
    const second = startRelayProcess(configFile, env);
    try {
      const delivered = await upstream.waitForMessages(2, 30_000);
      expect(delivered.flatMap((m) => m.rcptTo).sort()).toEqual(["one@example.com", "two@example.com"]);
      expect(second.output.join("\n")).not.toContain("mailbox-pass");
    } finally {
      second.child.kill("SIGTERM");
      expect(await second.exited).toBe(0);
    }
  });
});
