import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, inject, it } from "vitest";
import { defaultRawConfig } from "../src/config/load.js";
import { createTestPki, type TestPki } from "./support/certs.js";
import { type FakeUpstream, startFakeUpstream } from "./support/fake-upstream.js";
import { startPrivateRedis } from "./support/redis-server.js";
import { startTestRelay, type TestRelay, tempFile, uniquePrefix, waitFor } from "./support/relay.js";
import { buildMessage, openRawSmtp, submit } from "./support/smtp-client.js";

const MAILBOX = "scanner@contoso.com";
const MAILBOX_PASSWORD = "mailbox-pass";
const redisUrl = inject("redisUrl");

let pki: TestPki;
let upstream: FakeUpstream;
let caFile: string;
let relayTls: { cert: string; key: string };
const relays: TestRelay[] = [];

function relayConfig(extra: Record<string, unknown> = {}) {
  return {
    redis: redisUrl,
    tls: relayTls,
    upstream: { host: "127.0.0.1", port: upstream.port, ca: caFile },
    mailboxes: { [MAILBOX]: { password: MAILBOX_PASSWORD } },
    clients: [
      { name: "floor2-printers", networks: ["127.0.0.2/32"], from: "keep" },
      { name: "erp", username: "erp", password: "erp-pass", from: "keep" },
    ],
    ...extra,
  };
}

async function relay(extra: Record<string, unknown> = {}) {
  const started = await startTestRelay(relayConfig(extra));
  relays.push(started);
  return started;
}

function queuedId(response: string): string {
  const match = /^250 2\.0\.0 Ok: queued as (\w+)/.exec(response);
  if (!match) throw new Error(`not a queued reply: ${response}`);
  return match[1] as string;
}

/** The floor-2 printer (allowed by network, no TLS, no AUTH) sends a one-recipient message. */
function printerSends(r: TestRelay, to: string) {
  return submit({
    port: r.port,
    localAddress: "127.0.0.2",
    startTls: false,
    from: "p@floor2.example",
    to: [to],
    raw: buildMessage({ from: "p@floor2.example", to: [to], subject: to }),
  });
}

/** The delivered bytes are the submitted bytes with one Received header in front. */
function expectTraceHeaderOnly(delivered: Buffer, submitted: Buffer) {
  expect(delivered.length).toBeGreaterThan(submitted.length);
  const trace = delivered.subarray(0, delivered.length - submitted.length).toString("latin1");
  expect(trace).toMatch(/^Received: from .*\r\n(\t.*\r\n)+$/);
  expect(trace.match(/^Received:/gm)).toHaveLength(1);
  expect(delivered.subarray(delivered.length - submitted.length).equals(submitted)).toBe(true);
}

beforeAll(async () => {
  pki = await createTestPki();
  const upstreamCert = await pki.issue(["127.0.0.1", "localhost"]);
  upstream = await startFakeUpstream({ tls: upstreamCert, users: { [MAILBOX]: MAILBOX_PASSWORD } });
  caFile = tempFile("ca.pem", pki.ca);
  const relayCert = await pki.issue(["relay.test", "127.0.0.1"]);
  relayTls = { cert: tempFile("relay.crt", relayCert.cert), key: tempFile("relay.key", relayCert.key) };
});

afterAll(async () => {
  await upstream?.stop();
});

beforeEach(() => upstream.reset());

afterEach(async () => {
  await Promise.all(relays.splice(0).map((r) => r.stop()));
});

describe("a printer on an allowed network", () => {
  it("submits without TLS or AUTH and its 5 MB scan is delivered byte for byte apart from the trace header", async () => {
    const r = await relay();
    const raw = buildMessage({
      from: "printer@floor2.local.example",
      to: ["alice@example.com"],
      attachmentBytes: 5 * 1024 * 1024,
    });
    const result = await submit({
      port: r.port,
      localAddress: "127.0.0.2",
      startTls: false,
      from: "printer@floor2.example",
      to: ["alice@example.com"],
      raw,
    });
    expect(result.ok, result.response).toBe(true);
    queuedId(result.response);
    const [delivered] = await upstream.waitForMessages(1);
    expect(delivered?.user).toBe(MAILBOX);
    expect(delivered?.mailFrom).toBe(MAILBOX);
    expect(delivered?.rcptTo).toEqual(["alice@example.com"]);
    expect(delivered?.tls).toBe(true);
    expectTraceHeaderOnly(delivered?.raw as Buffer, raw);
  });
});

describe("an application", () => {
  it("submits over STARTTLS with AUTH LOGIN and its message is delivered byte for byte apart from the trace header", async () => {
    const r = await relay();
    const raw = buildMessage({
      from: "erp@contoso.com",
      to: ["bob@example.com", "carol@example.org"],
      bodyBytes: 20_000,
    });
    const result = await submit({
      port: r.port,
      startTls: true,
      ca: pki.ca,
      auth: { user: "erp", pass: "erp-pass", method: "LOGIN" },
      from: "erp@contoso.com",
      to: ["bob@example.com", "carol@example.org"],
      raw,
    });
    expect(result.ok, result.response).toBe(true);
    const [delivered] = await upstream.waitForMessages(1);
    expect(delivered?.rcptTo).toEqual(["bob@example.com", "carol@example.org"]);
    expectTraceHeaderOnly(delivered?.raw as Buffer, raw);
    expect(delivered?.raw.toString("latin1")).toMatch(/with ESMTPSA id/);
  });

  it("is refused with 535 when the password is wrong, and nothing is queued", async () => {
    const r = await relay();
    const result = await submit({
      port: r.port,
      startTls: true,
      ca: pki.ca,
      auth: { user: "erp", pass: "nope" },
      from: "erp@contoso.com",
      to: ["bob@example.com"],
      raw: buildMessage({ from: "erp@contoso.com", to: ["bob@example.com"] }),
    });
    expect(result.ok).toBe(false);
    expect(result.code).toBe(535);
    expect(await r.spool.queue(MAILBOX).count()).toBe(0);
  });

  it("may not AUTH on a listener without TLS unless the listener allows it", async () => {
    const r = await relay({ tls: undefined, listen: [{ port: 0, host: "127.0.0.1", tls: "none" }] });
    const session = await openRawSmtp({ port: r.port });
    await session.greeting();
    const ehlo = await session.command("EHLO app.example");
    expect(ehlo.text).not.toMatch(/STARTTLS/);
    const auth = await session.command(`AUTH PLAIN ${Buffer.from("\0erp\0erp-pass").toString("base64")}`);
    expect(auth.code).toBe(538);
    session.close();
  });
});

describe("the front door", () => {
  it("offers the extensions a submission server should", async () => {
    const r = await relay({ maxMessageSize: "1MB" });
    const session = await openRawSmtp({ port: r.port });
    await session.greeting();
    const ehlo = await session.command("EHLO printer.example");
    for (const ext of [
      "PIPELINING",
      "8BITMIME",
      "SMTPUTF8",
      "SIZE 1048576",
      "ENHANCEDSTATUSCODES",
      "STARTTLS",
      "AUTH PLAIN LOGIN",
    ]) {
      expect(ehlo.text).toContain(ext);
    }
    session.close();
  });

  it("refuses an address outside every network that did not AUTH with 530 5.7.0: never an open relay", async () => {
    const r = await relay();
    const result = await submit({
      port: r.port,
      localAddress: "127.0.0.1",
      startTls: false,
      from: "a@example.com",
      to: ["b@example.com"],
      raw: "Subject: x\r\n\r\nx\r\n",
    });
    expect(result.ok).toBe(false);
    expect(result.code).toBe(530);
    expect(result.response).toMatch(/^530 5\.7\.0 Authentication required/);
  });

  it("refuses oversize mail with 552 5.3.4, also when the client lied in SIZE", async () => {
    const r = await relay({ maxMessageSize: 100_000 });
    const big = buildMessage({ from: "p@floor2.example", to: ["a@example.com"], bodyBytes: 200_000 });
    const honest = await submit({
      port: r.port,
      localAddress: "127.0.0.2",
      startTls: false,
      from: "p@floor2.example",
      to: ["a@example.com"],
      raw: big,
    });
    expect(honest.code).toBe(552);

    const session = await openRawSmtp({ port: r.port, localAddress: "127.0.0.2" });
    await session.greeting();
    await session.command("EHLO printer.example");
    expect((await session.command("MAIL FROM:<p@floor2.example> SIZE=1000")).code).toBe(250);
    expect((await session.command("RCPT TO:<a@example.com>")).code).toBe(250);
    expect((await session.command("DATA")).code).toBe(354);
    const reply = await session.command(`${big.toString("latin1")}\r\n.`);
    expect(reply.code).toBe(552);
    expect(reply.text).toMatch(/5\.3\.4/);
    session.close();
    expect(await r.spool.queue(MAILBOX).count()).toBe(0);
  });

  it("answers invalid addresses with 553 or 501", async () => {
    const r = await relay();
    const session = await openRawSmtp({ port: r.port, localAddress: "127.0.0.2" });
    await session.greeting();
    await session.command("EHLO printer.example");
    expect((await session.command("MAIL FROM:<not an address>")).code).toBeGreaterThanOrEqual(501);
    expect((await session.command("MAIL FROM:<p@floor2.example>")).code).toBe(250);
    const rcpt = await session.command("RCPT TO:<user@remote@relay.example>");
    expect([501, 553]).toContain(rcpt.code);
    session.close();
  });
});

describe("durability", () => {
  it("warns at start when the external Redis keeps no append-only file or may evict keys", async () => {
    const volatile = await startPrivateRedis({ appendOnly: false });
    try {
      const r = await relay({ redis: volatile.url });
      const warnings = r.logs.filter((l) => l.level === 40).map((l) => l.msg);
      expect(warnings.some((w) => /appendonly yes/.test(w))).toBe(true);
      await r.stop();
      const durable = await startPrivateRedis({ appendOnly: true });
      try {
        const ok = await relay({ redis: durable.url });
        expect(ok.logs.some((l) => l.level === 40 && /appendonly/.test(l.msg))).toBe(false);
      } finally {
        await Promise.all(relays.splice(0).map((x) => x.stop()));
        await durable.stop();
      }
    } finally {
      await volatile.stop();
    }
  });

  it("answers 451 4.3.0 while Redis is down, and delivers everything acknowledged once it is back", async () => {
    const privateRedis = await startPrivateRedis();
    try {
      const r = await relay({ redis: privateRedis.url });
      const send = (n: number) => printerSends(r, `n${n}@example.com`);
      const acked: string[] = [];
      const first = await send(1);
      expect(first.ok, first.response).toBe(true);
      acked.push("n1@example.com");
      await privateRedis.stop();
      const during = await send(2);
      expect(during.ok).toBe(false);
      expect(during.response).toMatch(/^451 4\.3\.0 /);
      await privateRedis.start();
      await waitFor(async () => (await send(3)).ok, 20_000, "submissions accepted again");
      acked.push("n3@example.com");
      await waitFor(
        () => acked.every((a) => upstream.messages.some((m) => m.rcptTo.includes(a))),
        30_000,
        "acknowledged mail delivered",
      );
      expect(upstream.messages.some((m) => m.rcptTo.includes("n2@example.com"))).toBe(false);
    } finally {
      await Promise.all(relays.splice(0).map((r) => r.stop()));
      await privateRedis.stop();
    }
  });

  it("never delivers a message it answered 451 because no Redis replica confirmed it, and keeps nothing of it", async () => {
    // a Redis with no replica: the relay waits for one that never confirms; meanwhile its workers are told
    // that the mailbox has mail (the relay's own wake would queue behind the WAIT on its connection)
    const lonely = await startPrivateRedis();
    const redis = new Redis(lonely.url);
    try {
      const prefix = uniquePrefix();
      const r = await relay({
        redis: lonely.url,
        redisPrefix: prefix,
        replication: { minReplicas: 1, timeoutMs: 1_500 },
      });
      const send = (n: number) => printerSends(r, `unconfirmed${n}@example.com`);
      const waits = async () =>
        Number(/cmdstat_wait:calls=(\d+)/.exec(await redis.info("commandstats"))?.[1] ?? 0);
      const pending = send(1);
      await new Promise((resolve) => setTimeout(resolve, 500));
      await redis.publish(r.spool.wakeChannel, MAILBOX);
      const first = await pending;
      const failedAt = Date.now();
      expect(first.response).toMatch(/^451 4\.3\.0 /);
      expect(await waits()).toBe(1);
      // for one timeout after that, submissions get 451 without waiting: WAIT holds the connection they share
      const next = await Promise.all([2, 3, 4].map(send));
      for (const result of next) expect(result.response).toMatch(/^451 4\.3\.0 /);
      expect(await waits()).toBe(1);
      // then the next one waits for the replicas again
      await new Promise((resolve) => setTimeout(resolve, failedAt + 1_600 - Date.now()));
      expect((await send(5)).response).toMatch(/^451 4\.3\.0 /);
      expect(await waits()).toBe(2);
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(upstream.messages).toHaveLength(0);
      expect(await redis.keys(`${prefix}:body:*`)).toEqual([]);
      expect(await r.spool.queuedCount(MAILBOX)).toBe(0);
    } finally {
      await Promise.all(relays.splice(0).map((x) => x.stop()));
      redis.disconnect();
      await lonely.stop();
    }
  });

  it("delivers mail queued before a stop after the relay is started again", async () => {
    const prefix = uniquePrefix();
    await upstream.refuseConnections(true);
    const first = await relay({ redisPrefix: prefix });
    const raw = buildMessage({ from: "p@floor2.example", to: ["later@example.com"] });
    const result = await submit({
      port: first.port,
      localAddress: "127.0.0.2",
      startTls: false,
      from: "p@floor2.example",
      to: ["later@example.com"],
      raw,
    });
    expect(result.ok).toBe(true);
    await first.stop();
    await upstream.refuseConnections(false);
    expect(upstream.messages).toHaveLength(0);
    await relay({ redisPrefix: prefix });
    const [delivered] = await upstream.waitForMessages(1);
    expectTraceHeaderOnly(delivered?.raw as Buffer, raw);
  });

  it("holds mail while no mailbox is configured and sends it once one is and the relay restarts", async () => {
    const prefix = uniquePrefix();
    const holding = await relay({
      redisPrefix: prefix,
      mailboxes: {},
      clients: [{ name: "loopback", networks: ["127.0.0.0/8"], from: "keep" }],
    });
    const result = await submit({
      port: holding.port,
      ca: pki.ca,
      from: "app@example.com",
      to: ["held@example.com"],
      raw: "Subject: held\r\n\r\nheld\r\n",
    });
    expect(result.ok, result.response).toBe(true);
    await holding.stop();
    expect(upstream.messages).toHaveLength(0);
    await relay({
      redisPrefix: prefix,
      clients: [{ name: "loopback", networks: ["127.0.0.0/8"], from: "keep" }],
    });
    const [delivered] = await upstream.waitForMessages(1);
    expect(delivered?.rcptTo).toEqual(["held@example.com"]);
  });
});

describe("with no configuration file", () => {
  it("lets loopback submit and sends as SLUICE_MAILBOX, rewriting From to it", async () => {
    const r = await relay({
      ...defaultRawConfig({ SLUICE_MAILBOX: MAILBOX, SLUICE_PASSWORD: MAILBOX_PASSWORD }),
      tls: undefined,
    });
    const raw = buildMessage({ from: "app@example.com", to: ["ops@example.com"] });
    const result = await submit({
      port: r.port,
      startTls: false,
      from: "app@example.com",
      to: ["ops@example.com"],
      raw,
    });
    expect(result.ok, result.response).toBe(true);
    const [delivered] = await upstream.waitForMessages(1);
    expect(delivered?.mailFrom).toBe(MAILBOX);
    expect(delivered?.raw.toString("latin1")).toMatch(new RegExp(`^From: .*<?${MAILBOX}>?`, "m"));
    expect(delivered?.raw.toString("latin1")).toMatch(/^Reply-To: .*app@example\.com/m);
  });
});

describe("delivery outcomes", () => {
  const send = (r: TestRelay, to: string) =>
    submit({
      port: r.port,
      localAddress: "127.0.0.2",
      startTls: false,
      from: "p@floor2.example",
      to: [to],
      raw: buildMessage({ from: "p@floor2.example", to: [to] }),
    });

  it("delivers exactly once when the upstream answers 451 twice and then 250", async () => {
    const r = await relay();
    upstream.script(
      { reply: { code: 451, message: "4.7.0 Temporary server error. Please try again later." } },
      { reply: { code: 451, message: "4.7.0 Temporary server error. Please try again later." } },
    );
    expect((await send(r, "retry@example.com")).ok).toBe(true);
    await upstream.waitForMessages(1);
    await new Promise((res) => setTimeout(res, 1_500));
    expect(upstream.messages).toHaveLength(1);
    expect(upstream.faultsLeft).toBe(0);
    expect(r.logs.filter((l) => l.event === "deferred")).toHaveLength(2);
  });

  it("keeps a message the upstream refuses with 550 as failed, with the reply, and never retries it", async () => {
    const r = await relay();
    upstream.script({
      reply: { code: 550, message: "5.7.1 Client does not have permissions to send as this sender" },
    });
    const id = queuedId((await send(r, "refused@example.com")).response);
    const queue = r.spool.queue(MAILBOX);
    await waitFor(async () => (await queue.getJobState(id)) === "failed", 20_000, "job failed");
    const job = await queue.getJob(id);
    expect(job?.failedReason).toMatch(/^550 5\.7\.1 Client does not have permissions/);
    expect(job?.attemptsMade).toBe(1);
    expect(upstream.messages).toHaveLength(0);
    expect(await r.spool.readBody(id)).not.toBeNull();
  });

  it("reuses one connection for the next messages after a message whose recipient was refused at RCPT", async () => {
    const r = await relay({
      mailboxes: { [MAILBOX]: { password: MAILBOX_PASSWORD, limits: { connections: 1 } } },
    });
    upstream.script({
      at: "rcpt",
      rcpt: "gone@example.com",
      reply: {
        code: 550,
        message: "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
      },
    });
    const refused = queuedId((await send(r, "gone@example.com")).response);
    const queue = r.spool.queue(MAILBOX);
    await waitFor(
      async () => (await queue.getJobState(refused)) === "failed",
      20_000,
      "refused message failed",
    );
    // the refused transaction is left open upstream: the next message must start with RSET, not a nested MAIL
    expect((await send(r, "next@example.com")).ok).toBe(true);
    expect((await send(r, "after@example.com")).ok).toBe(true);
    const delivered = await upstream.waitForMessages(2);
    expect(delivered.flatMap((m) => m.rcptTo)).toEqual(["next@example.com", "after@example.com"]);
    expect(new Set(delivered.map((m) => m.connectionId)).size).toBe(1);
    expect(upstream.authCount(MAILBOX)).toBe(1);
  });

  it("sends nothing to an upstream that does not offer STARTTLS, and keeps the mail", async () => {
    const plain = await startFakeUpstream({
      tls: await pki.issue(["127.0.0.1"]),
      offerStartTls: false,
      users: { [MAILBOX]: MAILBOX_PASSWORD },
    });
    try {
      const r = await relay({ upstream: { host: "127.0.0.1", port: plain.port, ca: caFile } });
      const id = queuedId((await send(r, "secret@example.com")).response);
      await waitFor(
        () => r.logs.some((l) => l.event === "deferred" && l.id === id),
        20_000,
        "delivery deferred",
      );
      expect(plain.messages).toHaveLength(0);
      expect(plain.authCount(MAILBOX)).toBe(0);
      expect(await r.spool.readBody(id)).not.toBeNull();
    } finally {
      await plain.stop();
    }
  });
});
