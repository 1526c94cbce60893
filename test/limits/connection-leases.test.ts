import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ConnectionLeases } from "../../src/limits/connection-leases.js";

const redisUrl = inject("redisUrl");
const MAILBOX = "app.alerts@example.org";

function uniquePrefix(): string {
  return `test-${randomUUID()}`;
}

describe("connection leases", () => {
  let redis: Redis;
  beforeAll(() => {
    redis = new Redis(redisUrl);
  });
  afterAll(async () => {
    await redis.quit();
  });

  it("grants at most `limit` leases at once to 50 concurrent callers on 5 connections", async () => {
    const prefix = uniquePrefix();
    const clients = Array.from({ length: 5 }, () => new Redis(redisUrl));
    try {
      const leases = clients.map((client) => new ConnectionLeases(client, prefix));
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) => leases[i % leases.length]?.acquire(MAILBOX, 3)),
      );
      const granted = results.filter((id): id is string => typeof id === "string");
      expect(granted).toHaveLength(3);
      expect(new Set(granted).size).toBe(3);
      expect(await new ConnectionLeases(redis, prefix).count(MAILBOX)).toBe(3);
    } finally {
      await Promise.all(clients.map((client) => client.quit()));
    }
  });

  it("keeps each mailbox's leases apart", async () => {
    const leases = new ConnectionLeases(redis, uniquePrefix());
    expect(await leases.acquire(MAILBOX, 1)).not.toBeNull();
    expect(await leases.acquire(MAILBOX, 1)).toBeNull();
    expect(await leases.acquire("printer@example.org", 1)).not.toBeNull();
  });

  it("frees a slot when a lease is released", async () => {
    const leases = new ConnectionLeases(redis, uniquePrefix());
    const first = await leases.acquire(MAILBOX, 2);
    const second = await leases.acquire(MAILBOX, 2);
    expect(first).not.toBeNull();
    expect(second).not.toBeNull();
    expect(await leases.acquire(MAILBOX, 2)).toBeNull();
    await leases.release(MAILBOX, first as string);
    expect(await leases.count(MAILBOX)).toBe(1);
    expect(await leases.acquire(MAILBOX, 2)).not.toBeNull();
  });

  it("lets a lease that is not renewed expire after ttlMs, and gives its slot to another caller", async () => {
    const prefix = uniquePrefix();
    const stale = new ConnectionLeases(redis, prefix, { ttlMs: 300 });
    const lost = await stale.acquire(MAILBOX, 1);
    expect(lost).not.toBeNull();
    expect(await stale.acquire(MAILBOX, 1)).toBeNull();
    await sleep(400);
    expect(await stale.count(MAILBOX)).toBe(0);
    const other = new ConnectionLeases(redis, prefix, { ttlMs: 300 });
    expect(await other.acquire(MAILBOX, 1)).not.toBeNull();
    expect(await stale.renew(MAILBOX, lost as string)).toBe(false);
  });

  it("keeps a renewed lease alive beyond ttlMs", async () => {
    const leases = new ConnectionLeases(redis, uniquePrefix(), { ttlMs: 300 });
    const id = await leases.acquire(MAILBOX, 1);
    expect(id).not.toBeNull();
    for (let i = 0; i < 5; i++) {
      await sleep(150);
      expect(await leases.renew(MAILBOX, id as string)).toBe(true);
    }
    // 750 ms after acquire, well past the 300 ms lifetime.
    expect(await leases.count(MAILBOX)).toBe(1);
    expect(await leases.acquire(MAILBOX, 1)).toBeNull();
  });

  it("says a released lease cannot be renewed", async () => {
    const leases = new ConnectionLeases(redis, uniquePrefix());
    const id = (await leases.acquire(MAILBOX, 1)) as string;
    await leases.release(MAILBOX, id);
    expect(await leases.renew(MAILBOX, id)).toBe(false);
    expect(await leases.count(MAILBOX)).toBe(0);
  });

  it("frees the slots of a relay process killed with SIGKILL once its leases expire", async () => {
    const prefix = uniquePrefix();
    const module = fileURLToPath(new URL("../../src/limits/connection-leases.ts", import.meta.url));
    const program = [
      "const { Redis } = await import('ioredis');",
      "const { ConnectionLeases } = await import(process.argv[1]);",
      "const leases = new ConnectionLeases(new Redis(process.argv[2]), process.argv[3], { ttlMs: 500 });",
      "console.log(await leases.acquire(process.argv[4], 2), await leases.acquire(process.argv[4], 2));",
      "setInterval(() => {}, 1000);",
    ].join("\n");
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "--input-type=module", "-e", program, module, redisUrl, prefix, MAILBOX],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    const exited = once(child, "exit");
    try {
      const [line] = (await once(child.stdout, "data")) as [Buffer];
      expect(line.toString().trim().split(" ")).toHaveLength(2);
    } finally {
      child.kill("SIGKILL");
      await exited;
    }
    const survivor = new ConnectionLeases(redis, prefix);
    expect(await survivor.acquire(MAILBOX, 2)).toBeNull();
    await sleep(600);
    expect(await survivor.acquire(MAILBOX, 2)).not.toBeNull();
    expect(await survivor.acquire(MAILBOX, 2)).not.toBeNull();
  });

  it("after a 432, refuses at the reduced limit and climbs back one step per cool-down", async () => {
    const leases = new ConnectionLeases(redis, uniquePrefix(), { coolDownMs: 200 });
    expect(await leases.effectiveLimit(MAILBOX, 3)).toBe(3);
    expect(await leases.reduce(MAILBOX, 3)).toBe(2);
    expect(await leases.effectiveLimit(MAILBOX, 3)).toBe(2);
    expect(await leases.acquire(MAILBOX, 3)).not.toBeNull();
    expect(await leases.acquire(MAILBOX, 3)).not.toBeNull();
    expect(await leases.acquire(MAILBOX, 3)).toBeNull();

    await sleep(250);
    expect(await leases.effectiveLimit(MAILBOX, 3)).toBe(3);
    expect(await leases.acquire(MAILBOX, 3)).not.toBeNull();
    expect(await leases.acquire(MAILBOX, 3)).toBeNull();
  });

  it("lowers the limit by one per 432 but never below 1, and rises one step per cool-down", async () => {
    const leases = new ConnectionLeases(redis, uniquePrefix(), { coolDownMs: 200 });
    expect(await leases.reduce(MAILBOX, 3)).toBe(2);
    expect(await leases.reduce(MAILBOX, 3)).toBe(1);
    expect(await leases.reduce(MAILBOX, 3)).toBe(1);
    expect(await leases.effectiveLimit(MAILBOX, 3)).toBe(1);
    await sleep(250);
    expect(await leases.effectiveLimit(MAILBOX, 3)).toBe(2);
    await sleep(200);
    expect(await leases.effectiveLimit(MAILBOX, 3)).toBe(3);
    await sleep(200);
    expect(await leases.effectiveLimit(MAILBOX, 3)).toBe(3);
  });

  it("shares the reduced limit between processes", async () => {
    const prefix = uniquePrefix();
    const other = new Redis(redisUrl);
    try {
      await new ConnectionLeases(redis, prefix).reduce(MAILBOX, 3);
      expect(await new ConnectionLeases(other, prefix).effectiveLimit(MAILBOX, 3)).toBe(2);
    } finally {
      await other.quit();
    }
  });

  it("leaves no keys behind once leases and the cool-down have run out", async () => {
    const prefix = uniquePrefix();
    const leases = new ConnectionLeases(redis, prefix, { ttlMs: 200, coolDownMs: 100 });
    await leases.acquire(MAILBOX, 3);
    await leases.reduce(MAILBOX, 3);
    expect(await redis.keys(`${prefix}:*`)).toHaveLength(2);
    await sleep(300);
    expect(await redis.keys(`${prefix}:*`)).toEqual([]);
  });

  it("rejects a limit or option that is not a positive whole number, naming it", async () => {
    expect(() => new ConnectionLeases(redis, "x", { ttlMs: 0 })).toThrow(/ttlMs/);
    expect(() => new ConnectionLeases(redis, "x", { coolDownMs: 1.5 })).toThrow(/coolDownMs/);
    await expect(new ConnectionLeases(redis, "x").acquire(MAILBOX, 0)).rejects.toThrow(/limit/);
  });
});
