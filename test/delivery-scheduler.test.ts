import { Queue, Worker } from "bullmq";
import { Redis } from "ioredis";
import { beforeAll, describe, expect, inject, it } from "vitest";
import { createTestPki } from "./support/certs.js";
import { type FakeUpstream, type ReceivedMessage, startFakeUpstream } from "./support/fake-upstream.js";
import { type PrivateRedis, startPrivateRedis } from "./support/redis-server.js";
import { startTestRelay, type TestRelay, tempFile, uniquePrefix } from "./support/relay.js";
import { buildMessage, openSubmission, submit } from "./support/smtp-client.js";

const redisUrl = inject("redisUrl");
const mailboxOf = (i: number) => `app${i}@contoso.com`;

/** One mailbox per sender app<i>@contoso.com, and a client that sends as it. */
function appsConfig(
  count: number,
  upstream: FakeUpstream,
  extra: { limits?: Record<string, number>; upstream?: Record<string, unknown> } = {},
) {
  const mailboxes: Record<string, unknown> = {};
  const clients: unknown[] = [];
  for (let i = 0; i < count; i++) {
    mailboxes[mailboxOf(i)] = { password: "pw", limits: { messagesPerMinute: 10_000, ...extra.limits } };
    clients.push({
      name: `app${i}`,
      networks: ["127.0.0.1/32"],
      senders: [mailboxOf(i)],
      mailbox: mailboxOf(i),
      from: "keep",
    });
  }
  return {
    upstream: { host: "127.0.0.1", port: upstream.port, ca: caFile, ...extra.upstream },
    mailboxes,
    clients,
  };
}

/** One mailbox (app0@) for relays that share the test Redis under a prefix of their own. */
function sharedConfig(upstream: FakeUpstream, extra: Parameters<typeof appsConfig>[2] = {}) {
  return { redis: redisUrl, redisPrefix: uniquePrefix(), ...appsConfig(1, upstream, extra) };
}

let pki: Awaited<ReturnType<typeof createTestPki>>;
let caFile: string;

beforeAll(async () => {
  pki = await createTestPki();
  caFile = tempFile("ca.pem", pki.ca);
});

/**
 * Two relays on one Redis prefix delivering app0@'s mail to one fake upstream (answering after replyDelayMs);
 * both, and the upstream, are stopped after `run`.
 */
async function withTwoRelays(
  replyDelayMs: number,
  extra: Parameters<typeof appsConfig>[2],
  run: (relays: [TestRelay, TestRelay], upstream: FakeUpstream) => Promise<void>,
): Promise<void> {
  const upstream = await startUpstream(1, replyDelayMs);
  const shared = sharedConfig(upstream, extra);
  const relays: [TestRelay, TestRelay] = [await startTestRelay(shared), await startTestRelay(shared)];
  try {
    await run(relays, upstream);
  } finally {
    await Promise.all(relays.map((r) => r.stop()));
    await upstream.stop();
  }
}

/** The fake upstream with mailboxes app0@ .. app<count-1>@ (password "pw"). */
async function startUpstream(count: number, replyDelayMs = 0): Promise<FakeUpstream> {
  return startFakeUpstream({ tls: await pki.issue(["127.0.0.1"]), users: usersOf(count), replyDelayMs });
}

function usersOf(count: number): Record<string, string> {
  return Object.fromEntries(Array.from({ length: count }, (_, i) => [mailboxOf(i), "pw"]));
}

async function send(relay: TestRelay, i: number, subject: string): Promise<void> {
  const to = ["someone@example.org"];
  const result = await submit({
    port: relay.port,
    startTls: false,
    from: mailboxOf(i),
    to,
    raw: buildMessage({ from: mailboxOf(i), to, subject }),
  });
  expect(result.code).toBe(250);
}

/** Queues `count` messages for app0@ (subjects backlog-0 ..) over one submission session. */
async function queueBacklog(relay: TestRelay, count: number): Promise<void> {
  const session = await openSubmission({ port: relay.port, startTls: false });
  const to = ["reader@example.org"];
  for (let k = 0; k < count; k++) {
    const raw = buildMessage({ from: mailboxOf(0), to, subject: `backlog-${k}` });
    expect((await session.send({ from: mailboxOf(0), to }, raw)).code).toBe(250);
  }
  await session.close();
}

/** Most messages whose end of DATA and 250 overlapped in time: deliveries in progress at once upstream. */
function mostAtOnce(messages: ReceivedMessage[]): number {
  const edges = messages.flatMap((m) => [
    { at: m.dataEndedAt, step: 1 },
    { at: m.receivedAt, step: -1 },
  ]);
  edges.sort((a, b) => a.at - b.at || a.step - b.step);
  let now = 0;
  let most = 0;
  for (const edge of edges) {
    now += edge.step;
    most = Math.max(most, now);
  }
  return most;
}

describe("one delivery scheduler per process", () => {
  it("serves 40 mailboxes over a handful of Redis connections, not one per mailbox", async () => {
    const COUNT = 40;
    const redis: PrivateRedis = await startPrivateRedis({ appendOnly: false });
    const upstream = await startUpstream(COUNT);
    const relay = await startTestRelay({
      redis: redis.url,
      ...appsConfig(COUNT, upstream),
    });
    const admin = new Redis(redis.url);
    try {
      await Promise.all(Array.from({ length: COUNT }, (_, i) => send(relay, i, `hello-${i}`)));
      const delivered = await upstream.waitForMessages(COUNT, 60_000);
      expect(new Set(delivered.map((m) => m.user)).size).toBe(COUNT);
      const clients = ((await admin.client("LIST")) as string).trim().split("\n");
      const relayClients = clients.filter((line) => !/ cmd=client\|list /.test(line));
      console.info(`${COUNT} mailboxes: the relay holds ${relayClients.length} Redis connections`);
      // ingest, worker, wake subscriber and a few more for leases, notices and queues: never one per mailbox
      expect(relayClients.length).toBeLessThan(COUNT / 4);
    } finally {
      admin.disconnect();
      await relay.stop();
      await upstream.stop();
      await redis.destroy();
    }
  }, 120_000);

  it("keeps at most deliveryConcurrency deliveries in progress, across all mailboxes", async () => {
    const COUNT = 6;
    const upstream = await startUpstream(COUNT, 200);
    const relay = await startTestRelay({
      redis: redisUrl,
      deliveryConcurrency: 2,
      ...appsConfig(COUNT, upstream),
    });
    try {
      const sends: Promise<void>[] = [];
      for (let i = 0; i < COUNT; i++) for (let k = 0; k < 3; k++) sends.push(send(relay, i, `m-${i}-${k}`));
      await Promise.all(sends);
      const delivered = await upstream.waitForMessages(COUNT * 3, 60_000);
      const most = mostAtOnce(delivered);
      console.info(`deliveryConcurrency 2: at most ${most} messages in DATA at once`);
      // without the limit each mailbox would send on its 3 connections at once: up to 18
      expect(most).toBeLessThanOrEqual(2);
      expect(new Set(delivered.map((m) => m.user)).size).toBe(COUNT);
    } finally {
      await relay.stop();
      await upstream.stop();
    }
  }, 120_000);

  it("takes turns: at its limit, a mailbox with a backlog does not keep another mailbox's message waiting", async () => {
    const BACKLOG = 30;
    const upstream = await startUpstream(2, 100);
    const relay = await startTestRelay({
      redis: redisUrl,
      deliveryConcurrency: 1,
      ...appsConfig(2, upstream),
    });
    try {
      await queueBacklog(relay, BACKLOG);
      await upstream.waitForMessages(2, 30_000);
      await send(relay, 1, "other-mailbox");
      const delivered = await upstream.waitForMessages(BACKLOG + 1, 60_000);
      const position = delivered.findIndex((m) => m.user === mailboxOf(1));
      const backlogAfter = delivered.length - position - 1;
      console.info(
        `the other mailbox's message went out at position ${position}, ${backlogAfter} backlog after it`,
      );
      // without turns, the backlog's delivery would go on until it was empty
      expect(backlogAfter).toBeGreaterThan(BACKLOG / 2);
    } finally {
      await relay.stop();
      await upstream.stop();
    }
  }, 120_000);
});

describe("connection slots between processes", () => {
  it("gives a message it has no slot for to the relay that holds the slot, which sends it on its open connection", async () => {
    // one slot, kept idle for a minute: neither a wait for idleTimeout nor a second connection is needed
    const oneIdleSlot = { limits: { connections: 1 }, upstream: { idleTimeout: 60_000 } };
    await withTwoRelays(0, oneIdleSlot, async (relays, upstream) => {
      // the first message keeps the only connection busy for 3 s; a relay may hold 2 messages of the mailbox
      // (2 x connections), so the third goes to the relay without the connection at least once
      upstream.script({ at: "data", delayMs: 3_000, match: (tx) => tx.rcptTo.includes("slow@example.org") });
      for (const [i, to] of ["slow@example.org", "second@example.org", "third@example.org"].entries()) {
        const result = await submit({
          port: relays[i % 2]?.port ?? 0,
          startTls: false,
          from: mailboxOf(0),
          to: [to],
          raw: buildMessage({ from: mailboxOf(0), to: [to], subject: `m${i}` }),
        });
        expect(result.code).toBe(250);
      }
      const delivered = await upstream.waitForMessages(3, 30_000);
      expect(delivered.flatMap((m) => m.rcptTo).sort()).toEqual([
        "second@example.org",
        "slow@example.org",
        "third@example.org",
      ]);
      // all on the one connection that was open: the relay without the slot gave its messages back instead of
      // having the idle connection closed for it and opening one of its own (a TLS handshake and an AUTH later)
      expect(upstream.authCount(mailboxOf(0))).toBe(1);
      expect(new Set(delivered.map((m) => m.connectionId)).size).toBe(1);
      expect(upstream.maxConcurrent(mailboxOf(0))).toBe(1);
    });
  }, 180_000);
});

describe("a relay refused a connection slot", () => {
  it("takes on only as many of the mailbox's messages as its own connections serve, leaving the rest to the relays that hold the slots", async () => {
    const COUNT = 150;
    await withTwoRelays(100, {}, async ([first], upstream) => {
      const queue = first.spool.queue(mailboxOf(0));
      // the backlog is queued first; then both relays go for the mailbox's 3 slots at once
      await queue.pause();
      await queueBacklog(first, COUNT);
      await queue.resume();
      first.spool.wake(mailboxOf(0));
      // once the slots are shared out (a few deliveries), the messages locked by the two relays at once
      await upstream.waitForMessages(15, 30_000);
      let mostActive = 0;
      while (upstream.messages.length < COUNT - 10) {
        mostActive = Math.max(mostActive, await queue.getActiveCount());
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      await upstream.waitForMessages(COUNT, 60_000);
      console.info(`two relays sharing 3 slots: at most ${mostActive} messages locked at once`);
      // twice its connections each, and one for a relay with none: at most 7. Without it, each relay keeps
      // 2 x 3 locked whatever slots it holds (12), and those beyond its connections wait behind them
      expect(mostActive).toBeLessThanOrEqual(7);
      expect(upstream.maxConcurrent(mailboxOf(0))).toBe(3);
      expect(
        new Set(upstream.messages.map((m) => m.raw.toString("latin1").match(/backlog-\d+/)?.[0])).size,
      ).toBe(COUNT);
    });
  }, 180_000);
});

describe("a relay with no connection slot at all", () => {
  it("gives the mailbox's messages back to the relay that holds the slots without spinning on the queue", async () => {
    const COUNT = 60;
    const upstream = await startUpstream(1, 100);
    const shared = sharedConfig(upstream);
    const holder = await startTestRelay(shared);
    const admin = new Redis(redisUrl);
    let other: TestRelay | undefined;
    try {
      await queueBacklog(holder, COUNT);
      // the holder has all 3 slots busy before the other relay starts
      await upstream.waitForMessages(3, 30_000);
      other = await startTestRelay(shared);
      const startedAt = Date.now();
      await upstream.waitForMessages(COUNT, 60_000);
      const seconds = (Date.now() - startedAt) / 1000;
      // every message given back is a `delayed` event in the queue's BullMQ event stream
      const events = await admin.xrange(
        `${shared.redisPrefix}:${holder.spool.queueName(mailboxOf(0))}:events`,
        "-",
        "+",
      );
      const givenBack = events.filter(([, fields]) => fields[1] === "delayed").length;
      console.info(
        `a relay without a slot beside one with all 3: ${givenBack} messages given back in ${seconds.toFixed(1)} s`,
      );
      // at most one every 250 ms (and a few at the start); taking the next message at once after each one it
      // gave back made it hundreds a second
      expect(givenBack).toBeLessThanOrEqual(seconds * 4 + 10);
      expect(upstream.maxConcurrent(mailboxOf(0))).toBe(3);
    } finally {
      await other?.stop();
      await holder.stop();
      admin.disconnect();
      await upstream.stop();
    }
  }, 180_000);
});

describe("messages in flight in relays that died", () => {
  it("are delivered even when it happened to them twice (BullMQ's default would fail them at the second stall)", async () => {
    const upstream = await startUpstream(1);
    // short locks: a lapsed one is found within seconds
    const shared = { ...sharedConfig(upstream), leaseTtl: 1_000 };
    const first = await startTestRelay(shared);
    await first.spool.queue(mailboxOf(0)).pause();
    await send(first, 0, "twice-stalled");
    await first.stop();
    const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
    const queue = new Queue(mailboxOf(0), { connection: redis, prefix: shared.redisPrefix });
    // a relay that died while delivering it, after an earlier one had died the same way (stall counter 1)
    const dead = new Worker(queue.name, null, {
      connection: redis,
      prefix: shared.redisPrefix,
      lockDuration: 1_000,
      autorun: false,
    });
    try {
      await queue.resume();
      const job = await dead.getNextJob("dead-relay-token");
      expect(job?.data.recipients).toEqual(["someone@example.org"]);
      await redis.hset(`${shared.redisPrefix}:${queue.name}:${job?.id}`, "stc", 1);
      await dead.close(true);
      const second = await startTestRelay(shared);
      try {
        const [delivered] = await upstream.waitForMessages(1, 30_000);
        expect(delivered?.raw.toString("latin1")).toContain("Subject: twice-stalled");
        expect(await queue.getJobState(job?.id ?? "")).not.toBe("failed");
      } finally {
        await second.stop();
      }
    } finally {
      await queue.close();
      redis.disconnect();
      await upstream.stop();
    }
  }, 120_000);
});
