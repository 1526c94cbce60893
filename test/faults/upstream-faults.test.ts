import { afterEach, describe, expect, it } from "vitest";
import { createTestPki } from "../support/certs.js";
import { FaultRig } from "./fault-rig.js";

let rig: FaultRig | undefined;

afterEach(async () => {
  await rig?.stop();
  rig = undefined;
});

const temporary = { code: 451, message: "4.7.0 Temporary server error. Please try again later. PRX4" };

describe("upstream faults while 1,000 messages stream through two relays", () => {
  it("a storm of 4xx replies delays mail but loses none and duplicates none", async () => {
    rig = await FaultRig.start();
    rig.upstream.script(...Array.from({ length: 300 }, () => ({ reply: temporary })));
    await rig.load({ messages: 1_000, clients: 20 });
    const report = await rig.verify();
    expect(rig.upstream.faultsLeft).toBe(0);
    expect(report.acknowledged).toBe(1_000);
    expect(report.missing).toEqual([]);
    expect(report.duplicates).toBe(0);
  });

  it("connections dropped after DATA: mail is resent, and duplicates happen only for the dropped answers", async () => {
    rig = await FaultRig.start();
    const drops = 30;
    rig.upstream.script(...Array.from({ length: drops }, () => ({ drop: true })));
    await rig.load({ messages: 1_000, clients: 20 });
    const report = await rig.verify();
    expect(report.missing).toEqual([]);
    // each dropped answer may have hidden an accepted message (2 recipients)
    expect(report.duplicates).toBeLessThanOrEqual(drops * 2);
  });

  it("connections refused for a while: mail waits and flows when the upstream is back", async () => {
    rig = await FaultRig.start();
    const report = await rig.streamWithFault(
      async (r) => {
        await r.upstream.refuseConnections(true);
        // the connections already open go down too, as in an outage (at MAIL FROM: nothing was accepted on
        // them, so nothing is sent twice); else they would carry the whole stream past the refusal
        r.upstream.script(...Array.from({ length: 3 }, () => ({ at: "mail" as const, drop: true })));
        setTimeout(() => void r.upstream.refuseConnections(false).catch(() => {}), 15_000);
      },
      { at: 200 },
    );
    expect(report.faulted).toBe(true);
    expect(report.missing).toEqual([]);
    expect(report.duplicates).toBe(0);
  });

  it("replies slower than the socket timeout: the relay gives up on them, retries, and loses nothing", async () => {
    rig = await FaultRig.start({ config: { upstream: { socketTimeout: 1_000 } } });
    const slow = 10;
    rig.upstream.script(...Array.from({ length: slow }, () => ({ delayMs: 3_000 })));
    await rig.load({ messages: 1_000, clients: 20 });
    const report = await rig.verify();
    expect(report.missing).toEqual([]);
    // a slow reply that was a 250 after all is a lost answer: at most one duplicate message each
    expect(report.duplicates).toBeLessThanOrEqual(slow * 2);
  });

  it("a certificate that does not verify: nothing is sent to that server, and mail flows once the right one is back", async () => {
    rig = await FaultRig.start();
    const r = rig;
    const stranger = await createTestPki();
    await r.load({ messages: 300, clients: 10 });
    await r.verify();
    await r.replaceUpstream({ tls: await stranger.issue(["127.0.0.1"]) });
    const before = r.upstream.messages.length;
    await r.load({ messages: 700, clients: 20 });
    await new Promise((res) => setTimeout(res, 2_000));
    expect(r.upstream.messages.length).toBe(before);
    expect(r.upstream.authCount("scanner@contoso.com")).toBe(0);
    await r.replaceUpstream({});
    const report = await r.verify();
    expect(report.acknowledged).toBe(1_000);
    expect(report.missing).toEqual([]);
  });
});
