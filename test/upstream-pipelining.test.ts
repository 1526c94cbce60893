import { performance } from "node:perf_hooks";
import { Redis } from "ioredis";
import { afterEach, describe, expect, inject, it } from "vitest";
import { QueueControl } from "../src/admin/queue-control.js";
import { Spool } from "../src/spool/spool.js";
import { EXCHANGE_REPLIES } from "./support/exchange-replies.js";
import { type FakeUpstream, startFakeUpstream } from "./support/fake-upstream.js";
import type { Fault } from "./support/fault-script.js";
import { type TestRelay, uniquePrefix, waitFor } from "./support/relay.js";
import { buildMessage, submit } from "./support/smtp-client.js";
import { startTcpProxy, type TcpProxy } from "./support/tcp-proxy.js";
import { useFakeUpstream } from "./support/upstream-fixture.js";

/**
 * A message's envelope goes out on its connection as soon as the message before it has been written, behind
 * that one's end of data (RFC 2920 3.1), instead of after its reply: docs/limits.md, "One connection, many
 * messages".
 */

const MAILBOX = "scanner@contoso.com";
const fx = useFakeUpstream({ users: { [MAILBOX]: "pw1" } });
const proxies: TcpProxy[] = [];
afterEach(async () => {
  await Promise.all(proxies.splice(0).map((p) => p.stop()));
});

/** One connection for the mailbox, so that every message goes over the same one. */
function relay(upstream: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  return fx.relay({
    mailboxes: { [MAILBOX]: { password: "pw1" } },
    clients: [{ name: "printers", networks: ["127.0.0.2/32"], mailbox: MAILBOX, from: "keep" }],
    defaults: { limits: { connections: 1, messagesPerMinute: 1_000 } },
    upstream: { host: "127.0.0.1", port: fx.upstream.port, ca: fx.caFile, ...upstream },
    ...extra,
  });
}

/** Submits a message to `to`; returns the relay's queue id for it. */
async function send(r: TestRelay, to: string): Promise<string> {
  const result = await submit({
    port: r.port,
    localAddress: "127.0.0.2",
    startTls: false,
    from: "device@example.com",
    to: [to],
    raw: buildMessage({ from: "device@example.com", to: [to], subject: to }),
  });
  const id = /queued as (\w+)/.exec(result.response)?.[1];
  if (!result.ok || !id) throw new Error(`not queued: ${result.response}`);
  return id;
}

/**
 * Sends "first@example.com" with `fault` scripted for its end of data (a held reply), and once the fake has read
 * that end of data and holds the reply, "second@example.com": the second message's turn on the connection comes
 * while the first waits for its reply. Returns when the reply began to be held, and the two queue ids.
 */
async function secondBehindFirst(r: TestRelay, fault: Fault, upstream: FakeUpstream = fx.upstream) {
  upstream.script({ match: (tx) => tx.rcptTo.includes("first@example.com"), ...fault });
  const first = await send(r, "first@example.com");
  // the fault is taken when the fake reads the end of DATA, before its delay
  await waitFor(() => upstream.faultsLeft === 0, 20_000, "first message's end of data read");
  const heldSince = performance.now();
  const second = await send(r, "second@example.com");
  return { heldSince, first, second };
}

/** What the relay wrote through `tap` between `since` and `until` (performance.now()). */
const writtenBetween = (tap: TcpProxy, since: number, until: number) =>
  tap.chunks.filter((c) => c.from === "client" && c.at > since && c.at < until);

/** The attempt the message was delivered at, once its "delivered" line is logged. */
async function deliveredAttempt(r: TestRelay, id: string): Promise<unknown> {
  const line = () => r.logs.find((l) => l.event === "delivered" && l.id === id);
  await waitFor(() => line() !== undefined, 20_000, `${id} delivered`);
  return line()?.attempt;
}

/** The first message's reply held 1 s, then Exchange's answer to a mailbox whose daily quota is spent. */
const QUOTA = { delayMs: 1_000, reply: EXCHANGE_REPLIES.submissionQuotaExceeded } satisfies Fault;

/** Both messages are held, the mailbox parked once and nothing failed, and a second later still so. */
async function bothHeldWhileParked(r: TestRelay): Promise<void> {
  const queue = r.spool.queue(MAILBOX);
  await waitFor(async () => (await queue.getDelayedCount()) === 2, 20_000, "both messages held");
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  expect(r.logs.filter((l) => l.event === "paused")).toHaveLength(1);
  expect(await queue.getFailedCount()).toBe(0);
}

describe("the next message on a connection", () => {
  it("has its envelope sent while the message before it waits for its reply, and both are delivered once", async () => {
    const tap = await startTcpProxy("127.0.0.1", fx.upstream.port);
    proxies.push(tap);
    const r = await relay({ port: tap.port });
    // held 1.5 s: the second message is queued, taken and written well within that
    const { heldSince } = await secondBehindFirst(r, { delayMs: 1_500 });
    const messages = await fx.upstream.waitForMessages(2, 20_000);
    const [first, second] = messages;
    expect(first?.rcptTo).toEqual(["first@example.com"]);
    expect(second?.rcptTo).toEqual(["second@example.com"]);
    expect(second?.connectionId).toBe(first?.connectionId);
    // while the fake held the first message's reply, the relay wrote on that connection (the second message's
    // envelope, encrypted): a relay that waits for a reply before the next message writes nothing then
    const repliedAt = first?.timing.replied ?? 0;
    const written = writtenBetween(tap, heldSince, repliedAt);
    // what the relay did, should this fail: the traffic and its log from the hold on (ms after it)
    const since = (at: number) => Math.round(at - heldSince);
    const story = JSON.stringify({
      repliedAt: since(repliedAt),
      second: second && {
        mailFrom: since(second.timing.mailFrom),
        dataStart: since(second.timing.dataStart),
      },
      traffic: tap.chunks.filter((c) => c.at > heldSince).map((c) => [c.from, since(c.at), c.bytes.length]),
      log: r.logs.map((l) => [l.msg, l.id, Number(l.time) - Date.now()]),
    });
    expect(written.length, story).toBeGreaterThan(0);
    expect(new Set(written.map((c) => c.connection)).size).toBe(1);
    // the fake still answered them in order: the second's MAIL FROM was read after the first's reply
    expect(second?.timing.mailFrom ?? 0).toBeGreaterThan(repliedAt);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(fx.upstream.messages).toHaveLength(2);
  });

  it.each([
    ["the upstream does not announce PIPELINING", false, {}],
    ["upstream.pipelining is false", true, { pipelining: false }],
  ] as const)("waits for the reply before the next message when %s", async (_, announced, upstream) => {
    const plain = await startFakeUpstream({
      tls: await fx.pki.issue(["127.0.0.1"]),
      users: { [MAILBOX]: "pw1" },
      pipelining: announced,
    });
    const tap = await startTcpProxy("127.0.0.1", plain.port);
    proxies.push(tap);
    try {
      const r = await relay({ port: tap.port, ...upstream });
      const { heldSince } = await secondBehindFirst(r, { delayMs: 1_500 }, plain);
      const [first, second] = await plain.waitForMessages(2, 20_000);
      expect(second?.connectionId).toBe(first?.connectionId);
      const repliedAt = first?.timing.replied ?? 0;
      expect(writtenBetween(tap, heldSince, repliedAt)).toEqual([]);
    } finally {
      await plain.stop();
    }
  });

  it("waits for a connection being closed (its message limit reached) to end before another takes its slot", async () => {
    // one message per connection: the first one's connection closes once its reply is in (2 s later), with a
    // QUIT that then follows it; the slot is given back after that, so the second message's connection never
    // overlaps it. A QUIT cut short would lose the first reply (and send the message again)
    const r = await relay({ maxMessagesPerConnection: 1 });
    const { first } = await secondBehindFirst(r, { delayMs: 2_000 });
    const messages = await fx.upstream.waitForMessages(2, 20_000);
    expect(messages.map((m) => m.rcptTo[0])).toEqual(["first@example.com", "second@example.com"]);
    expect(messages[1]?.connectionId).not.toBe(messages[0]?.connectionId);
    expect(fx.upstream.maxConcurrent(MAILBOX)).toBe(1);
    expect(await deliveredAttempt(r, first)).toBe(1);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(fx.upstream.messages).toHaveLength(2);
  });

  it.each([
    ["dropped", { drop: true }],
    [
      "closed with 421",
      { reply: { code: 421, message: "4.3.2 Service not available, closing transmission channel" } },
    ],
  ] as [string, Fault][])(
    "is sent on a new connection without spending an attempt when the session is %s at the reply to the one before",
    async (_, fault) => {
      const r = await relay({}, { retry: { firstDelay: 500 } });
      const { first, second } = await secondBehindFirst(r, { delayMs: 1_000, ...fault });
      // the second message was never written on the failed connection: not its failure
      expect(await deliveredAttempt(r, second)).toBe(1);
      // the first is retried as the reply table says, and arrives once (the fake did not take it the first time)
      expect(await deliveredAttempt(r, first)).toBe(2);
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(fx.upstream.messages.map((m) => m.rcptTo[0]).sort()).toEqual([
        "first@example.com",
        "second@example.com",
      ]);
    },
  );

  it("is not written when the reply to the one before parks the mailbox (554 5.2.0, daily quota spent)", async () => {
    const r = await relay();
    const { reply } = QUOTA;
    await secondBehindFirst(r, QUOTA);
    // the same reply for the second, should its data be sent: Office 365 answers every message of a mailbox
    // whose quota is spent that way
    fx.upstream.script({ match: (tx) => tx.rcptTo.includes("second@example.com"), reply });
    await bothHeldWhileParked(r);
    expect(fx.upstream.faultsLeft).toBe(1);
  });

  it("waiting for the connection instead (no pipelining), is not sent either when that reply parks the mailbox", async () => {
    const r = await relay({ pipelining: false });
    await secondBehindFirst(r, QUOTA);
    // a marker, no fault: taken by the next MAIL FROM the fake reads, should the second message start
    fx.upstream.script({ at: "mail" });
    await bothHeldWhileParked(r);
    // the second took the connection after the first's reply and gave it back unused
    expect(fx.upstream.faultsLeft).toBe(1);
  });

  it("is not written when a reply to another relay process parks the mailbox", async () => {
    // relay B (one connection) holds the first message's reply 3 s, the second's envelope behind it; relay A,
    // on the same Redis, is allowed a second connection and takes the third message, which Exchange answers
    // with the mailbox's quota spent
    const redisPrefix = uniquePrefix();
    const b = await relay({}, { redisPrefix });
    await secondBehindFirst(b, { delayMs: 3_000 });
    const queue = b.spool.queue(MAILBOX);
    await waitFor(async () => (await queue.getActiveCount()) === 2, 20_000, "both messages taken by relay B");
    const { reply } = QUOTA;
    fx.upstream.script({ match: (tx) => tx.rcptTo.includes("third@example.com"), reply });
    // the same reply for the second, should its data be sent
    fx.upstream.script({ match: (tx) => tx.rcptTo.includes("second@example.com"), reply });
    const a = await relay(
      {},
      { redisPrefix, defaults: { limits: { connections: 2, messagesPerMinute: 1_000 } } },
    );
    await send(a, "third@example.com");
    await waitFor(() => a.logs.some((l) => l.event === "paused"), 20_000, "relay A parks the mailbox");
    // relay B hears of it before the first message's reply, and withdraws the second at its 354
    await waitFor(async () => (await queue.getDelayedCount()) === 2, 20_000, "second and third held");
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    expect(fx.upstream.faultsLeft).toBe(1);
    expect(fx.upstream.messages.map((m) => m.rcptTo[0])).toEqual(["first@example.com"]);
    expect([...a.logs, ...b.logs].filter((l) => l.event === "paused")).toHaveLength(1);
    expect(await queue.getFailedCount()).toBe(0);
  });

  it("is not written when an operator pauses the mailbox while it waits behind another, and goes at resume", async () => {
    const r = await relay();
    const { second } = await secondBehindFirst(r, { delayMs: 2_000 });
    const queue = r.spool.queue(MAILBOX);
    await waitFor(async () => (await queue.getActiveCount()) === 2, 20_000, "both messages taken");
    // what `sluice queue pause` does, over a connection of its own
    const redis = new Redis(inject("redisUrl"));
    try {
      const control = new QueueControl({
        config: r.config,
        spool: new Spool(redis, r.config.redisPrefix, {}),
        redis,
        actor: "cli",
      });
      await control.pause(MAILBOX);
      const [first] = await fx.upstream.waitForMessages(1, 20_000);
      expect(first?.rcptTo).toEqual(["first@example.com"]);
      await waitFor(async () => (await queue.getDelayedCount()) === 1, 20_000, "the second message held");
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      expect(fx.upstream.messages).toHaveLength(1);
      await control.resume(MAILBOX);
      expect(await deliveredAttempt(r, second)).toBe(1);
    } finally {
      redis.disconnect();
    }
  });

  it("is not written on a connection the reply to the one before condemns (432 4.3.2), and goes out on another", async () => {
    const r = await relay({}, { retry: { firstDelay: 500 } });
    const reply = EXCHANGE_REPLIES.concurrentConnections;
    const rejects: string[] = [];
    const onReject = (event: { connectionId: string }) => rejects.push(event.connectionId);
    fx.upstream.events.on("reject", onReject);
    try {
      const { second } = await secondBehindFirst(r, { delayMs: 1_000, reply });
      // the same reply for the second, should its data be sent on that connection (over the limit, every message)
      fx.upstream.script({ match: (tx) => tx.rcptTo.includes("second@example.com"), reply });
      // it is delivered in the end, once the cool-down allows another connection, at its first attempt
      expect(await deliveredAttempt(r, second)).toBe(1);
      expect(rejects.filter((connection) => connection === rejects[0])).toHaveLength(1);
    } finally {
      fx.upstream.events.off("reject", onReject);
    }
  });
});
