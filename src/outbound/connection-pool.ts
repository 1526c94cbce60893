import type { Logger } from "../logger.js";
import { retryDelay } from "./retry-schedule.js";
import type { UpstreamConnection } from "./upstream-connection.js";

/** Cluster-wide permission to hold one upstream connection open (see ConnectionLeases). */
export interface LeaseGate {
  /** A lease id, or null when every slot of the mailbox is taken. */
  acquire(): Promise<string | null>;
  /** false when the lease was lost (expired): the connection must close. */
  renew(leaseId: string): Promise<boolean>;
  release(leaseId: string): Promise<void>;
  /** How often to renew held leases, ms (a third of their lifetime). */
  renewEveryMs: number;
}

export interface ConnectionPoolOptions {
  /** Most connections open at once for this mailbox in this process. */
  maxConnections: number;
  /** Close a connection after it has been idle this long (ms). */
  idleTimeout: number;
  /** Close a connection after it has sent this many messages. */
  maxMessagesPerConnection: number;
  /** How long acquire() waits for a free lease before giving up with NoConnectionSlot (ms). */
  leaseWaitMs: number;
  lease: LeaseGate;
  /** Opens a new authenticated connection. */
  open(): Promise<UpstreamConnection>;
  /**
   * Called (at most every STARVED_EVERY_MS) when every slot of the mailbox is taken somewhere and a message here
   * waits: other processes may be holding idle connections (see yieldIdle).
   */
  onStarved?: () => void;
  logger: Logger;
}

const STARVED_EVERY_MS = 250;
/**
 * A pool with no connection that gives a message back (every slot held elsewhere) leaves the mailbox alone this
 * long (ms), so that the processes holding the slots take the message rather than this one straight back;
 * twice as long at each refusal in a row, up to a second. In a steady stream the processes
 * that hold the slots never let them go idle, and a process without one took a message of each mailbox and gave
 * it back every 250 ms (in two 50-mailbox runs where one relay held the slots, the other used 12-13 % of a core
 * and Redis did 61-62 commands per delivered message against 49: docs/performance.md). The maximum bounds how
 * late it finds a slot that frees (a process that died: its leases expire after leaseTtl).
 */
const GIVEN_BACK_BACK_OFF = { firstDelay: 250, factor: 2, maxDelay: 1_000 };
/** A pool that holds connections asks for another lease at most this often (ms) while leases are refused. */
const REFUSED_ASK_EVERY_MS = 250;

/** Every connection slot of the mailbox is in use somewhere in the cluster: try again shortly. */
export class NoConnectionSlot extends Error {
  constructor(
    /** Given up at once (see acquire): the message is for the processes that hold the slots. */
    readonly givenUp = false,
    /**
     * How long this process should leave the mailbox alone after giving the message back (ms): 0 when it holds
     * connections of its own (it serves the mailbox too), a moment when it holds none. The message itself is
     * ready again at once, for the processes that hold the slots.
     */
    readonly backOffMs = 0,
  ) {
    super("every upstream connection slot of the mailbox is in use");
    this.name = "NoConnectionSlot";
  }
}

export interface AcquireOptions {
  /** How many of this pool's connections the caller may bring into use (bulk mail leaves one free). */
  maxInUse?: () => number | Promise<number>;
  /**
   * false: not a connection whose message still waits for its reply (bulk mail: a message sent behind another
   * is committed to go before any mail that comes later, interactive mail included). Default true.
   */
  behindReply?: boolean;
  /**
   * Asked before each try for a connection: an error means the caller no longer wants one (its mailbox was
   * stopped meanwhile), and acquire throws it instead of taking or opening a connection.
   */
  stopped?: () => Error | undefined;
}

interface Pooled {
  connection: UpstreamConnection;
  leaseId: string;
  leaseLost: boolean;
  /** When the last acquire or renewal that succeeded was sent (local clock): the lease lives ttl from then. */
  leasedAt: number;
  renewTimer?: NodeJS.Timeout;
  idleTimer?: NodeJS.Timeout;
  idleSince?: number;
}

/**
 * Upstream connections of one mailbox in this process: one TLS handshake and one AUTH serve many messages.
 * Every open connection holds a cluster-wide lease, renewed while it is open and released when it closes.
 */
export class ConnectionPool {
  private readonly idle: Pooled[] = [];
  private readonly busy = new Map<UpstreamConnection, Pooled>();
  private opening = 0;
  private closed = false;
  /** acquire() calls waiting for a connection of this pool to come back. */
  private readonly waiters: (() => void)[] = [];
  /** When onStarved was last called. */
  private starvedAt = 0;
  /** acquire() calls that have no connection yet. */
  private waiting = 0;
  /** When a lease was last refused (every slot of the mailbox taken somewhere). */
  private refusedAt = 0;
  /** Leases refused in a row while this pool had no connection (see GIVEN_BACK_BACK_OFF). */
  private refusedEmpty = 0;

  constructor(private readonly options: ConnectionPoolOptions) {}

  get size(): number {
    return this.idle.length + this.busy.size + this.opening;
  }

  /** A lease was refused within the last `ms`: the mailbox's other slots are held by other processes. */
  starvedWithin(ms: number): boolean {
    return Date.now() - this.refusedAt < ms;
  }

  /** Connections sending or being opened right now (not idle). */
  get inUse(): number {
    return this.busy.size + this.opening;
  }

  /**
   * An idle connection, or a new one under a fresh lease; when all of this pool's connections are busy, waits
   * (up to leaseWaitMs) for one to come back. Throws NoConnectionSlot, or the upstream's error.
   */
  async acquire(wants: AcquireOptions = {}): Promise<UpstreamConnection> {
    this.waiting++;
    try {
      return await this.waitForConnection(wants);
    } finally {
      this.waiting--;
    }
  }

  private async waitForConnection(wants: AcquireOptions): Promise<UpstreamConnection> {
    const maxInUse = wants.maxInUse ?? (() => this.options.maxConnections);
    const behindReply = wants.behindReply ?? true;
    const until = Date.now() + this.options.leaseWaitMs;
    for (;;) {
      const stopped = wants.stopped?.();
      if (stopped) throw stopped;
      const allowed = await maxInUse();
      // connections whose message waits for its reply are in use for a caller that will not go behind it
      const inUse =
        this.inUse + (behindReply ? 0 : this.idle.filter((p) => p.connection.awaitingReply).length);
      if (inUse >= allowed) {
        if (this.closed || Date.now() >= until) throw new NoConnectionSlot();
        await this.nextRelease(Math.min(until - Date.now(), 50 + Math.random() * 100));
        continue;
      }
      // a connection with nothing in flight first; then a new one; a message goes behind another one's reply
      // (its envelope sent at once, answered right after that reply) only when no other connection can be had
      const free = this.hasIdle(false) ? await this.takeIdle(false) : undefined;
      if (free) return free;
      // refused a moment ago while holding connections of our own: wait for one of them rather than ask Redis
      // again at every turn (a slot another process frees is still found within REFUSED_ASK_EVERY_MS)
      const askAgainAt = this.size > 0 ? this.refusedAt + REFUSED_ASK_EVERY_MS : 0;
      let refusedNow = false;
      if (this.size < this.options.maxConnections && Date.now() >= askAgainAt) {
        this.opening++;
        try {
          const leasedAt = Date.now();
          const leaseId = await this.options.lease.acquire();
          if (leaseId) {
            this.refusedEmpty = 0;
            return await this.openUnder(leaseId, leasedAt);
          }
          this.refusedAt = leasedAt;
          refusedNow = true;
        } finally {
          this.opening--;
        }
      }
      // (no await unless there is one: the checks below count the callers still asking for a lease)
      const behind = behindReply && this.hasIdle(true) ? await this.takeIdle(true) : undefined;
      if (behind) return behind;
      if (refusedNow) {
        // the other slots are busy elsewhere. With no connection here, or more callers waiting (besides those
        // opening one of their own) than this pool's connections can serve, one each, the message goes back to
        // the queue for the processes that hold the slots, whose connections may be idle right now (and stay
        // open for it: no hand-over is asked for); with no connection here, this process then leaves the
        // mailbox alone a moment, so as not to take the message straight back
        // no jitter: the back-off only keeps this process's own turns away from the mailbox
        if (this.size === 0) {
          throw new NoConnectionSlot(
            true,
            retryDelay(GIVEN_BACK_BACK_OFF, ++this.refusedEmpty, () => 0.5),
          );
        }
        if (this.waiting - this.opening > this.size) throw new NoConnectionSlot(true);
        // the message stays here: the processes that hold the other slots hand over those they keep idle
        if (this.options.onStarved && this.refusedAt - this.starvedAt >= STARVED_EVERY_MS) {
          this.starvedAt = this.refusedAt;
          this.options.onStarved();
        }
      }
      if (this.closed || Date.now() >= until) throw new NoConnectionSlot();
      // wake when one of ours comes back, or try for a lease again shortly (another process may free one)
      const retryIn = Math.max(50 + Math.random() * 100, this.refusedAt + REFUSED_ASK_EVERY_MS - Date.now());
      await this.nextRelease(Math.min(until - Date.now(), retryIn));
    }
  }

  private hasIdle(behindReply: boolean): boolean {
    return this.idle.some((p) => p.connection.awaitingReply === behindReply);
  }

  /**
   * Takes the most recently returned idle connection whose message is (`behindReply`) or is not still waiting for
   * its reply; discards the unusable ones met on the way.
   */
  private async takeIdle(behindReply: boolean): Promise<UpstreamConnection | undefined> {
    for (;;) {
      const index = this.idle.findLastIndex((p) => p.connection.awaitingReply === behindReply);
      if (index === -1) return undefined;
      const [pooled] = this.idle.splice(index, 1) as [Pooled];
      clearTimeout(pooled.idleTimer);
      if (pooled.connection.usable && !pooled.leaseLost) {
        this.busy.set(pooled.connection, pooled);
        // a reused connection starts a message only under a live lease: a late renewal (a stalled event loop)
        // must not let it send while another process already holds the slot. A lease renewed less than
        // renewEveryMs ago has two thirds of its life left: no need to ask Redis again.
        if (Date.now() - pooled.leasedAt < this.options.lease.renewEveryMs) return pooled.connection;
        if (await this.renew(pooled).catch(() => false)) return pooled.connection;
        this.busy.delete(pooled.connection);
        this.options.logger.warn(
          "upstream connection lease had expired: closing the connection instead of reusing it",
        );
      }
      this.discard(pooled);
    }
  }

  private async openUnder(leaseId: string, leasedAt: number): Promise<UpstreamConnection> {
    let connection: UpstreamConnection;
    try {
      connection = await this.options.open();
    } catch (err) {
      await this.options.lease.release(leaseId).catch(() => {});
      throw err;
    }
    const pooled: Pooled = { connection, leaseId, leaseLost: false, leasedAt };
    // a caller that will not go behind a reply (bulk mail) waits for it
    connection.onIdle = () => this.wakeAll();
    pooled.renewTimer = setInterval(() => {
      this.renew(pooled).then(
        (held) => {
          if (held) return;
          pooled.leaseLost = true;
          this.options.logger.warn(
            "upstream connection lease expired: closing the connection after its current message",
          );
        },
        // Redis unreachable: the lease is neither confirmed nor lost; reuse will ask again
        () => {},
      );
    }, this.options.lease.renewEveryMs);
    pooled.renewTimer.unref();
    this.busy.set(connection, pooled);
    return connection;
  }

  /** Renews the connection's lease; false when it had lapsed. Rejects when Redis could not be asked. */
  private async renew(pooled: Pooled): Promise<boolean> {
    const sentAt = Date.now();
    const held = await this.options.lease.renew(pooled.leaseId);
    if (held) pooled.leasedAt = Math.max(pooled.leasedAt, sentAt);
    return held;
  }

  /** Resolves when a connection comes back to the pool (or is closed), or after ms. */
  private nextRelease(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        const index = this.waiters.indexOf(done);
        if (index !== -1) this.waiters.splice(index, 1);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.push(done);
    });
  }

  /** Wakes every waiter: each checks again whether it may take a connection (lanes differ). */
  private wakeAll(): void {
    // (called at every reply of a connection: most of the time nobody waits)
    if (this.waiters.length === 0) return;
    for (const waiter of [...this.waiters]) waiter();
  }

  /** Gives a connection back: kept for reuse when healthy, closed (and its lease released) otherwise. */
  release(connection: UpstreamConnection, healthy: boolean): void {
    const pooled = this.busy.get(connection);
    if (!pooled) return;
    this.busy.delete(connection);
    const reuse =
      healthy &&
      !this.closed &&
      !pooled.leaseLost &&
      connection.usable &&
      connection.messagesSent < this.options.maxMessagesPerConnection;
    if (!reuse) {
      this.discard(pooled);
      return;
    }
    pooled.idleTimer = setTimeout(() => {
      const index = this.idle.indexOf(pooled);
      if (index !== -1) this.idle.splice(index, 1);
      this.discard(pooled);
    }, this.options.idleTimeout);
    pooled.idleTimer.unref();
    pooled.idleSince = Date.now();
    this.idle.push(pooled);
    this.wakeAll();
  }

  /**
   * A connection given back while its message waited for the reply, and the reply condemned it (421, 432):
   * closed now, its slot given back once it is gone. A message that took it meanwhile is withdrawn before its
   * data (UpstreamConnection's mayWrite) and gives it back closed.
   */
  condemn(connection: UpstreamConnection): void {
    connection.close();
    const index = this.idle.findIndex((p) => p.connection === connection);
    const [pooled] = index === -1 ? [] : this.idle.splice(index, 1);
    if (pooled) this.discard(pooled);
  }

  private discard(pooled: Pooled): void {
    clearTimeout(pooled.idleTimer);
    this.closeAndRelease(pooled).catch(() => {});
    this.wakeAll();
  }

  /**
   * Closes the connection and gives its slot back once the session is gone: a message written on it may still
   * wait for its reply, and until then the connection is open and counted by the upstream.
   */
  private async closeAndRelease(pooled: Pooled): Promise<void> {
    pooled.connection.close();
    await pooled.connection.ended;
    clearInterval(pooled.renewTimer);
    await this.options.lease.release(pooled.leaseId);
  }

  /**
   * Another process waits for a slot of this mailbox: closes the connections that have been idle at least
   * minIdleMs (none of this process's messages wanted them), so their leases go to it now rather than after
   * idleTimeout. Returns how many were closed.
   */
  yieldIdle(minIdleMs: number): number {
    const now = Date.now();
    // idle since it came back and since its last reply (a message written on it may still wait for its own)
    const stale = this.idle.filter(
      (p) => now - Math.max(p.idleSince ?? now, p.connection.idleSince) >= minIdleMs,
    );
    for (const pooled of stale) {
      this.idle.splice(this.idle.indexOf(pooled), 1);
      this.discard(pooled);
    }
    return stale.length;
  }

  /** Closes idle connections and releases their leases; busy ones close when released. */
  async close(): Promise<void> {
    this.closed = true;
    const idle = this.idle.splice(0);
    for (const pooled of idle) clearTimeout(pooled.idleTimer);
    await Promise.all(idle.map((p) => this.closeAndRelease(p).catch(() => {})));
  }
}
