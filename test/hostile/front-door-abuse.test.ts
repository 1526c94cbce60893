import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createTestPki, type TestPki } from "../support/certs.js";
import { type FakeUpstream, startFakeUpstream } from "../support/fake-upstream.js";
import { startTestRelay, type TestRelay, tempFile } from "../support/relay.js";
import { openRawSmtp, submit } from "../support/smtp-client.js";

const MAILBOX = "scanner@contoso.com";
const redisUrl = inject("redisUrl");

let pki: TestPki;
let upstream: FakeUpstream;
let relay: TestRelay;

beforeAll(async () => {
  pki = await createTestPki();
  upstream = await startFakeUpstream({ tls: await pki.issue(["127.0.0.1"]), users: { [MAILBOX]: "pw" } });
  const cert = await pki.issue(["127.0.0.1"]);
  relay = await startTestRelay({
    redis: redisUrl,
    tls: { cert: tempFile("r.crt", cert.cert), key: tempFile("r.key", cert.key) },
    listen: [
      { port: 0, host: "127.0.0.1", maxClientsPerAddress: 3, socketTimeout: 1_000, maxSessionTime: 3_000 },
    ],
    authThrottle: { maxFailures: 3, windowMs: 60_000, blockMs: 60_000, delayStepMs: 100 },
    upstream: { host: "127.0.0.1", port: upstream.port, ca: tempFile("ca.pem", pki.ca) },
    mailboxes: { [MAILBOX]: { password: "pw" } },
    clients: [
      { name: "printers", networks: ["127.0.0.2/32"], from: "keep" },
      { name: "app", username: "app", password: "app-pass", from: "keep" },
    ],
  });
});

afterAll(async () => {
  await relay?.stop();
  await upstream?.stop();
});

const PROBES = [
  ["<spammer@evil.example>", "<victim@remote.example>"],
  ["<spammer@evil.example>", "<victim@remote.example@relay.example>"],
  ["<spammer@evil.example>", "<victim%remote.example@relay.example>"],
  ["<spammer@evil.example>", "<@relay.example:victim@remote.example>"],
  ["<spammer@evil.example>", '<"victim@remote.example">'],
  ["<spammer@evil.example>", "<victim@[192.0.2.1]>"],
  ["<>", "<victim@remote.example>"],
  ["<spammer@evil.example>", "<VICTIM@REMOTE.EXAMPLE>"],
  ["<Spammer@Evil.Example>", "<victim!remote.example@relay.example>"],
  ["<spammer@evil.example>", "<victim@remote.example.>"],
];

describe("open-relay probes from an address outside every client network", () => {
  it.each(PROBES)("MAIL FROM:%s RCPT TO:%s is refused and nothing is queued", async (from, to) => {
    const s = await openRawSmtp({ port: relay.port, localAddress: "127.0.0.9" });
    await s.greeting();
    await s.command("EHLO probe.example");
    const mail = await s.command(`MAIL FROM:${from}`);
    const rcpt = await s.command(`RCPT TO:${to}`);
    const data = await s.command("DATA");
    expect(mail.code).toBe(530);
    expect(rcpt.code).toBeGreaterThanOrEqual(500);
    expect(data.code).toBeGreaterThanOrEqual(500);
    await s.close();
    expect(await relay.spool.queue(MAILBOX).count()).toBe(0);
  });

  it("even an allowed client cannot use routing tricks in recipients", async () => {
    const s = await openRawSmtp({ port: relay.port, localAddress: "127.0.0.2" });
    await s.greeting();
    await s.command("EHLO printer.example");
    expect((await s.command("MAIL FROM:<p@floor2.example>")).code).toBe(250);
    for (const to of [
      "<victim@remote.example@relay.example>",
      "<victim%remote.example@relay.example>",
      '<"victim@remote.example">',
      "<victim@[192.0.2.1]>",
      "<victim!remote.example@relay.example>",
    ]) {
      expect([501, 553]).toContain((await s.command(`RCPT TO:${to}`)).code);
    }
    // RFC 5321 3.6.1: a source route is ignored, leaving an ordinary recipient of an authorized client
    expect((await s.command("RCPT TO:<@relay.example:victim@remote.example>")).code).toBe(250);
    await s.close();
  });
});

describe("AUTH brute force", () => {
  it("slows failures from one address, then refuses it with 454, while another address still logs in", async () => {
    const attempt = (pass: string, localAddress: string) =>
      submit({
        port: relay.port,
        localAddress,
        ca: pki.ca,
        auth: { user: "app", pass },
        from: "app@example.com",
        to: ["x@example.com"],
        raw: "Subject: x\r\n\r\nx\r\n",
      });
    for (let i = 0; i < 3; i++) expect((await attempt("guess", "127.0.0.5")).code).toBe(535);
    const blocked = await attempt("app-pass", "127.0.0.5");
    expect(blocked.code).toBe(454);
    expect(blocked.response).toMatch(/^454 4\.7\.0 Too many failed authentication attempts/);
    const other = await attempt("app-pass", "127.0.0.6");
    expect(other.ok, other.response).toBe(true);
    const delays = relay.logs.filter((l) => l.msg === "authentication failed").map((l) => Number(l.delayMs));
    expect(delays).toEqual([0, 100, 200]);
  });
});

describe("slow and greedy clients", () => {
  it("closes an idle session with 421", async () => {
    const s = await openRawSmtp({ port: relay.port, localAddress: "127.0.0.2" });
    await s.greeting();
    const reply = await s.read();
    expect(reply.code).toBe(421);
    await s.closed;
  });

  it("closes a session that trickles bytes to stay alive once it is open longer than maxSessionTime", async () => {
    const s = await openRawSmtp({ port: relay.port, localAddress: "127.0.0.2", timeoutMs: 10_000 });
    await s.greeting();
    await s.command("EHLO trickle.example");
    await s.command("MAIL FROM:<p@floor2.example>");
    await s.command("RCPT TO:<a@example.com>");
    await s.command("DATA");
    const trickle = setInterval(() => s.write("x"), 300);
    try {
      const reply = await s.read();
      expect(reply.code).toBe(421);
      expect(reply.text).toMatch(/4\.4\.2 Session too long/);
    } finally {
      clearInterval(trickle);
    }
    await s.closed;
  });

  it("refuses sessions beyond maxClientsPerAddress with 421 while other addresses are served", async () => {
    const held = await Promise.all(
      [1, 2, 3].map(() => openRawSmtp({ port: relay.port, localAddress: "127.0.0.7" })),
    );
    await Promise.all(held.map((s) => s.greeting()));
    const extra = await openRawSmtp({ port: relay.port, localAddress: "127.0.0.7" });
    expect((await extra.greeting()).code).toBe(421);
    const other = await submit({
      port: relay.port,
      localAddress: "127.0.0.2",
      startTls: false,
      from: "p@floor2.example",
      to: ["served@example.com"],
      raw: "Subject: served\r\n\r\nserved\r\n",
    });
    expect(other.ok, other.response).toBe(true);
    await Promise.all(held.map((s) => s.close()));
    await extra.close();
  });
});
