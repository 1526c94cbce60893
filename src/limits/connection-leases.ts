import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import { requireNonEmpty, requirePositiveInteger } from "./arguments.js";
import { limitKeys } from "./keys.js";
import { LuaScript } from "./lua-script.js";

/**
 * A lease's lifetime unless renewed (ms), and the `leaseTtl` setting's default. A relay killed just after it
 * renewed its leases holds its slots this long; the others must have them open again within 30 s (the
 * promise to operators), which also takes their next try for a lease (up to 1 s apart) and a TLS handshake
 * and AUTH. At 30 000 that came to 30.6 s (test/cluster.test.ts, the kill timed just after a renewal).
 */
export const DEFAULT_LEASE_TTL_MS = 25_000;

export interface ConnectionLeasesOptions {
  /** Lease lifetime unless renewed, ms. Default DEFAULT_LEASE_TTL_MS. */
  ttlMs?: number;
  /** After a 432, how long before the effective limit is raised by one again, ms. Default 60 000. */
  coolDownMs?: number;
}

const ACQUIRE = LuaScript.load("lease-acquire");
const RENEW = LuaScript.load("lease-renew");
const COUNT = LuaScript.load("lease-count");
const EFFECTIVE_LIMIT = LuaScript.load("lease-effective-limit");
const REDUCE = LuaScript.load("lease-reduce");

/**
 * Cluster-wide leases on upstream connections per mailbox, kept in Redis so every relay process sees the
 * same count. A lease expires after ttlMs unless renewed, so a process that dies without releasing only
 * holds its slots that long. After a `432 4.3.2` the mailbox's limit is lowered and climbs back slowly.
 * All decisions run in Lua with Redis's clock (TIME), so processes with skewed clocks agree.
 */
export class ConnectionLeases {
  private readonly ttlMs: number;
  private readonly coolDownMs: number;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    options: ConnectionLeasesOptions = {},
  ) {
    // `??` rather than a spread so that an explicit `undefined` also means "default".
    this.ttlMs = options.ttlMs ?? DEFAULT_LEASE_TTL_MS;
    this.coolDownMs = options.coolDownMs ?? 60_000;
    requirePositiveInteger("ttlMs", this.ttlMs);
    requirePositiveInteger("coolDownMs", this.coolDownMs);
  }

  /** A new lease id if fewer than the effective limit are live, else null: do not connect now. */
  async acquire(mailbox: string, limit: number): Promise<string | null> {
    const keys = this.keys(mailbox);
    requirePositiveInteger("limit", limit);
    const reply = await ACQUIRE.run(
      this.redis,
      [keys.leases, keys.concurrency],
      [limit, this.ttlMs, this.coolDownMs, randomUUID()],
    );
    return typeof reply === "string" ? reply : null;
  }

  /** Extends the lease to ttlMs from now. False if it had expired or been released: stop using the slot. */
  async renew(mailbox: string, leaseId: string): Promise<boolean> {
    const keys = this.keys(mailbox);
    requireNonEmpty("leaseId", leaseId);
    return (await RENEW.run(this.redis, [keys.leases], [this.ttlMs, leaseId])) === 1;
  }

  /** Frees the lease's slot. Releasing an expired or unknown lease does nothing. */
  async release(mailbox: string, leaseId: string): Promise<void> {
    const keys = this.keys(mailbox);
    requireNonEmpty("leaseId", leaseId);
    await this.redis.zrem(keys.leases, leaseId);
  }

  /** Live (unexpired) leases of the mailbox, across all processes. */
  async count(mailbox: string): Promise<number> {
    return Number(await COUNT.run(this.redis, [this.keys(mailbox).leases], []));
  }

  /** The limit acquire() applies now: `limit`, or less during the cool-down after a 432. */
  async effectiveLimit(mailbox: string, limit: number): Promise<number> {
    const keys = this.keys(mailbox);
    requirePositiveInteger("limit", limit);
    return Number(await EFFECTIVE_LIMIT.run(this.redis, [keys.concurrency], [limit, this.coolDownMs]));
  }

  /**
   * Call when the upstream answered `432 4.3.2` (too many connections): lowers the effective limit by one,
   * never below 1. It rises again by one per coolDownMs since the last change, up to `limit`.
   * Returns the new effective limit. Live leases are kept; acquire() refuses until they drop below it.
   */
  async reduce(mailbox: string, limit: number): Promise<number> {
    const keys = this.keys(mailbox);
    requirePositiveInteger("limit", limit);
    return Number(await REDUCE.run(this.redis, [keys.concurrency], [limit, this.coolDownMs]));
  }

  private keys(mailbox: string) {
    requireNonEmpty("mailbox", mailbox);
    return limitKeys(this.prefix, mailbox);
  }
}
