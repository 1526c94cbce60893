import { Redis, type RedisOptions } from "ioredis";
import type { Config } from "../config/schema.js";
import type { Logger } from "../logger.js";

/** Where Redis is: an external URL, a primary found through Redis Sentinel, or the embedded server's unix socket. */
export type RedisTarget =
  | { url: string }
  | { path: string }
  | {
      sentinels: { host: string; port: number }[];
      name: string;
      password?: string;
      sentinelPassword?: string;
    };

/** The target for the `redis` config key (undefined: the embedded server, which the caller starts). */
export function redisTargetFor(redis: Config["redis"]): RedisTarget | undefined {
  if (redis === undefined) return undefined;
  if (typeof redis === "string") return { url: redis };
  const sentinels = redis.sentinels.map((address) => {
    const at = address.lastIndexOf(":");
    return { host: address.slice(0, at), port: Number(address.slice(at + 1)) };
  });
  return { sentinels, name: redis.name, password: redis.password, sentinelPassword: redis.sentinelPassword };
}

/** ioredis options for a target, merged over `base`. */
export function redisOptionsFor(target: RedisTarget, base: RedisOptions): RedisOptions {
  if ("url" in target) return base;
  if ("path" in target) return { ...base, path: target.path };
  return { ...base, ...target };
}

/** Creates a client for a target. */
export function createRedisClient(target: RedisTarget, base: RedisOptions): Redis {
  return "url" in target ? new Redis(target.url, base) : new Redis(redisOptionsFor(target, base));
}

export type ConnectionPurpose =
  /** Submissions: fail at once while Redis is away so the client gets 451, never a hang. */
  | "ingest"
  /** BullMQ workers and other long-lived users: wait and reconnect. */
  | "worker";

/** Creates ioredis connections for one relay; closes them all at stop(). */
export class RedisConnections {
  private readonly open = new Set<Redis>();

  constructor(
    private readonly target: RedisTarget,
    private readonly logger: Logger,
  ) {}

  create(purpose: ConnectionPurpose): Redis {
    const options: RedisOptions = {
      maxRetriesPerRequest: purpose === "ingest" ? 0 : null,
      enableOfflineQueue: purpose !== "ingest",
      retryStrategy: (times) => Math.min(times * 200, 2_000),
      connectionName: `sluice-${purpose}`,
    };
    const redis = createRedisClient(this.target, options);
    let reported = false;
    redis.on("error", (err) => {
      if (!reported) this.logger.warn({ err: err.message, purpose }, "redis connection error (reconnecting)");
      reported = true;
    });
    redis.on("ready", () => {
      if (reported) this.logger.info({ purpose }, "redis connection restored");
      reported = false;
    });
    this.open.add(redis);
    redis.once("end", () => this.open.delete(redis));
    return redis;
  }

  async closeAll(): Promise<void> {
    await Promise.all(
      [...this.open].map(async (redis) => {
        // QUIT waits for Redis to answer; a Redis that is down would keep us waiting
        const quit = redis.status === "ready" ? redis.quit().catch(() => {}) : Promise.resolve();
        await Promise.race([quit, new Promise((r) => setTimeout(r, 1_000))]);
        redis.disconnect();
      }),
    );
    this.open.clear();
  }
}

/** Warns when an external Redis could lose acknowledged mail: no persistence, or eviction allowed. */
export async function checkRedisDurability(redis: Redis, logger: Logger): Promise<void> {
  try {
    const [, appendonly] = (await redis.config("GET", "appendonly")) as string[];
    const [, save] = (await redis.config("GET", "save")) as string[];
    const [, policy] = (await redis.config("GET", "maxmemory-policy")) as string[];
    if (appendonly !== "yes" && !save) {
      logger.warn(
        "redis keeps no persistence (appendonly no, no save points): a Redis restart loses queued mail. Set appendonly yes",
      );
    } else if (appendonly !== "yes") {
      logger.warn(
        "redis persists by snapshots only: mail acknowledged since the last snapshot is lost if Redis dies. Set appendonly yes",
      );
    }
    if (policy !== "noeviction") {
      logger.warn(
        { policy },
        "redis maxmemory-policy is not noeviction: under memory pressure Redis may delete queued mail. Set maxmemory-policy noeviction",
      );
    }
  } catch (err) {
    logger.warn(
      { err: (err as Error).message },
      "could not read the redis configuration to check persistence (CONFIG GET refused?)",
    );
  }
}
