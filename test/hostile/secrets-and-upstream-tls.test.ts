import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { createTestPki, type TestPki } from "../support/certs.js";
import { type FakeUpstream, startFakeUpstream } from "../support/fake-upstream.js";
import { startTestRelay, type TestRelay, tempFile, waitFor } from "../support/relay.js";
import { buildMessage, submit } from "../support/smtp-client.js";

const MAILBOX = "scanner@contoso.com";
const MAILBOX_SECRET = "Mailbox-S3cret-xyzzy";
const CLIENT_SECRET = "Client-S3cret-plugh";
const redisUrl = inject("redisUrl");

let pki: TestPki;
let caFile: string;

beforeAll(async () => {
  pki = await createTestPki();
  caFile = tempFile("ca.pem", pki.ca);
});

/** Every value stored under the relay's prefix, whatever the key type, as one string per key. */
async function dumpRedis(prefix: string): Promise<string[]> {
  const redis = new Redis(redisUrl);
  try {
    const keys = await redis.keys(`${prefix}:*`);
    const values: string[] = [];
    for (const key of keys) {
      const type = await redis.type(key);
      const value =
        type === "string"
          ? await redis.get(key)
          : type === "hash"
            ? JSON.stringify(await redis.hgetall(key))
            : type === "list"
              ? JSON.stringify(await redis.lrange(key, 0, -1))
              : type === "zset"
                ? JSON.stringify(await redis.zrange(key, "0", "-1", "WITHSCORES"))
                : type === "set"
                  ? JSON.stringify(await redis.smembers(key))
                  : type === "stream"
                    ? JSON.stringify(await redis.xrange(key, "-", "+"))
                    : "";
      values.push(`${key} ${value}`);
    }
    return values;
  } finally {
    redis.disconnect();
  }
}

describe("secrets", () => {
  let upstream: FakeUpstream;
  let relay: TestRelay;
  afterAll(async () => {
    await relay?.stop();
    await upstream?.stop();
  });

  it("never reach Redis or the logs during a full run (deliveries, a refused login, a failed delivery)", async () => {
    upstream = await startFakeUpstream({
      tls: await pki.issue(["127.0.0.1"]),
      users: { [MAILBOX]: MAILBOX_SECRET },
    });
    relay = await startTestRelay({
      redis: redisUrl,
      tls: await tlsFiles(),
      upstream: { host: "127.0.0.1", port: upstream.port, ca: caFile },
      mailboxes: { [MAILBOX]: { password: MAILBOX_SECRET } },
      clients: [{ name: "app", username: "app", password: CLIENT_SECRET, from: "keep" }],
    });
    const send = (pass: string, to: string) =>
      submit({
        port: relay.port,
        ca: pki.ca,
        auth: { user: "app", pass },
        from: "app@example.com",
        to: [to],
        raw: buildMessage({ from: "app@example.com", to: [to] }),
      });
    upstream.script({ reply: { code: 550, message: "5.7.1 refused for the test" } });
    expect((await send(CLIENT_SECRET, "one@example.com")).ok).toBe(true);
    expect((await send(CLIENT_SECRET, "two@example.com")).ok).toBe(true);
    expect((await send("wrong-guess", "three@example.com")).code).toBe(535);
    await upstream.waitForMessages(1);
    await waitFor(
      async () => (await relay.spool.queue(MAILBOX).getFailedCount()) === 1,
      10_000,
      "one failed",
    );
    const stored = (await dumpRedis(relay.config.redisPrefix)).join("\n");
    expect(stored.length).toBeGreaterThan(0);
    const logged = relay.logs.map((l) => JSON.stringify(l)).join("\n");
    for (const secret of [
      MAILBOX_SECRET,
      CLIENT_SECRET,
      Buffer.from(`\0app\0${CLIENT_SECRET}`).toString("base64"),
    ]) {
      expect(stored).not.toContain(secret);
      expect(logged).not.toContain(secret);
    }
  });
});

async function tlsFiles() {
  const cert = await pki.issue(["127.0.0.1"]);
  return { cert: tempFile("r.crt", cert.cert), key: tempFile("r.key", cert.key) };
}

describe("an upstream whose TLS cannot be trusted", () => {
  it.each([
    ["an expired certificate", async () => pki.issue(["127.0.0.1"], { expired: true })],
    ["a certificate for another name", async () => pki.issue(["smtp.other.example"])],
    ["a certificate from an unknown CA", async () => (await createTestPki()).issue(["127.0.0.1"])],
  ])("with %s receives nothing; the mail is kept and the log says why", async (_name, makeCert) => {
    const bad = await startFakeUpstream({ tls: await makeCert(), users: { [MAILBOX]: "pw" } });
    const relay = await startTestRelay({
      redis: redisUrl,
      upstream: { host: "127.0.0.1", port: bad.port, ca: caFile },
      mailboxes: { [MAILBOX]: { password: "pw" } },
      clients: [{ name: "printers", networks: ["127.0.0.0/8"], from: "keep" }],
    });
    try {
      const result = await submit({
        port: relay.port,
        startTls: false,
        from: "p@example.com",
        to: ["x@example.com"],
        raw: "Subject: x\r\n\r\nx\r\n",
      });
      expect(result.ok).toBe(true);
      await waitFor(() => relay.logs.some((l) => l.event === "deferred"), 10_000, "delivery deferred");
      const deferred = relay.logs.find((l) => l.event === "deferred");
      expect(String(deferred?.reply)).toMatch(/certificate|CERT|self.signed|altnames|expired/i);
      expect(bad.messages).toHaveLength(0);
      expect(bad.authCount(MAILBOX)).toBe(0);
      expect(await relay.spool.queue(MAILBOX).getFailedCount()).toBe(0);
    } finally {
      await relay.stop();
      await bad.stop();
    }
  });
});
