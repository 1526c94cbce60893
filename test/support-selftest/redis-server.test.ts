import { Redis } from "ioredis";
import { describe, expect, inject, it } from "vitest";
import { startPrivateRedis } from "../support/redis-server.js";

/** A client that gives up at once instead of retrying, so a stopped server shows as an error. */
function client(url: string): Redis {
  const redis = new Redis(url, { maxRetriesPerRequest: 0, retryStrategy: () => null, lazyConnect: true });
  redis.on("error", () => undefined); // failures reach the awaiting command
  return redis;
}

async function withClient<T>(url: string, use: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = client(url);
  try {
    await redis.connect();
    return await use(redis);
  } finally {
    redis.disconnect();
  }
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("private redis-server", () => {
  it("the shared redis of the global setup answers at the injected URL", async () => {
    const url = inject("redisUrl");
    expect(url).toMatch(/^redis:\/\/127\.0\.0\.1:\d+$/);
    expect(await withClient(url, (redis) => redis.ping())).toBe("PONG");
  });

  it("keeps append-only data across stop and start on the same port", async () => {
    const server = await startPrivateRedis();
    try {
      const { port, url } = server;
      await withClient(url, (redis) => redis.set("greeting", "hello"));
      await server.stop();
      expect(server.pid()).toBeUndefined();
      await expect(withClient(url, (redis) => redis.ping())).rejects.toThrow();
      await server.start();
      expect(server.port).toBe(port);
      expect(await withClient(url, (redis) => redis.get("greeting"))).toBe("hello");
    } finally {
      await server.destroy();
    }
  });

  it("kill -9 ends the process at once, and data fsync'ed before it survives the restart", async () => {
    const server = await startPrivateRedis();
    try {
      await withClient(server.url, (redis) => redis.rpush("jobs", "a", "b"));
      const pid = server.pid();
      expect(pid).toBeTypeOf("number");
      await server.kill("SIGKILL");
      expect(server.pid()).toBeUndefined();
      expect(processExists(pid as number)).toBe(false);
      await server.start();
      expect(await withClient(server.url, (redis) => redis.lrange("jobs", 0, -1))).toEqual(["a", "b"]);
    } finally {
      await server.destroy();
    }
  });

  it("without append-only, a restart starts empty", async () => {
    const server = await startPrivateRedis({ appendOnly: false });
    try {
      await withClient(server.url, (redis) => redis.set("k", "v"));
      await server.stop();
      await server.start();
      expect(await withClient(server.url, (redis) => redis.get("k"))).toBeNull();
    } finally {
      await server.destroy();
    }
  });
});
