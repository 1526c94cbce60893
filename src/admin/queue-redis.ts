import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { Redis } from "ioredis";
import type { Config } from "../config/schema.js";
import type { Logger } from "../logger.js";
import { type EmbeddedRedis, startEmbeddedRedis } from "../spool/embedded-redis.js";
import { createRedisClient, redisTargetFor } from "../spool/redis-connections.js";

/** A Redis connection for the queue commands, and what to close afterwards. */
export interface QueueRedis {
  redis: Redis;
  /** "url", "socket of the running relay", or "embedded redis started for this command". */
  source: string;
  close(): Promise<void>;
}

const READY_TIMEOUT_MS = 10_000;

async function connect(redis: Redis, what: string): Promise<void> {
  let lastError = "";
  redis.on("error", (err: Error) => {
    lastError = err.message;
  });
  await new Promise<void>((resolveReady, reject) => {
    const timer = setTimeout(() => {
      redis.disconnect();
      reject(
        new Error(
          `${what} not reachable within ${READY_TIMEOUT_MS / 1000} s${lastError ? `: ${lastError}` : ""}`,
        ),
      );
    }, READY_TIMEOUT_MS);
    redis.once("ready", () => {
      clearTimeout(timer);
      resolveReady();
    });
    redis.once("end", () => {
      clearTimeout(timer);
      reject(new Error(`${what} not reachable${lastError ? `: ${lastError}` : ""}`));
    });
  });
}

/**
 * Connects to the Redis the configuration names. For the embedded Redis: the running relay's unix socket
 * under dataDir, or, when no relay runs, an embedded redis-server started for this command (and stopped
 * after it), so the queue can be inspected while the relay is down.
 */
export async function openQueueRedis(config: Readonly<Config>, logger: Logger): Promise<QueueRedis> {
  const options = { maxRetriesPerRequest: 1, connectionName: "sluice-queue-cli" };
  const target = redisTargetFor(config.redis);
  if (target) {
    const redis = createRedisClient(target, { ...options, retryStrategy: (n) => (n > 3 ? null : 200 * n) });
    await connect(redis, "redis");
    return { redis, source: "url", close: () => quit(redis) };
  }
  const socket = join(resolve(config.dataDir), "redis", "redis.sock");
  if (existsSync(socket)) {
    const redis = new Redis({ ...options, path: socket, retryStrategy: () => null });
    try {
      await connect(redis, `redis at ${socket}`);
      return { redis, source: "socket of the running relay", close: () => quit(redis) };
    } catch {
      // a socket left by a relay that died: start our own below
    }
  }
  const embedded: EmbeddedRedis = await startEmbeddedRedis(config.dataDir, logger);
  const redis = new Redis({ ...options, path: embedded.path, retryStrategy: () => null });
  try {
    await connect(redis, "embedded redis");
  } catch (err) {
    await embedded.stop();
    throw err;
  }
  return {
    redis,
    source: "embedded redis started for this command",
    async close() {
      await quit(redis);
      await embedded.stop();
    },
  };
}

async function quit(redis: Redis): Promise<void> {
  try {
    await redis.quit();
  } catch {
    redis.disconnect();
  }
}
