import { execFile } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ConnectionLeases } from "../src/limits/connection-leases.js";
import { MAILBOX, type OperationsFixture, startOperationsFixture } from "./support/admin-fixture.js";
import { EXCHANGE_REPLIES } from "./support/exchange-replies.js";
import { uniquePrefix, waitFor } from "./support/relay.js";
import { writeConfigFile } from "./support/relay-process.js";

const redisUrl = inject("redisUrl");
const cli = join(import.meta.dirname, "../src/cli.ts");
let fx: OperationsFixture;

beforeAll(async () => {
  fx = await startOperationsFixture(redisUrl);
});
afterAll(async () => {
  await fx?.stop();
});

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `sluice queue ...` as its own process, stdin not a terminal (like CI). */
function sluice(args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = execFile(
      "node",
      ["--import", "tsx", cli, ...args],
      { env: { ...process.env, SLUICE_LOG_LEVEL: "warn" }, timeout: 60_000 },
      (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
    child.stdin?.end();
  });
}

/** A relay that fails two messages (550) and leaves them failed, then stops: the CLI works without it. */
async function failedMessages(prefix: string): Promise<string[]> {
  const r = await fx.relay({ redisPrefix: prefix });
  fx.upstream.script(
    { reply: { code: 550, message: "5.1.1 RESOLVER.ADR.RecipNotFound; not found" } },
    { reply: EXCHANGE_REPLIES.sendAsDenied },
  );
  const ids = [await fx.send(r, "one@example.com"), await fx.send(r, "two@example.com")];
  for (const id of ids) {
    await waitFor(async () => (await r.spool.queue(MAILBOX).getJobState(id)) === "failed", 20_000, "failed");
  }
  await r.stop();
  fx.relays.splice(fx.relays.indexOf(r), 1);
  return ids;
}

describe("sluice queue against Redis with no relay running", () => {
  it("shows status, lists and shows failed messages with their upstream replies, as tables and as JSON", async () => {
    const prefix = uniquePrefix();
    const [first, second] = await failedMessages(prefix);
    const config = writeConfigFile(fx.config({ redisPrefix: prefix }));

    const status = await sluice(["queue", "status", "-c", config]);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/^MAILBOX\s+QUEUED\s+DELAYED\s+ACTIVE\s+FAILED/);
    expect(status.stdout).toMatch(new RegExp(`${MAILBOX}\\s+0\\s+0\\s+0\\s+2\\s`));
    const statusJson = JSON.parse((await sluice(["queue", "status", "-c", config, "--json"])).stdout);
    expect(statusJson).toMatchObject([
      { mailbox: MAILBOX, failed: 2, queued: 0, pause: null, leases: 0, connectionLimit: 3 },
    ]);
    // after a 432 the mailbox has fewer connections for a cool-down, and the table says so
    const redis = new Redis(redisUrl);
    await new ConnectionLeases(redis, prefix).reduce(MAILBOX, 3);
    redis.disconnect();
    const cooling = await sluice(["queue", "status", "-c", config]);
    expect(cooling.stdout).toContain("0/2 (432 cool-down; 3 configured)");
    const noBudgets = writeConfigFile(
      fx.config({ redisPrefix: prefix, defaults: { limits: { messagesPerMinute: "unlimited" } } }),
    );
    const unlimited = await sluice(["queue", "status", "-c", noBudgets]);
    expect(unlimited.stdout).toMatch(new RegExp(`${MAILBOX}(\\s+\\S+){5}\\s+0/unlimited\\s+0/10000\\s`));

    const ls = await sluice(["queue", "ls", "-c", config, "--state", "failed"]);
    expect(ls.stdout).toContain(first);
    expect(ls.stdout).toContain("550 5.1.1 RESOLVER");
    const lsJson = JSON.parse(
      (await sluice(["queue", "ls", "-c", config, "--json", "--mailbox", MAILBOX])).stdout,
    );
    expect(lsJson.map((m: { id: string }) => m.id)).toEqual([first, second]);

    const show = await sluice(["queue", "show", first as string, "-c", config]);
    expect(show.code).toBe(0);
    expect(show.stdout).toContain("MAIL FROM:<printer@floor2.example>");
    expect(show.stdout).toContain("RCPT TO:<one@example.com>");
    expect(show.stdout).toMatch(/\d{4}-\d\d-\d\dT[\d:.]+Z {2}550 5\.1\.1 RESOLVER/);
    expect(show.stdout).toContain("Subject: for one@example.com");
    const showJson = JSON.parse(
      (await sluice(["queue", "show", first as string, "-c", config, "--json"])).stdout,
    );
    expect(showJson).toMatchObject({ id: first, state: "failed", attempts: 1 });
    // a reply the table has advice for is shown with it
    const showSecond = await sluice(["queue", "show", second as string, "-c", config]);
    expect(showSecond.stdout).toContain(
      "failed/deferred because: 554 5.2.0 STOREDRV.Submission.Exception:SendAsDenied",
    );
    expect(showSecond.stdout).toMatch(
      /what to do: the mailbox may not send as this sender: give it SendAs rights/,
    );
    expect(show.stdout).not.toContain("what to do:");
    expect(lsJson[1]).toMatchObject({ id: second, hint: expect.stringMatching(/SendAs rights/) });

    const missing = await sluice(["queue", "show", "NOSUCHID", "-c", config]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("no message NOSUCHID in the queue");
  });

  it("refuses to purge without --yes when there is no terminal, and purges job and body with --yes", async () => {
    const prefix = uniquePrefix();
    const [first, second] = await failedMessages(prefix);
    const config = writeConfigFile(fx.config({ redisPrefix: prefix }));

    const refused = await sluice(["queue", "purge", first as string, "-c", config]);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain("add --yes to confirm");
    expect((await sluice(["queue", "ls", "-c", config, "--json"])).stdout).toContain(first);

    const olderThanNow = await sluice([
      "queue",
      "purge",
      "--failed",
      "--older-than",
      "7d",
      "-c",
      config,
      "--yes",
    ]);
    expect(olderThanNow.stdout).toContain("no failed message is that old");

    const purged = await sluice(["queue", "purge", first as string, "-c", config, "--yes", "--json"]);
    expect(JSON.parse(purged.stdout)).toEqual({ purged: [first] });
    const all = await sluice([
      "queue",
      "purge",
      "--failed",
      "--older-than",
      "0s",
      "-c",
      config,
      "--yes",
      "--json",
    ]);
    expect(JSON.parse(all.stdout)).toEqual({ purged: [second] });
    expect(JSON.parse((await sluice(["queue", "ls", "-c", config, "--json"])).stdout)).toEqual([]);
    const { Redis } = await import("ioredis");
    const redis = new Redis(redisUrl);
    try {
      expect(await redis.exists(`${prefix}:body:${first}`, `${prefix}:body:${second}`)).toBe(0);
    } finally {
      redis.disconnect();
    }
  });

  it("retries failed messages and a relay started later delivers them; pause holds a mailbox, resume releases it", async () => {
    const prefix = uniquePrefix();
    const [first, second] = await failedMessages(prefix);
    const config = writeConfigFile(fx.config({ redisPrefix: prefix }));
    fx.upstream.reset();

    const paused = await sluice(["queue", "pause", MAILBOX, "-c", config, "--reason", "tenant migration"]);
    expect(paused.stdout).toContain(`paused ${MAILBOX}: tenant migration`);
    const status = JSON.parse((await sluice(["queue", "status", "-c", config, "--json"])).stdout);
    expect(status[0].pause).toMatchObject({ kind: "manual", reason: "tenant migration" });

    expect((await sluice(["queue", "retry", first as string, "-c", config])).stdout).toContain(
      `retried ${first}`,
    );
    const rest = JSON.parse((await sluice(["queue", "retry", "--failed", "-c", config, "--json"])).stdout);
    expect(rest).toEqual({ retried: [second] });

    const r = await fx.relay({ redisPrefix: prefix });
    await waitFor(
      async () => (await r.spool.queue(MAILBOX).getDelayedCount()) === 2,
      20_000,
      "held by the pause",
    );
    expect(fx.upstream.messages).toHaveLength(0);

    expect((await sluice(["queue", "resume", MAILBOX, "-c", config])).stdout).toContain(`resumed ${MAILBOX}`);
    const delivered = await fx.upstream.waitForMessages(2);
    expect(delivered.flatMap((m) => m.rcptTo).sort()).toEqual(["one@example.com", "two@example.com"]);
  });

  it("says what is wrong for an unknown mailbox, a bad state and a missing id", async () => {
    const config = writeConfigFile(fx.config({ redisPrefix: uniquePrefix() }));
    const unknown = await sluice(["queue", "pause", "nobody@example.com", "-c", config]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain(
      `unknown mailbox nobody@example.com: the configured mailboxes are ${MAILBOX}`,
    );
    const state = await sluice(["queue", "ls", "--state", "lost", "-c", config]);
    expect(state.stderr).toContain("--state must be one of queued, delayed, active, failed, delivered");
    const retry = await sluice(["queue", "retry", "-c", config]);
    expect(retry.stderr).toContain("give a queue id, or --failed");
  });

  it("starts the embedded Redis itself when the config has none and no relay runs, and stops it again", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "sluice-cli-data-"));
    const config = writeConfigFile({
      dataDir,
      mailboxes: { [MAILBOX]: { password: "x" } },
      clients: [{ name: "p", networks: ["127.0.0.2/32"], from: "keep" }],
    });
    const status = await sluice(["queue", "status", "-c", config, "--json"]);
    expect(status.stderr).toBe("");
    expect(JSON.parse(status.stdout)).toMatchObject([{ mailbox: MAILBOX, queued: 0, failed: 0 }]);
    // a second command finds no leftover server (a leftover would be reported as "still running")
    const again = await sluice(["queue", "status", "-c", config, "--json", "--json"]);
    expect(again.code).toBe(0);
    expect(again.stderr).not.toContain("still running");
  });
});
