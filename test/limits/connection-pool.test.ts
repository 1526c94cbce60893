import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { PasswordCredentials } from "../../src/auth/upstream-credentials.js";
import { upstreamSchema } from "../../src/config/schema.js";
import { ConnectionLeases } from "../../src/limits/connection-leases.js";
import { createLogger } from "../../src/logger.js";
import { ConnectionPool, NoConnectionSlot } from "../../src/outbound/connection-pool.js";
import { openUpstream, upstreamTlsOptions } from "../../src/outbound/upstream-connection.js";
import { createTestPki } from "../support/certs.js";
import { type FakeUpstream, startFakeUpstream } from "../support/fake-upstream.js";
import { tempFile } from "../support/relay.js";
import { buildMessage } from "../support/smtp-client.js";

const redisUrl = inject("redisUrl");
const MAILBOX = "scanner@contoso.com";

describe("a connection pool whose mailbox's other slots are held by another process", () => {
  let redis: Redis;
  let upstream: FakeUpstream;
  let caFile: string;
  beforeAll(async () => {
    redis = new Redis(redisUrl);
    const pki = await createTestPki();
    caFile = tempFile("ca.pem", pki.ca);
    upstream = await startFakeUpstream({
      tls: await pki.issue(["127.0.0.1"]),
      users: { [MAILBOX]: "pw" },
      replyDelayMs: 50,
    });
  });
  afterAll(async () => {
    await upstream.stop();
    await redis.quit();
  });

  /** A pool for MAILBOX (3 slots) whose lease requests are counted in `asked`. */
  function countedPool(leases: ConnectionLeases, asked: { count: number; starved?: number }): ConnectionPool {
    const config = upstreamSchema.parse({ host: "127.0.0.1", port: upstream.port, ca: caFile });
    const tls = upstreamTlsOptions(config);
    return new ConnectionPool({
      maxConnections: 3,
      idleTimeout: 5_000,
      maxMessagesPerConnection: 1_000,
      leaseWaitMs: 5_000,
      logger: createLogger({ level: "silent" }),
      lease: {
        acquire: () => {
          asked.count++;
          return leases.acquire(MAILBOX, 3);
        },
        renew: (id) => leases.renew(MAILBOX, id),
        release: (id) => leases.release(MAILBOX, id),
        renewEveryMs: 10_000,
      },
      open: () => openUpstream(config, tls, new PasswordCredentials(MAILBOX, "pw"), "relay.test"),
      onStarved: () => {
        asked.starved = (asked.starved ?? 0) + 1;
      },
    });
  }

  it("waits for its own connection instead of asking Redis for a lease before every message", async () => {
    const leases = new ConnectionLeases(redis, `test-${randomUUID()}`);
    // another process holds 2 of the 3 slots for the whole test
    expect(await leases.acquire(MAILBOX, 3)).toBeTruthy();
    expect(await leases.acquire(MAILBOX, 3)).toBeTruthy();
    const asked = { count: 0, starved: 0 };
    const pool = countedPool(leases, asked);
    const body = buildMessage({ from: MAILBOX, to: ["reader@example.org"], subject: "pooled" });
    let sent = 0;
    const until = Date.now() + 2_000;
    // two deliveries take turns on the one connection this pool may have, as a relay's jobs do
    const deliveries = Array.from({ length: 2 }, async () => {
      while (Date.now() < until) {
        const connection = await pool.acquire();
        await connection.send(MAILBOX, ["reader@example.org"], body);
        pool.release(connection, true);
        sent++;
      }
    });
    try {
      await Promise.all(deliveries);
    } finally {
      await pool.close();
    }
    console.info(`${sent} messages on one connection, ${asked.count} lease requests in 2 s`);
    expect(upstream.maxConcurrent(MAILBOX)).toBeLessThanOrEqual(1);
    expect(sent).toBeGreaterThan(10);
    // at most one request every 250 ms while refused (and the first): asking before every message would be
    // one per message (about 35 here)
    expect(asked.count).toBeLessThanOrEqual(2_000 / 250 + 3);
    // the waiting delivery stays here: the processes holding the other slots are asked to hand idle ones over
    expect(asked.starved).toBeGreaterThan(0);
  }, 30_000);

  it("gives a caller up at once when more wait than its connections can serve, for the processes that hold the slots", async () => {
    const leases = new ConnectionLeases(redis, `test-${randomUUID()}`);
    expect(await leases.acquire(MAILBOX, 3)).toBeTruthy();
    expect(await leases.acquire(MAILBOX, 3)).toBeTruthy();
    const pool = countedPool(leases, { count: 0 });
    try {
      const first = await pool.acquire();
      const startedAt = Date.now();
      // one may wait for the connection; the third caller is given up without waiting leaseWaitMs (5 s)
      const waiting = pool.acquire();
      const third = await pool.acquire().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(third).toBeInstanceOf(NoConnectionSlot);
      expect((third as NoConnectionSlot).givenUp).toBe(true);
      expect(Date.now() - startedAt).toBeLessThan(4_000);
      pool.release(first, true);
      expect(await waiting).toBe(first);
      pool.release(first, true);
    } finally {
      await pool.close();
    }
  }, 30_000);

  it("gives a message back at once, backing off a moment, when every slot is held elsewhere and it has no connection", async () => {
    const leases = new ConnectionLeases(redis, `test-${randomUUID()}`);
    for (let i = 0; i < 3; i++) expect(await leases.acquire(MAILBOX, 3)).toBeTruthy();
    const asked = { count: 0, starved: 0 };
    const pool = countedPool(leases, asked);
    try {
      const startedAt = Date.now();
      const refusal = await pool.acquire().then(
        () => undefined,
        (err: unknown) => err,
      );
      // not after leaseWaitMs (5 s) of asking: the processes that hold the slots may have them idle right now
      expect(refusal).toBeInstanceOf(NoConnectionSlot);
      expect(refusal).toMatchObject({ givenUp: true });
      expect((refusal as NoConnectionSlot).backOffMs).toBeGreaterThan(0);
      expect(Date.now() - startedAt).toBeLessThan(4_000);
      expect(asked.count).toBe(1);
      // the message goes to the slot holders: they are not asked to close their idle connections for this one
      expect(asked.starved).toBe(0);
    } finally {
      await pool.close();
    }
  }, 30_000);

  it("backs off twice as long at each refusal in a row while it has no connection, up to a second, and from the start again once it had one", async () => {
    const leases = new ConnectionLeases(redis, `test-${randomUUID()}`);
    const held: string[] = [];
    for (let i = 0; i < 3; i++) held.push((await leases.acquire(MAILBOX, 3)) as string);
    const pool = countedPool(leases, { count: 0 });
    const refusal = () =>
      pool.acquire().then(
        () => undefined,
        (err: unknown) => (err as NoConnectionSlot).backOffMs,
      );
    try {
      const backOffs: (number | undefined)[] = [];
      for (let i = 0; i < 5; i++) backOffs.push(await refusal());
      // before: 250 ms every time, and a process without a slot took and gave back each mailbox's messages
      // four times a second for as long as the others held every slot
      expect(backOffs).toEqual([250, 500, 1_000, 1_000, 1_000]);
      // a slot frees and the pool gets it; once it has none again, a refusal backs off from the start
      await leases.release(MAILBOX, held.pop() as string);
      pool.release(await pool.acquire(), false);
      let again: string | null = null;
      for (let i = 0; i < 100 && !again; i++) {
        again = await leases.acquire(MAILBOX, 3);
        if (!again) await sleep(20);
      }
      expect(again).toBeTruthy();
      expect(await refusal()).toBe(250);
    } finally {
      await pool.close();
    }
  }, 30_000);
});
