import { execFile } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type OperationsFixture, startOperationsFixture } from "./support/admin-fixture.js";

const redisUrl = inject("redisUrl");
let fx: OperationsFixture;

beforeAll(async () => {
  fx = await startOperationsFixture(redisUrl);
});
afterAll(async () => {
  await fx?.stop();
});

describe("stopping a relay", () => {
  it("finishes the running delivery, releases every connection lease and leaves no open handle (the process exits by itself)", async () => {
    // the upstream takes 1.5 s to answer end-of-DATA, so stop() comes while the delivery holds its lease
    fx.upstream.script({ delayMs: 1_500 });
    const config = fx.config({ admin: { listen: "127.0.0.1:0" }, shutdownTimeout: 10_000 });
    const child = join(import.meta.dirname, "support/stop-child.ts");
    const { code, stdout, stderr } = await new Promise<{
      code: number | null;
      stdout: string;
      stderr: string;
    }>((resolve) => {
      execFile(
        "node",
        ["--import", "tsx", child],
        { env: { ...process.env, SLUICE_TEST_CONFIG: JSON.stringify(config) }, timeout: 45_000 },
        (err, out, errOut) =>
          resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout: out, stderr: errOut }),
      );
    });
    expect(stderr).toBe("");
    // killed by the timeout = something kept the event loop alive after stop()
    expect(code).toBe(0);
    const report = JSON.parse(stdout.trim().split("\n").pop() as string);
    expect(report).toMatchObject({ accepted: true, leasesAfter: 0, leaseEntries: 0, delivered: true });
    expect(report.leasesDuring).toBeGreaterThan(0);
    expect(fx.upstream.messages.map((m) => m.rcptTo)).toEqual([["drain@example.com"]]);
  });
});
