import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createTestPki, type TestPki } from "../support/certs.js";
import { type FakeUpstream, type FakeUpstreamOptions, startFakeUpstream } from "../support/fake-upstream.js";
import {
  buildMessage,
  openRawSmtp,
  openSubmission,
  type SubmissionOptions,
  type SubmissionSession,
  submit,
} from "../support/smtp-client.js";

const MAILBOX = "Scanner@Contoso.com";
const PASSWORD = "mailbox-pass";
const OTHER = "other@contoso.com";

let pki: TestPki;
let upstream: FakeUpstream;
const extraUpstreams: FakeUpstream[] = [];
const sessions: SubmissionSession[] = [];

function login(extra: Partial<SubmissionOptions> = {}): SubmissionOptions {
  return {
    port: upstream.port,
    startTls: true,
    ca: pki.ca,
    auth: { user: MAILBOX, pass: PASSWORD },
    ...extra,
  };
}

function message(to = "alice@example.com", from = MAILBOX) {
  return { from, to: [to], raw: buildMessage({ from, to: [to] }) };
}

async function session(extra: Partial<SubmissionOptions> = {}): Promise<SubmissionSession> {
  const opened = await openSubmission(login(extra));
  sessions.push(opened);
  return opened;
}

/** A second fake (TLS, the mailbox's password) with other settings; stopped after the test. */
async function extraUpstream(options: Partial<FakeUpstreamOptions>): Promise<FakeUpstream> {
  const extra = await startFakeUpstream({
    tls: await pki.issue(["127.0.0.1"]),
    users: { [MAILBOX]: PASSWORD },
    ...options,
  });
  extraUpstreams.push(extra);
  return extra;
}

beforeAll(async () => {
  pki = await createTestPki();
  upstream = await startFakeUpstream({
    tls: await pki.issue(["127.0.0.1", "localhost"]),
    users: { [MAILBOX]: PASSWORD, [OTHER]: "other-pass" },
    oauth2: { validateToken: (user, token) => user.toLowerCase() === OTHER && token === "good-token" },
  });
});

afterEach(async () => {
  await Promise.all(sessions.splice(0).map((s) => s.close()));
  await Promise.all(extraUpstreams.splice(0).map((u) => u.stop()));
  upstream.reset();
});

afterAll(async () => {
  await upstream.stop();
});

describe("fake Exchange Online upstream", () => {
  it("refuses AUTH before STARTTLS with 538 5.7.11 and MAIL before AUTH with 530 5.7.57", async () => {
    const raw = await openRawSmtp({ port: upstream.port });
    try {
      expect((await raw.greeting()).code).toBe(220);
      const ehlo = await raw.command("EHLO client.example");
      expect(ehlo.lines).toContain("STARTTLS");
      expect(ehlo.lines).toContain("ENHANCEDSTATUSCODES");
      const auth = await raw.command(
        `AUTH PLAIN ${Buffer.from(`\0${MAILBOX}\0${PASSWORD}`).toString("base64")}`,
      );
      expect(`${auth.code} ${auth.text}`).toBe(
        "538 5.7.11 Encryption required for requested authentication mechanism",
      );
      const mail = await raw.command(`MAIL FROM:<${MAILBOX}>`);
      expect(`${mail.code} ${mail.text}`).toBe("530 5.7.57 Client not authenticated to send mail");
    } finally {
      await raw.close();
    }
    expect(upstream.authCount(MAILBOX)).toBe(0);
  });

  it("accepts AUTH PLAIN after STARTTLS and records the message as received", async () => {
    const sent = message("Alice@Example.com");
    const result = await submit({ ...login(), ...sent });
    expect(result.ok, result.response).toBe(true);
    expect(result.code).toBe(250);
    expect(result.response).toMatch(/^250 2\.0\.0 OK /);
    const [received] = await upstream.waitForMessages(1, 5000);
    expect(received).toMatchObject({
      user: MAILBOX,
      mailFrom: MAILBOX,
      rcptTo: ["Alice@Example.com"],
      tls: true,
    });
    expect(received?.raw.equals(sent.raw)).toBe(true);
    expect(upstream.authCount(MAILBOX)).toBe(1);
  });

  it("keeps only the first keepBytes of each message when told to (the benchmark's memory)", async () => {
    const head = await extraUpstream({ keepBytes: 100 });
    const sent = message();
    expect((await submit({ ...login({ port: head.port }), ...sent })).code).toBe(250);
    const [received] = await head.waitForMessages(1, 5000);
    expect(sent.raw.length).toBeGreaterThan(100);
    expect(received?.raw.equals(sent.raw.subarray(0, 100))).toBe(true);
  });

  it("accepts AUTH LOGIN, answers each step with an enhanced status code as Exchange does", async () => {
    const raw = await openRawSmtp({ port: upstream.port, ca: pki.ca });
    try {
      await raw.greeting();
      await raw.command("EHLO client.example");
      expect((await raw.command("STARTTLS")).text).toBe("2.0.0 SMTP server ready");
      await raw.startTls();
      expect((await raw.command("EHLO client.example")).lines).toContain("AUTH PLAIN LOGIN XOAUTH2");
      expect((await raw.command("AUTH LOGIN")).code).toBe(334);
      expect((await raw.command(Buffer.from(MAILBOX).toString("base64"))).code).toBe(334);
      const auth = await raw.command(Buffer.from(PASSWORD).toString("base64"));
      expect(`${auth.code} ${auth.text}`).toBe("235 2.7.0 Authentication successful");
      expect((await raw.command(`MAIL FROM:<${MAILBOX}>`)).text).toBe("2.1.0 Sender OK");
      expect((await raw.command("RCPT TO:<a@example.com>")).text).toBe("2.1.5 Recipient OK");
      expect((await raw.command("QUIT")).text).toBe("2.0.0 Service closing transmission channel");
    } finally {
      await raw.close();
    }
  });

  it("refuses a wrong password with 535 5.7.3 and counts the failure", async () => {
    const result = await submit({ ...login({ auth: { user: MAILBOX, pass: "wrong" } }), ...message() });
    expect(result).toMatchObject({ ok: false, code: 535, stage: "AUTH PLAIN" });
    expect(result.response).toBe("535 5.7.3 Authentication unsuccessful");
    expect(upstream.authFailures).toBe(1);
    expect(upstream.messages).toHaveLength(0);
  });

  it("refuses a MAIL FROM other than the mailbox with 554 5.2.0 SendAsDenied, and matches case-insensitively", async () => {
    const denied = await submit({ ...login(), ...message("a@example.com", "someone.else@contoso.com") });
    expect(denied).toMatchObject({ ok: false, code: 554, stage: "DATA" });
    expect(denied.response).toMatch(/^554 5\.2\.0 STOREDRV\.Submission\.Exception:SendAsDeniedException/);
    const allowed = await submit({ ...login(), ...message("a@example.com", MAILBOX.toLowerCase()) });
    expect(allowed.ok, allowed.response).toBe(true);
    expect(upstream.messages).toHaveLength(1);
  });

  it("accepts XOAUTH2 when the token validates and refuses it with 535 5.7.3 otherwise", async () => {
    const good = await submit({
      ...login({ auth: { user: OTHER, accessToken: "good-token" } }),
      ...message("a@example.com", OTHER),
    });
    expect(good.ok, good.response).toBe(true);
    const bad = await submit({
      ...login({ auth: { user: OTHER, accessToken: "stale-token" } }),
      ...message("a@example.com", OTHER),
    });
    expect(bad).toMatchObject({ ok: false, code: 535, stage: "AUTH XOAUTH2" });
    expect(upstream.messages.map((m) => m.user)).toEqual([OTHER]);
  });

  it("counts concurrent connections per mailbox and answers 432 4.3.2 to every message of the 4th", async () => {
    const first = await Promise.all([session(), session(), session()]);
    expect(upstream.openConnections(MAILBOX)).toBe(3);
    const fourth = await session();
    expect(upstream.maxConcurrent(MAILBOX)).toBe(4);
    for (let i = 0; i < 2; i++) {
      const refused = await fourth.send({ from: MAILBOX, to: ["a@example.com"] }, message().raw);
      expect(refused).toMatchObject({ ok: false, code: 432, stage: "DATA" });
      expect(refused.response).toBe("432 4.3.2 Concurrent connections limit exceeded.");
    }
    expect(upstream.count432(MAILBOX)).toBe(2);
    const accepted = await first[0]?.send({ from: MAILBOX, to: ["a@example.com"] }, message().raw);
    expect(accepted?.ok).toBe(true);
    expect(upstream.messages).toHaveLength(1);

    await Promise.all(sessions.splice(0).map((s) => s.close()));
    expect(upstream.openConnections(MAILBOX)).toBe(0);
    const fresh = await submit({ ...login(), ...message() });
    expect(fresh.ok, fresh.response).toBe(true);
    expect(upstream.maxConcurrent(MAILBOX)).toBe(4);
    expect(upstream.openConnections(OTHER)).toBe(0);
  });

  it("applies scripted 451, 550 and drop faults once each, then behaves normally", async () => {
    upstream.script(
      { reply: { code: 451, message: "4.7.0 Temporary server error. Please try again later" } },
      {
        at: "rcpt",
        rcpt: "bad@example.com",
        reply: { code: 550, message: "5.1.10 RESOLVER.ADR.RecipientNotFound" },
      },
      { at: "mail", drop: true, match: (tx) => tx.user === MAILBOX },
    );
    expect(upstream.faultsLeft).toBe(3);

    const dropped = await submit({ ...login(), ...message() });
    expect(dropped).toMatchObject({ ok: false, stage: "MAIL FROM" });
    expect(dropped.code).toBeUndefined();

    const deferred = await submit({ ...login(), ...message() });
    expect(deferred).toMatchObject({ ok: false, code: 451, stage: "DATA" });
    expect(deferred.response).toBe("451 4.7.0 Temporary server error. Please try again later");

    const rejected = await submit({ ...login(), ...message("bad@example.com") });
    expect(rejected).toMatchObject({ ok: false, code: 550, stage: "RCPT TO" });
    expect(rejected.response).toBe("550 5.1.10 RESOLVER.ADR.RecipientNotFound");

    expect(upstream.faultsLeft).toBe(0);
    const results = await Promise.all([
      submit({ ...login(), ...message("bad@example.com") }),
      submit({ ...login(), ...message() }),
    ]);
    expect(results.map((r) => r.ok)).toEqual([true, true]);
    expect(upstream.messages).toHaveLength(2);
  });

  it("delays replies as scripted and by replyDelayMs", async () => {
    const slow = await extraUpstream({ replyDelayMs: 150 });
    slow.script({ at: "mail", delayMs: 150 });
    const started = Date.now();
    const result = await submit({ ...login({ port: slow.port }), ...message() });
    expect(result.ok, result.response).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(300);
  });

  it("accepts several messages on one connection, with RSET between them", async () => {
    const reused = await session();
    expect((await reused.send({ from: MAILBOX, to: ["a@example.com"] }, message().raw)).ok).toBe(true);
    const reset = await reused.reset();
    expect(reset).toMatchObject({ ok: true, code: 250 });
    expect(
      (await reused.send({ from: MAILBOX, to: ["b@example.com"] }, message("b@example.com").raw)).ok,
    ).toBe(true);
    const [a, b] = upstream.messages;
    expect(a?.connectionId).toBe(b?.connectionId);
    expect(upstream.authCount(MAILBOX)).toBe(1);
    expect(upstream.connectionCount()).toBe(1);
  });

  it("refuses new connections while asked to (ECONNREFUSED, or a reset), and serves again afterwards", async () => {
    const open = await session();
    await upstream.refuseConnections(true);
    const refused = await submit({ ...login(), ...message() });
    expect(refused).toMatchObject({ ok: false, stage: "CONN" });
    expect(refused.response).toMatch(/ECONNREFUSED/);
    expect((await open.send({ from: MAILBOX, to: ["a@example.com"] }, message().raw)).ok).toBe(true);

    await upstream.refuseConnections(true, "reset");
    const reset = await submit({ ...login(), ...message() });
    expect(reset).toMatchObject({ ok: false, stage: "CONN" });

    await upstream.refuseConnections(false);
    expect((await submit({ ...login(), ...message() })).ok).toBe(true);
  });

  it("offers implicit TLS, and plain AUTH when it has no certificate", async () => {
    const implicit = await extraUpstream({ implicitTls: true });
    const plain = await startFakeUpstream({ users: { [MAILBOX]: PASSWORD } });
    extraUpstreams.push(plain);
    const overTls = await submit({
      ...login({ port: implicit.port, secure: true, startTls: undefined }),
      ...message(),
    });
    expect(overTls.ok, overTls.response).toBe(true);
    expect(implicit.messages[0]?.tls).toBe(true);
    const inClear = await submit({ ...login({ port: plain.port, startTls: false }), ...message() });
    expect(inClear.ok, inClear.response).toBe(true);
    expect(plain.messages[0]?.tls).toBe(false);
  });

  it("stop() closes the connections still open", async () => {
    const doomed = await startFakeUpstream({ users: { [MAILBOX]: PASSWORD } });
    const raw = await openRawSmtp({ port: doomed.port });
    await raw.greeting();
    await doomed.stop();
    await raw.closed;
    expect(raw.isClosed).toBe(true);
    await doomed.stop(); // idempotent
  });
});
