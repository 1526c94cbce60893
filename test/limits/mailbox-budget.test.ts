import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { MailboxBudget } from "../../src/limits/mailbox-budget.js";
import { UNLIMITED } from "../../src/limits/unlimited.js";

const redisUrl = inject("redisUrl");
const MAILBOX = "app.alerts@example.org";
const GENEROUS = { messagesPerMinute: 1_000_000, recipientsPerDay: 1_000_000 };

function uniquePrefix(): string {
  return `test-${randomUUID()}`;
}

function take(recipients = 1) {
  return { id: randomUUID(), recipients };
}

describe("mailbox budget", () => {
  let redis: Redis;
  beforeAll(() => {
    redis = new Redis(redisUrl);
  });
  afterAll(async () => {
    await redis.quit();
  });

  it("lets exactly messagesPerMinute messages through and says when the next one fits", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix());
    const limits = { messagesPerMinute: 20, recipientsPerDay: 10_000 };
    for (let i = 0; i < 20; i++) {
      expect(await budget.take(MAILBOX, take(), limits)).toEqual({ ok: true });
    }
    const refused = await budget.take(MAILBOX, take(), limits);
    expect(refused).toMatchObject({ ok: false, budget: "messagesPerMinute", used: 20, limit: 20 });
    if (refused.ok) throw new Error("unreachable");
    expect(refused.retryInMs).toBeGreaterThan(0);
    expect(refused.retryInMs).toBeLessThanOrEqual(60_000);
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 20, recipientsLastDay: 20 });
  });

  it("counts takes from several connections against one shared budget", async () => {
    const prefix = uniquePrefix();
    const clients = Array.from({ length: 5 }, () => new Redis(redisUrl));
    try {
      const limits = { messagesPerMinute: 30, recipientsPerDay: 10_000 };
      const decisions = await Promise.all(
        Array.from({ length: 60 }, (_, i) =>
          new MailboxBudget(clients[i % clients.length] as Redis, prefix).take(MAILBOX, take(), limits),
        ),
      );
      expect(decisions.filter((decision) => decision.ok)).toHaveLength(30);
    } finally {
      await Promise.all(clients.map((client) => client.quit()));
    }
  });

  it("refuses the recipients that do not fit in the day: two takes of 20 fit in 50, the third does not", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix());
    const limits = { messagesPerMinute: 30, recipientsPerDay: 50 };
    expect((await budget.take(MAILBOX, take(20), limits)).ok).toBe(true);
    expect((await budget.take(MAILBOX, take(20), limits)).ok).toBe(true);
    const refused = await budget.take(MAILBOX, take(20), limits);
    expect(refused).toMatchObject({ ok: false, budget: "recipientsPerDay", used: 40, limit: 50 });
    if (refused.ok) throw new Error("unreachable");
    expect(refused.retryInMs).toBeGreaterThan(0);
    expect(refused.retryInMs).toBeLessThanOrEqual(86_400_000);
    expect((await budget.take(MAILBOX, take(10), limits)).ok).toBe(true);
  });

  it("makes room again when a take is refunded", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix());
    const limits = { messagesPerMinute: 2, recipientsPerDay: 50 };
    const first = take(30);
    expect((await budget.take(MAILBOX, first, limits)).ok).toBe(true);
    expect((await budget.take(MAILBOX, take(20), limits)).ok).toBe(true);
    expect(await budget.take(MAILBOX, take(5), limits)).toMatchObject({ ok: false });
    await budget.refund(MAILBOX, first.id);
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 1, recipientsLastDay: 20 });
    expect((await budget.take(MAILBOX, take(30), limits)).ok).toBe(true);
    await budget.refund(MAILBOX, "never-taken");
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 2, recipientsLastDay: 50 });
  });

  it("answers retryInMs -1 for a request larger than the whole day's limit, and records nothing", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix());
    const decision = await budget.take(MAILBOX, take(600), { messagesPerMinute: 30, recipientsPerDay: 500 });
    expect(decision).toEqual({ ok: false, budget: "recipientsPerDay", retryInMs: -1, used: 0, limit: 500 });
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 0, recipientsLastDay: 0 });
  });

  it("records no message when the recipients do not fit", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix());
    const limits = { messagesPerMinute: 30, recipientsPerDay: 10 };
    expect((await budget.take(MAILBOX, take(8), limits)).ok).toBe(true);
    expect(await budget.take(MAILBOX, take(5), limits)).toMatchObject({ budget: "recipientsPerDay" });
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 1, recipientsLastDay: 8 });
  });

  it("records no recipients when the message does not fit", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix());
    const limits = { messagesPerMinute: 1, recipientsPerDay: 100 };
    expect((await budget.take(MAILBOX, take(3), limits)).ok).toBe(true);
    expect(await budget.take(MAILBOX, take(7), limits)).toMatchObject({ budget: "messagesPerMinute" });
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 1, recipientsLastDay: 3 });
  });

  it("names the budget that frees later when both are full", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix(), { minuteMs: 1_000, dayMs: 10_000 });
    const limits = { messagesPerMinute: 1, recipientsPerDay: 5 };
    expect((await budget.take(MAILBOX, take(5), limits)).ok).toBe(true);
    const refused = await budget.take(MAILBOX, take(1), limits);
    expect(refused).toMatchObject({ ok: false, budget: "recipientsPerDay" });
    if (refused.ok) throw new Error("unreachable");
    expect(refused.retryInMs).toBeGreaterThan(1_000);
  });

  it("slides the minute window: the refused message fits exactly when the oldest take leaves it", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix(), { minuteMs: 600 });
    const limits = { messagesPerMinute: 2, recipientsPerDay: 10_000 };
    expect((await budget.take(MAILBOX, take(), limits)).ok).toBe(true);
    await sleep(300);
    expect((await budget.take(MAILBOX, take(), limits)).ok).toBe(true);
    const refused = await budget.take(MAILBOX, take(), limits);
    if (refused.ok) throw new Error("expected a refusal");
    // The first take is about 300 ms old: it leaves the 600 ms window in about 300 ms, not 600.
    expect(refused.retryInMs).toBeGreaterThan(150);
    expect(refused.retryInMs).toBeLessThanOrEqual(300);
    await sleep(refused.retryInMs + 20);
    expect((await budget.take(MAILBOX, take(), limits)).ok).toBe(true);
    // The second take is still in the window: the next one waits again.
    expect(await budget.take(MAILBOX, take(), limits)).toMatchObject({
      ok: false,
      budget: "messagesPerMinute",
    });
  });

  it("counts only the last minute's takes among the day's, and says when the oldest of those leaves", async () => {
    // one ZSET holds the day's takes: the minute window is its newest part
    const budget = new MailboxBudget(redis, uniquePrefix(), { minuteMs: 600, dayMs: 60_000 });
    const limits = { messagesPerMinute: 2, recipientsPerDay: 10_000 };
    for (let i = 0; i < 5; i++) expect((await budget.take(MAILBOX, take(), GENEROUS)).ok).toBe(true);
    expect(await budget.take(MAILBOX, take(), limits)).toMatchObject({ ok: false, used: 5 });
    await sleep(700);
    // the five have left the minute, not the day
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 0, recipientsLastDay: 5 });
    expect((await budget.take(MAILBOX, take(), limits)).ok).toBe(true);
    await sleep(300);
    expect((await budget.take(MAILBOX, take(), limits)).ok).toBe(true);
    const refused = await budget.take(MAILBOX, take(), limits);
    if (refused.ok) throw new Error("expected a refusal");
    // the oldest take of the minute is ~300 ms old (not one of the five, which left it long ago)
    expect(refused).toMatchObject({ budget: "messagesPerMinute", used: 2 });
    expect(refused.retryInMs).toBeGreaterThan(150);
    expect(refused.retryInMs).toBeLessThanOrEqual(300);
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 2, recipientsLastDay: 7 });
  });

  it("still counts the takes a relay of the old key layout (a ZSET per window) recorded", async () => {
    // until 2026-11-26 each take went into :messages and :recipients with the same id and time; an upgrade
    // in the middle of a minute must not forget the minute's messages
    const prefix = uniquePrefix();
    const base = `${prefix}:limits:{${MAILBOX}}`;
    const [seconds, micros] = await redis.time();
    const now = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
    for (const id of ["old-1", "old-2", "old-3"]) {
      await redis.zadd(`${base}:messages`, now - 100, id);
      await redis.zadd(`${base}:recipients`, now - 100, id);
      await redis.hset(`${base}:recipients:cost`, id, 4);
    }
    await redis.set(`${base}:recipients:total`, 12);
    const budget = new MailboxBudget(redis, prefix);
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 3, recipientsLastDay: 12 });
    expect(await budget.take(MAILBOX, take(), { messagesPerMinute: 3, recipientsPerDay: 100 })).toMatchObject(
      {
        ok: false,
        budget: "messagesPerMinute",
        used: 3,
      },
    );
    expect(await budget.take(MAILBOX, take(), { messagesPerMinute: 30, recipientsPerDay: 13 })).toMatchObject(
      {
        ok: true,
      },
    );
    expect(await budget.take(MAILBOX, take(), { messagesPerMinute: 30, recipientsPerDay: 13 })).toMatchObject(
      {
        ok: false,
        budget: "recipientsPerDay",
        used: 13,
      },
    );
  });

  it("slides the day window: recipients come back as old takes expire, oldest first", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix(), { minuteMs: 100, dayMs: 800 });
    const limits = { messagesPerMinute: 100, recipientsPerDay: 50 };
    expect((await budget.take(MAILBOX, take(10), limits)).ok).toBe(true);
    await sleep(300);
    expect((await budget.take(MAILBOX, take(30), limits)).ok).toBe(true);
    expect((await budget.take(MAILBOX, take(10), limits)).ok).toBe(true);
    // 50 used; 25 more needs the 10 and the 30 to leave: the wait is set by the second take.
    const refused = await budget.take(MAILBOX, take(25), limits);
    if (refused.ok) throw new Error("expected a refusal");
    expect(refused.retryInMs).toBeGreaterThan(600);
    expect(refused.retryInMs).toBeLessThanOrEqual(800);
    await sleep(550);
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 0, recipientsLastDay: 40 });
    expect(await budget.take(MAILBOX, take(25), limits)).toMatchObject({ ok: false });
    await sleep(refused.retryInMs - 550 + 20);
    expect((await budget.take(MAILBOX, take(25), limits)).ok).toBe(true);
  });

  it("counts ten thousand takes in the day window exactly, and purges them all in one call once expired", async () => {
    const prefix = uniquePrefix();
    // the takes are counted with a window no machine is slow enough to see them leave (a 3 s one did, on a
    // loaded machine: the first takes expired before the last was made), and purged by a 3 s one reading the
    // same keys
    const counting = new MailboxBudget(redis, prefix, { minuteMs: 1_000, dayMs: 600_000 });
    const budget = new MailboxBudget(redis, prefix, { minuteMs: 1_000, dayMs: 3_000 });
    const limits = { messagesPerMinute: 1_000_000, recipientsPerDay: 10_000 };
    const decisions = await Promise.all(
      Array.from({ length: 10_000 }, () => counting.take(MAILBOX, take(), limits)),
    );
    expect(decisions.every((decision) => decision.ok)).toBe(true);

    const refused = await counting.take(MAILBOX, take(), limits);
    expect(refused).toMatchObject({ ok: false, budget: "recipientsPerDay", used: 10_000 });

    await sleep(3_100);
    expect(await counting.usage(MAILBOX)).toEqual({ messagesLastMinute: 0, recipientsLastDay: 10_000 });
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 0, recipientsLastDay: 0 });
    expect((await budget.take(MAILBOX, take(), limits)).ok).toBe(true);
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 1, recipientsLastDay: 1 });
  });

  it("purges more expired takes than Lua can unpack at once, keeping the total exact", async () => {
    const prefix = uniquePrefix();
    const budget = new MailboxBudget(redis, prefix, { minuteMs: 1_000, dayMs: 2_000 });
    await Promise.all(Array.from({ length: 9_000 }, () => budget.take(MAILBOX, take(), GENEROUS)));
    await sleep(2_100);
    expect((await budget.take(MAILBOX, take(7), GENEROUS)).ok).toBe(true);
    expect(await redis.zcard(`${prefix}:limits:{${MAILBOX}}:recipients`)).toBe(1);
    expect(await redis.hlen(`${prefix}:limits:{${MAILBOX}}:recipients:cost`)).toBe(1);
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 1, recipientsLastDay: 7 });
  });

  it("sets key expiry so an idle mailbox leaves nothing behind", async () => {
    const prefix = uniquePrefix();
    const budget = new MailboxBudget(redis, prefix, { minuteMs: 100, dayMs: 300 });
    await budget.take(MAILBOX, take(3), GENEROUS);
    const keys = await redis.keys(`${prefix}:*`);
    expect(keys).toHaveLength(3);
    for (const key of keys) expect(await redis.pttl(key)).toBeGreaterThan(0);
    await sleep(400);
    expect(await redis.keys(`${prefix}:*`)).toEqual([]);
  });

  it("replaces a take whose id is still recorded instead of counting it twice", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix());
    const again = take(4);
    expect((await budget.take(MAILBOX, again, GENEROUS)).ok).toBe(true);
    expect((await budget.take(MAILBOX, { id: again.id, recipients: 6 }, GENEROUS)).ok).toBe(true);
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 1, recipientsLastDay: 6 });
  });

  it("rejects a request or limit that is not a positive whole number, naming it", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix());
    await expect(budget.take(MAILBOX, take(0), GENEROUS)).rejects.toThrow(/request.recipients/);
    await expect(
      budget.take(MAILBOX, take(), { messagesPerMinute: Number.NaN, recipientsPerDay: 1 }),
    ).rejects.toThrow(/messagesPerMinute/);
    await expect(
      budget.take(MAILBOX, take(), { messagesPerMinute: 1, recipientsPerDay: -UNLIMITED }),
    ).rejects.toThrow(/recipientsPerDay/);
    expect(() => new MailboxBudget(redis, "x", { dayMs: -1 })).toThrow(/dayMs/);
    expect(() => new MailboxBudget(redis, "x", { minuteMs: 2_000, dayMs: 1_000 })).toThrow(/minuteMs/);
  });

  it("with one budget unlimited, holds back only on the other, and still counts both", async () => {
    const budget = new MailboxBudget(redis, uniquePrefix());
    const noMessageLimit = { messagesPerMinute: UNLIMITED, recipientsPerDay: 50 };
    for (let i = 0; i < 10; i++) expect((await budget.take(MAILBOX, take(5), noMessageLimit)).ok).toBe(true);
    expect(await budget.take(MAILBOX, take(), noMessageLimit)).toMatchObject({
      ok: false,
      budget: "recipientsPerDay",
      used: 50,
      limit: 50,
    });
    expect(await budget.take(MAILBOX, take(51), noMessageLimit)).toMatchObject({ ok: false, retryInMs: -1 });
    expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 10, recipientsLastDay: 50 });

    const other = new MailboxBudget(redis, uniquePrefix());
    const noRecipientLimit = { messagesPerMinute: 3, recipientsPerDay: UNLIMITED };
    for (let i = 0; i < 3; i++)
      expect((await other.take(MAILBOX, take(400), noRecipientLimit)).ok).toBe(true);
    expect(await other.take(MAILBOX, take(1), noRecipientLimit)).toMatchObject({
      ok: false,
      budget: "messagesPerMinute",
      used: 3,
      limit: 3,
    });
    expect(await other.usage(MAILBOX)).toEqual({ messagesLastMinute: 3, recipientsLastDay: 1_200 });
  });

  it("with both budgets unlimited, takes every message and writes nothing to Redis", async () => {
    const prefix = uniquePrefix();
    const budget = new MailboxBudget(redis, prefix);
    const unlimited = { messagesPerMinute: UNLIMITED, recipientsPerDay: UNLIMITED };
    for (let i = 0; i < 100; i++) expect((await budget.take(MAILBOX, take(1_000), unlimited)).ok).toBe(true);
    expect(await redis.keys(`${prefix}:*`)).toEqual([]);
    const body = `${prefix}:body`;
    await redis.set(body, "the body");
    const start = await budget.startDelivery(MAILBOX, take(), unlimited, { pause: `${prefix}:pause`, body });
    expect(start.kind === "taken" && String(start.body)).toBe("the body");
    expect(await redis.keys(`${prefix}:*`)).toEqual([body]);
  });

  describe("startDelivery: the pause, the take and the body in one round trip", () => {
    // every byte value, so a body that is not valid UTF-8 must come back as it was stored
    const BODY = Buffer.from(Array.from({ length: 1024 }, (_, i) => i % 256));
    const keysFor = (prefix: string) => ({ pause: `${prefix}:pause`, body: `${prefix}:body` });

    it("takes the budget and returns the body byte for byte", async () => {
      const prefix = uniquePrefix();
      const budget = new MailboxBudget(redis, prefix);
      await redis.set(keysFor(prefix).body, BODY);
      const start = await budget.startDelivery(MAILBOX, take(3), GENEROUS, keysFor(prefix));
      expect(start.kind).toBe("taken");
      if (start.kind !== "taken") throw new Error("unreachable");
      expect(start.body.equals(BODY)).toBe(true);
      expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 1, recipientsLastDay: 3 });
    });

    it("takes nothing from a paused mailbox and returns its pause", async () => {
      const prefix = uniquePrefix();
      const budget = new MailboxBudget(redis, prefix);
      await redis.set(keysFor(prefix).body, BODY);
      await redis.set(keysFor(prefix).pause, '{"kind":"auth"}');
      expect(await budget.startDelivery(MAILBOX, take(), GENEROUS, keysFor(prefix))).toEqual({
        kind: "paused",
        pause: '{"kind":"auth"}',
      });
      expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 0, recipientsLastDay: 0 });
    });

    it("takes nothing for a message whose body is gone", async () => {
      const prefix = uniquePrefix();
      const budget = new MailboxBudget(redis, prefix);
      expect(await budget.startDelivery(MAILBOX, take(), GENEROUS, keysFor(prefix))).toEqual({
        kind: "no-body",
      });
      expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 0, recipientsLastDay: 0 });
    });

    it("takes nothing, and gives no body, while the body still has the expiry of a submission not yet committed", async () => {
      const prefix = uniquePrefix();
      const budget = new MailboxBudget(redis, prefix);
      await redis.set(keysFor(prefix).body, BODY, "PX", 60_000);
      const start = await budget.startDelivery(MAILBOX, take(), GENEROUS, keysFor(prefix));
      expect(start.kind).toBe("uncommitted");
      if (start.kind !== "uncommitted") throw new Error("unreachable");
      expect(start.expiresInMs).toBeGreaterThan(50_000);
      expect(start.expiresInMs).toBeLessThanOrEqual(60_000);
      expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 0, recipientsLastDay: 0 });
      // committed: made permanent
      await redis.persist(keysFor(prefix).body);
      expect((await budget.startDelivery(MAILBOX, take(), GENEROUS, keysFor(prefix))).kind).toBe("taken");
    });

    it("takes nothing, and gives no body, once the job's queue lock is another worker's or gone", async () => {
      const prefix = uniquePrefix();
      const budget = new MailboxBudget(redis, prefix);
      await redis.set(keysFor(prefix).body, BODY);
      const lockKey = `${prefix}:queue:job-1:lock`;
      const lock = { key: lockKey, token: "worker-a" };
      // gone: it lapsed while this worker waited (for Redis to come back, say)
      expect(await budget.startDelivery(MAILBOX, take(), GENEROUS, { ...keysFor(prefix), lock })).toEqual({
        kind: "lock-lost",
      });
      // another worker's: the stalled-job check gave the job to it
      await redis.set(lockKey, "worker-b");
      expect(await budget.startDelivery(MAILBOX, take(), GENEROUS, { ...keysFor(prefix), lock })).toEqual({
        kind: "lock-lost",
      });
      expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 0, recipientsLastDay: 0 });
      // still this worker's: taken
      await redis.set(lockKey, "worker-a");
      expect((await budget.startDelivery(MAILBOX, take(), GENEROUS, { ...keysFor(prefix), lock })).kind).toBe(
        "taken",
      );
    });

    it("refuses as take() does when the budget is spent, without the body", async () => {
      const prefix = uniquePrefix();
      const budget = new MailboxBudget(redis, prefix);
      await redis.set(keysFor(prefix).body, BODY);
      const limits = { messagesPerMinute: 1, recipientsPerDay: 10_000 };
      expect((await budget.startDelivery(MAILBOX, take(), limits, keysFor(prefix))).kind).toBe("taken");
      const refused = await budget.startDelivery(MAILBOX, take(), limits, keysFor(prefix));
      expect(refused).toMatchObject({
        kind: "refused",
        decision: { ok: false, budget: "messagesPerMinute", used: 1, limit: 1 },
      });
      expect(await budget.usage(MAILBOX)).toEqual({ messagesLastMinute: 1, recipientsLastDay: 1 });
    });
  });
});
