import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestPki } from "../support/certs.js";
import { type FakeUpstream, startFakeUpstream } from "../support/fake-upstream.js";
import { startTestRelay, tempFile, uniquePrefix } from "../support/relay.js";
import { buildMessage, submit } from "../support/smtp-client.js";

const MAILBOX = "scanner@contoso.com";
const dir = mkdtempSync(join(tmpdir(), "sluice-full-"));

/** A small tmpfs needs root (CI runs as root); elsewhere the test says it was skipped, it does not pass silently. */
function mountSmall(): boolean {
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=6m", "tmpfs", dir], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}
const mounted = mountSmall();

let upstream: FakeUpstream;
let caFile: string;

beforeAll(async () => {
  const pki = await createTestPki();
  upstream = await startFakeUpstream({ tls: await pki.issue(["127.0.0.1"]), users: { [MAILBOX]: "pw" } });
  caFile = tempFile("ca.pem", pki.ca);
});

afterAll(async () => {
  await upstream?.stop();
  if (mounted) execFileSync("umount", ["-l", dir]);
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!mounted)("the embedded Redis on a full disk", () => {
  it("refuses submissions with 4xx once nothing more can be written, and every 250 given before is delivered after space is freed", {
    timeout: 120_000,
  }, async () => {
    const config = {
      dataDir: dir,
      redisPrefix: uniquePrefix(),
      upstream: { host: "127.0.0.1", port: upstream.port, ca: caFile },
      mailboxes: { [MAILBOX]: { password: "pw" } },
      clients: [{ name: "scanners", networks: ["127.0.0.0/8"], from: "keep" }],
    };
    await upstream.refuseConnections(true);
    const relay = await startTestRelay(config);
    const acknowledged: string[] = [];
    const refusals: number[] = [];
    for (let i = 0; i < 200 && refusals.length < 5; i++) {
      const to = [`scan${i}@example.com`];
      const result = await submit({
        port: relay.port,
        startTls: false,
        from: "scanner@floor2.example",
        to,
        raw: buildMessage({ from: "scanner@floor2.example", to, attachmentBytes: 150_000 }),
      });
      if (result.ok) acknowledged.push(to[0] as string);
      else refusals.push(result.code ?? 0);
    }
    expect(acknowledged.length).toBeGreaterThan(3);
    expect(refusals.length).toBeGreaterThan(0);
    expect(refusals.every((code) => code >= 400 && code < 500)).toBe(true);
    await relay.stop();

    execFileSync("mount", ["-o", "remount,size=64m", dir]);
    await upstream.refuseConnections(false);
    const restarted = await startTestRelay(config);
    try {
      await upstream.waitForMessages(acknowledged.length, 60_000);
      const delivered = new Set(upstream.messages.flatMap((m) => m.rcptTo));
      expect(acknowledged.filter((to) => !delivered.has(to))).toEqual([]);
    } finally {
      await restarted.stop();
    }
  });
});
