import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, inject, it } from "vitest";
import { MailboxPauses } from "../src/outbound/mailbox-pauses.js";
import { createTestPki, type TestPki } from "./support/certs.js";
import { type FakeUpstream, startFakeUpstream } from "./support/fake-upstream.js";
import { startTestRelay, type TestRelay, tempFile, waitFor } from "./support/relay.js";
import { buildMessage, submit } from "./support/smtp-client.js";
import { startTokenEndpoint, type TokenEndpoint } from "./support/token-endpoint.js";

const MAILBOX = "reports@contoso.com";
const OTHER = "alerts@contoso.com";
const NO_PERMISSION = "nopermission@contoso.com";
const APP = "11111111-2222-3333-4444-555555555555";
const OTHER_APP = "99999999-8888-7777-6666-555555555555";
const CERT_APP = "cccccccc-cccc-cccc-cccc-cccccccccccc";
const SECRET = "app-secret-Zq8~value-never-logged";
const WRONG_SECRET = "wrong-secret-K3y~also-never-logged";
const TENANT = "contoso.onmicrosoft.com";
const redisUrl = inject("redisUrl");

let pki: TestPki;
let upstream: FakeUpstream;
let endpoint: TokenEndpoint;
let caFile: string;
let certApp: { key: string; cert: string; keyFile: string; certFile: string };
const relays: TestRelay[] = [];

function oauth2(extra: Record<string, unknown> = {}) {
  return {
    tenant: TENANT,
    clientId: APP,
    clientSecret: SECRET,
    authority: endpoint.url,
    ca: caFile,
    ...extra,
  };
}

/** The app that signs a client assertion with its certificate's key instead of a secret. */
function certificateOauth2() {
  return {
    tenant: TENANT,
    clientId: CERT_APP,
    certificate: { key: certApp.keyFile, cert: certApp.certFile },
    authority: endpoint.url,
    ca: caFile,
  };
}

async function relay(mailboxes: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  const names = Object.keys(mailboxes);
  const started = await startTestRelay({
    redis: redisUrl,
    upstream: { host: "127.0.0.1", port: upstream.port, ca: caFile },
    mailboxes,
    clients: names.map((mailbox, i) => ({
      name: `c${i}`,
      networks: [`127.0.0.${i + 2}/32`],
      mailbox,
      from: "keep",
    })),
    retry: { firstDelay: 200, factor: 2, maxDelay: 1_000, authRetryInterval: 60_000 },
    ...extra,
  });
  relays.push(started);
  return started;
}

function send(r: TestRelay, subject: string, from = "127.0.0.2") {
  return submit({
    port: r.port,
    localAddress: from,
    startTls: false,
    from: "app@example.com",
    to: ["someone@example.com"],
    raw: buildMessage({ from: "app@example.com", to: ["someone@example.com"], subject }),
  });
}

const tokenLogs = (r: TestRelay) => r.logs.filter((l) => l.event === "token-fetched");

/** An RSA certificate for an app registration's certificate credential (msal signs assertions with RS256/PS256). */
async function rsaCertificate() {
  const algorithm = {
    name: "RSASSA-PKCS1-v1_5",
    hash: "SHA-256",
    publicExponent: new Uint8Array([1, 0, 1]),
    modulusLength: 2048,
  };
  const keys = (await webcrypto.subtle.generateKey(algorithm, true, [
    "sign",
    "verify",
  ])) as webcrypto.CryptoKeyPair;
  x509.cryptoProvider.set(webcrypto);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: "CN=sluice test app",
    keys,
    signingAlgorithm: algorithm,
    notBefore: new Date(Date.now() - 3600_000),
    notAfter: new Date(Date.now() + 30 * 86400_000),
  });
  const key = `${x509.PemConverter.encode(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey), "PRIVATE KEY")}\n`;
  const certPem = `${cert.toString("pem")}\n`;
  return { key, cert: certPem, keyFile: tempFile("app.key", key), certFile: tempFile("app.crt", certPem) };
}

beforeAll(async () => {
  pki = await createTestPki();
  caFile = tempFile("ca.pem", pki.ca);
  certApp = await rsaCertificate();
  endpoint = await startTokenEndpoint({
    tls: await pki.issue(["127.0.0.1", "localhost"]),
    apps: {
      [APP]: { secret: SECRET },
      [OTHER_APP]: { secret: SECRET },
      [CERT_APP]: { certificate: certApp.cert },
    },
  });
  upstream = await startFakeUpstream({
    tls: await pki.issue(["127.0.0.1"]),
    users: {},
    // a mailbox without Add-MailboxPermission: Exchange refuses every token for it
    oauth2: { validateToken: (user, token) => user !== NO_PERMISSION && endpoint.validateToken(user, token) },
  });
});

afterAll(async () => {
  await upstream?.stop();
  await endpoint?.stop();
});

beforeEach(async () => {
  upstream.reset();
  endpoint.setLifetime(3600);
  await endpoint.setMode("up");
});

afterEach(async () => {
  await Promise.all(relays.splice(0).map((r) => r.stop()));
});

describe("OAuth2 app-only (client credentials)", () => {
  it("delivers mail upstream with AUTH XOAUTH2 and a token from the token endpoint", async () => {
    const before = endpoint.issued.length;
    const r = await relay({ [MAILBOX]: { oauth2: oauth2() } });
    expect((await send(r, "xoauth2")).ok).toBe(true);
    const [message] = await upstream.waitForMessages(1);
    expect(message?.user).toBe(MAILBOX);
    expect(message?.tls).toBe(true);
    expect(endpoint.issued.length - before).toBe(1);
    const request = endpoint.requestBodies.at(-1);
    expect(request?.get("grant_type")).toBe("client_credentials");
    expect(request?.get("scope")).toContain("https://outlook.office365.com/.default");
  });

  it("shares one token between every mailbox of the same app registration", async () => {
    const before = endpoint.issued.length;
    const r = await relay({ [MAILBOX]: { oauth2: oauth2() }, [OTHER]: { oauth2: oauth2() } });
    expect((await send(r, "one", "127.0.0.2")).ok).toBe(true);
    await upstream.waitForMessages(1);
    expect((await send(r, "two", "127.0.0.3")).ok).toBe(true);
    const messages = await upstream.waitForMessages(2);
    expect(messages.map((m) => m.user).sort()).toEqual([OTHER, MAILBOX].sort());
    expect(endpoint.issued.length - before).toBe(1);
  });

  it("obtains tokens with a certificate credential (a client assertion signed by the app's key)", async () => {
    const r = await relay({
      [MAILBOX]: {
        oauth2: certificateOauth2(),
      },
    });
    expect((await send(r, "certificate")).ok).toBe(true);
    await upstream.waitForMessages(1);
    const request = endpoint.requestBodies.at(-1);
    expect(request?.get("client_id")).toBe(CERT_APP);
    expect(request?.get("client_assertion")).toBeTruthy();
    expect(request?.get("client_secret")).toBeNull();
  });

  it("renews tokens before they expire: a run over several lifetimes delivers all with no token fetch per message", async () => {
    endpoint.setLifetime(4);
    const r = await relay(
      { [MAILBOX]: { oauth2: oauth2({ clientId: OTHER_APP }), limits: { messagesPerMinute: 1_000 } } },
      // every message opens a new connection, so every message needs a valid token at AUTH
      { upstream: { host: "127.0.0.1", port: upstream.port, ca: caFile, maxMessagesPerConnection: 1 } },
    );
    const total = 32;
    for (let i = 0; i < total; i++) {
      expect((await send(r, `m${i}`)).ok).toBe(true);
      await new Promise((res) => setTimeout(res, 500));
    }
    await upstream.waitForMessages(total);
    expect(upstream.authFailures).toBe(0);
    expect(await r.spool.queue(MAILBOX).getFailedCount()).toBe(0);
    const fetched = tokenLogs(r);
    // 16 s of 4 s tokens renewed at 3 s: about 5 fetches; one per message would be 32
    expect(fetched.length).toBeGreaterThanOrEqual(4);
    expect(fetched.length).toBeLessThan(total / 2);
    // only the first fetch was on a delivery's path; every other one was a background renewal
    expect(fetched.map((l) => l.reason)).toEqual(["first", ...fetched.slice(1).map(() => "renewal")]);
    expect(r.logs.some((l) => l.event === "deferred")).toBe(false);
  }, 60_000);

  it("recovers from a revoked token with exactly one refetch", async () => {
    const r = await relay(
      { [MAILBOX]: { oauth2: oauth2() } },
      { upstream: { host: "127.0.0.1", port: upstream.port, ca: caFile, idleTimeout: 100 } },
    );
    expect((await send(r, "before")).ok).toBe(true);
    await upstream.waitForMessages(1);
    await waitFor(() => upstream.openConnections(MAILBOX) === 0, 5_000, "idle connection closed");
    endpoint.revoke();
    const fetchesBefore = tokenLogs(r).length;
    expect((await send(r, "after")).ok).toBe(true);
    await upstream.waitForMessages(2);
    const refetched = tokenLogs(r).slice(fetchesBefore);
    expect(refetched.map((l) => l.reason)).toEqual(["refused"]);
    expect(r.logs.some((l) => l.event === "paused")).toBe(false);
  });

  it("holds the mail while the token endpoint is down or slow, and delivers it once the endpoint answers", async () => {
    await endpoint.setMode("down");
    const r = await relay({ [MAILBOX]: { oauth2: oauth2({ timeout: 500 }) } });
    expect((await send(r, "waits")).ok).toBe(true);
    await waitFor(
      () => r.logs.filter((l) => l.event === "deferred" && /no OAuth2 token/.test(l.msg)).length >= 2,
      15_000,
      "held for want of a token",
    );
    await endpoint.setMode("slow", 2_000);
    const deferredBefore = r.logs.filter((l) => l.event === "deferred").length;
    await waitFor(
      () => r.logs.filter((l) => l.event === "deferred").length > deferredBefore,
      15_000,
      "held while the endpoint is slow",
    );
    expect(
      r.logs.some((l) => l.event === "deferred" && /did not answer within 500 ms/.test(String(l.err))),
    ).toBe(true);
    expect(upstream.messages).toHaveLength(0);
    expect(await r.spool.queue(MAILBOX).getFailedCount()).toBe(0);
    await endpoint.setMode("up");
    await upstream.waitForMessages(1, 40_000);
    expect(r.logs.some((l) => l.event === "paused" || l.event === "failed")).toBe(false);
  }, 70_000);

  it("pauses the mailbox, keeping its mail, when the client secret is wrong, and says how to fix it", async () => {
    const r = await relay({ [MAILBOX]: { oauth2: oauth2({ clientSecret: WRONG_SECRET }) } });
    expect((await send(r, "wrong secret")).ok).toBe(true);
    await waitFor(() => r.logs.some((l) => l.event === "paused"), 15_000, "mailbox paused");
    const paused = r.logs.find((l) => l.event === "paused");
    expect(String(paused?.reply)).toMatch(/invalid_client: AADSTS7000215/);
    expect(String(paused?.hint)).toMatch(/clientSecret to the secret's Value \(not its ID\)/);
    expect(String(paused?.hint)).toMatch(/Certificates & secrets/);
    const redis = new Redis(redisUrl);
    const pause = await new MailboxPauses(redis, r.config.redisPrefix)
      .get(MAILBOX)
      .finally(() => redis.disconnect());
    expect(pause?.kind).toBe("auth");
    expect(await r.spool.queue(MAILBOX).getFailedCount()).toBe(0);
    expect(await r.spool.queue(MAILBOX).getDelayedCount()).toBe(1);
    expect(upstream.messages).toHaveLength(0);
  });

  it("when Exchange refuses a fresh token too, pauses the mailbox naming the missing set-up steps", async () => {
    const r = await relay({ [NO_PERMISSION]: { oauth2: oauth2() } });
    expect((await send(r, "no permission")).ok).toBe(true);
    await waitFor(() => r.logs.some((l) => l.event === "paused"), 15_000, "mailbox paused");
    const paused = r.logs.find((l) => l.event === "paused");
    expect(String(paused?.reply)).toMatch(/^535 5\.7\.3/);
    for (const step of [
      "SMTP.SendAsApp",
      "New-ServicePrincipal",
      "Add-MailboxPermission",
      "Set-CASMailbox",
    ]) {
      expect(String(paused?.hint)).toContain(step);
    }
    // one fetch for the first AUTH, exactly one more after the refusal
    expect(tokenLogs(r).map((l) => l.reason)).toEqual(["first", "refused"]);
    expect(await r.spool.queue(NO_PERMISSION).getFailedCount()).toBe(0);
  });

  it("keeps the client secret, the private key and every token out of Redis and the logs", async () => {
    const redis = new Redis(redisUrl);
    try {
      const r = await relay({
        [MAILBOX]: { oauth2: oauth2() },
        [OTHER]: { oauth2: oauth2({ clientId: OTHER_APP, clientSecret: WRONG_SECRET }) },
        [NO_PERMISSION]: {
          oauth2: certificateOauth2(),
        },
      });
      expect((await send(r, "good", "127.0.0.2")).ok).toBe(true);
      expect((await send(r, "bad", "127.0.0.3")).ok).toBe(true);
      expect((await send(r, "refused", "127.0.0.4")).ok).toBe(true);
      await upstream.waitForMessages(1);
      await waitFor(() => r.logs.filter((l) => l.event === "paused").length >= 2, 15_000, "two pauses");
      const keyBody = certApp.key.split("\n").slice(1, 3).join("");
      const secrets = [SECRET, WRONG_SECRET, keyBody, ...endpoint.issued.map((t) => t.token)];
      let stored = "";
      const keys = await redis.keys(`${r.config.redisPrefix}*`);
      expect(keys.length).toBeGreaterThan(3);
      for (const key of keys) {
        const type = await redis.type(key);
        if (type === "string") stored += await redis.get(key);
        else if (type === "hash") stored += JSON.stringify(await redis.hgetall(key));
        else if (type === "list") stored += JSON.stringify(await redis.lrange(key, 0, -1));
        else if (type === "set") stored += JSON.stringify(await redis.smembers(key));
        else if (type === "zset") stored += JSON.stringify(await redis.zrange(key, "0", "-1", "WITHSCORES"));
        else if (type === "stream") stored += JSON.stringify(await redis.xrange(key, "-", "+"));
        stored += key;
      }
      const logged = JSON.stringify(r.logs);
      expect(stored.length).toBeGreaterThan(1_000);
      for (const secret of secrets) {
        expect(stored).not.toContain(secret);
        expect(logged).not.toContain(secret);
      }
    } finally {
      redis.disconnect();
    }
  });
});
