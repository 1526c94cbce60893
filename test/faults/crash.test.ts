import { afterEach, describe, expect, it } from "vitest";
import { FaultRig } from "./fault-rig.js";

let rig: FaultRig | undefined;
/**
 * The most a Redis fault may duplicate, in recipients (2 per message): on each of the 2 relays, the 6 jobs a
 * worker may hold whose message the upstream accepted but whose completion Redis never recorded, plus one
 * submission per client (20) that Redis kept although the client got 451 and sent it again.
 */
const IN_FLIGHT_RECIPIENTS = (2 * 6 + 20) * 2;

afterEach(async () => {
  await rig?.stop();
  rig = undefined;
});

describe("crashes while 1,000 messages stream through two relays", () => {
  it("after kill -9 of a relay in the middle of DATA sessions and deliveries, and its restart, every acknowledged message is delivered", async () => {
    rig = await FaultRig.start();
    const report = await rig.streamWithFault(async (r) => {
      r.relays[0]?.child.kill("SIGKILL");
      await r.relays[0]?.exited;
      await r.startRelay(0);
    });
    expect(report.faulted).toBe(true);
    expect(report.acknowledged).toBe(1_000);
    expect(report.missing).toEqual([]);
    // only messages in flight on the killed relay can be sent twice: deliveries on its 3 connections, and
    // submissions of its 10 clients that were queued but whose 250 never left (the client sends them again)
    expect(report.duplicates).toBeLessThanOrEqual((3 + 10) * 2);
  });

  it("when Redis is stopped and restarted mid-stream, nothing acknowledged is lost", async () => {
    rig = await FaultRig.start();
    const report = await rig.streamWithFault(async (r) => {
      await r.redis.stop();
      setTimeout(() => void r.redis.start(), 2_000);
    });
    expect(report.faulted).toBe(true);
    expect(report.acknowledged).toBe(1_000);
    expect(report.missing).toEqual([]);
    expect(report.duplicates).toBeLessThanOrEqual(IN_FLIGHT_RECIPIENTS);
  });

  it("when Redis is killed with kill -9 mid-stream, the append-only file keeps every acknowledged message", async () => {
    rig = await FaultRig.start();
    const report = await rig.streamWithFault(async (r) => {
      await r.redis.kill("SIGKILL");
      setTimeout(() => void r.redis.start(), 2_000);
    });
    expect(report.faulted).toBe(true);
    expect(report.acknowledged).toBe(1_000);
    expect(report.missing).toEqual([]);
    // deliveries that finished upstream while Redis was dead could not be recorded: they are sent again
    expect(report.duplicates).toBeLessThanOrEqual(IN_FLIGHT_RECIPIENTS);
  });
});
