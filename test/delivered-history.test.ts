import { describe, expect, inject, it } from "vitest";
import { MAILBOX, useOperationsFixture } from "./support/admin-fixture.js";
import { type TestRelay, waitFor } from "./support/relay.js";

const fx = useOperationsFixture(inject("redisUrl"));

/** Sends `count` messages one after the other and waits until each was delivered. */
async function deliverInTurn(relay: TestRelay, count: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const id = await fx.send(relay, `reader${i}@example.com`);
    ids.push(id);
    // the job completes (and older ones are trimmed) just after the upstream's 250
    await waitFor(
      async () => ["completed", "unknown"].includes(await relay.spool.queue(MAILBOX).getJobState(id)),
      10_000,
      `message ${i} recorded as delivered`,
    );
  }
  return ids;
}

describe("delivered messages kept in Redis (keepDelivered)", () => {
  it("keeps the newest maxCount of a mailbox, each with its recipients and the upstream's reply", async () => {
    const relay = await fx.relay({ keepDelivered: { maxCount: 2 } });
    const ids = await deliverInTurn(relay, 4);
    const queue = relay.spool.queue(MAILBOX);
    const kept = await queue.getCompleted();
    expect(kept.map((job) => job.id).sort()).toEqual(ids.slice(2).sort());
    expect(kept.find((job) => job.id === ids[3])?.returnvalue).toMatchObject({
      accepted: ["reader3@example.com"],
      replies: [expect.stringMatching(/ 250 /)],
    });
    // the older ones are gone, job and all
    expect(await queue.getJob(ids[0] as string)).toBeUndefined();
  });

  it("keeps none with maxCount 0, and by default keeps them (24 h, 10,000 per mailbox)", async () => {
    const none = await fx.relay({ keepDelivered: { maxCount: 0 } });
    const [gone] = await deliverInTurn(none, 1);
    expect(await none.spool.queue(MAILBOX).getJob(gone as string)).toBeUndefined();
    await none.stop();
    fx.relays.splice(fx.relays.indexOf(none), 1);

    const byDefault = await fx.relay();
    const [kept] = await deliverInTurn(byDefault, 1);
    const job = await byDefault.spool.queue(MAILBOX).getJob(kept as string);
    expect(await job?.getState()).toBe("completed");
    expect(job?.opts.removeOnComplete).toEqual({ age: 24 * 3600, count: 10_000 });
  });

  it("drops delivered messages older than maxAge when later ones complete", async () => {
    const relay = await fx.relay({ keepDelivered: { maxAge: 1_000 } });
    const [old] = await deliverInTurn(relay, 1);
    await new Promise((resolve) => setTimeout(resolve, 2_100));
    const [recent] = await deliverInTurn(relay, 1);
    const queue = relay.spool.queue(MAILBOX);
    expect(await queue.getJob(old as string)).toBeUndefined();
    expect(await (await queue.getJob(recent as string))?.getState()).toBe("completed");
  });
});
