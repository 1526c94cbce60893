import { randomBytes } from "node:crypto";
import { type JobsOptions, Queue } from "bullmq";
import type { Redis } from "ioredis";
import type { MessageJob } from "./message-job.js";

/** Queue that holds mail of clients with no mailbox yet; it has no worker. */
export const HELD_QUEUE = "held";

/** BullMQ job priority per lane (lower runs first). */
export const JOB_PRIORITY = { interactive: 1, bulk: 10 } as const;

/** A body written but not yet queued expires on its own, so a failed submission leaves nothing behind. */
const UNCOMMITTED_BODY_TTL_MS = 15 * 60_000;
const FLUSH_BYTES = 512 * 1024;

/** A new queue id: time-ordered and unique across processes. */
export function newQueueId(): string {
  return `${Date.now().toString(36)}${randomBytes(6).toString("hex")}`.toUpperCase();
}

/**
 * The durable queue: message bytes under `<prefix>:body:<id>` and one BullMQ job per message in the queue of
 * its mailbox. The one place that knows key and queue names.
 */
export class Spool {
  /** Queues by the connection they use (the spool's own, or a caller's: see queue()), then by name. */
  private readonly queues = new Map<Redis, Map<string, Queue<MessageJob>>>();
  /** Queues with a wake not yet published (wakes are sent once per tick, not once per message). */
  private readonly wakes = new Set<string>();
  private wakesSent: Promise<unknown> = Promise.resolve();
  /**
   * Until when (epoch ms) commits fail at once because the replicas did not confirm the last one. A WAIT holds
   * the spool's connection, so every submission's commands would queue behind one timeout after another.
   */
  private replicasMissingUntil = 0;

  constructor(
    /** Connection for writes on the submission path (fails fast while Redis is away). */
    private readonly redis: Redis,
    readonly prefix: string,
    private readonly jobOptions: JobsOptions,
    /** Replicas that must confirm a submission (Redis WAIT) before commit() succeeds. */
    private readonly replication: { minReplicas: number; timeoutMs: number } = {
      minReplicas: 0,
      timeoutMs: 0,
    },
  ) {}

  bodyKey(id: string): string {
    return `${this.prefix}:body:${id}`;
  }

  queueName(mailbox: string | null): string {
    return mailbox ?? HELD_QUEUE;
  }

  /** Pub/sub channel on which every relay process hears which queue has mail ready (DeliveryScheduler). */
  get wakeChannel(): string {
    return `${this.prefix}:wake`;
  }

  /** Pub/sub channel on which a process that waits for one of a mailbox's connection slots says so. */
  get slotWantedChannel(): string {
    return `${this.prefix}:slot-wanted`;
  }

  /** Tells every relay process that this one waits for a connection slot of the mailbox (best effort). */
  wantSlot(mailbox: string): void {
    this.announce(this.slotWantedChannel, mailbox);
  }

  /** Pub/sub channel on which a process says it gave a mailbox's message back for want of a connection slot. */
  get givenBackChannel(): string {
    return `${this.prefix}:given-back`;
  }

  /**
   * Tells every relay process that this one gave a message of the mailbox back to the queue, for the processes
   * that hold its connection slots (best effort). Unlike a wake, it does not end the back-off of a process
   * that waits for a slot: the one that gave the message back would otherwise take it straight back.
   */
  givenBack(mailbox: string): void {
    this.announce(this.givenBackChannel, mailbox);
  }

  /** Pub/sub channel on which a process says a mailbox was stopped (its quota spent, its AUTH refused, an operator's pause). */
  get stoppedChannel(): string {
    return `${this.prefix}:stopped`;
  }

  /**
   * Tells every relay process that the mailbox was stopped, so that none sends a message it already started
   * (best effort: a process that misses it finds the mailbox's pause at its next message).
   */
  mailboxStopped(mailbox: string): void {
    this.announce(this.stoppedChannel, mailbox);
  }

  /** Publishes the mailbox's queue name on a channel of the relays' schedulers (best effort). */
  private announce(channel: string, mailbox: string): void {
    this.redis.publish(channel, this.queueName(mailbox)).catch(() => {});
  }

  /**
   * Tells every relay process that the mailbox's queue has mail ready. Best effort: a lost wake only delays
   * delivery until the scheduler's next poll.
   */
  wake(mailbox: string | null): void {
    const name = this.queueName(mailbox);
    if (name === HELD_QUEUE || this.wakes.has(name)) return;
    this.wakes.add(name);
    if (this.wakes.size > 1) return;
    this.wakesSent = new Promise<void>((resolve) => {
      setImmediate(() => {
        const names = [...this.wakes];
        this.wakes.clear();
        const pipeline = this.redis.pipeline();
        for (const queued of names) pipeline.publish(this.wakeChannel, queued);
        pipeline.exec().then(
          () => resolve(),
          () => resolve(),
        );
      });
    });
  }

  /**
   * The mailbox's queue (null: mail held for want of one), on the spool's connection, which fails at once while
   * Redis is away, or on `via` (delivery's, which waits for Redis).
   */
  queue(mailbox: string | null, via: Redis = this.redis): Queue<MessageJob> {
    const name = this.queueName(mailbox);
    let byName = this.queues.get(via);
    if (!byName) {
      byName = new Map();
      this.queues.set(via, byName);
    }
    let queue = byName.get(name);
    if (!queue) {
      queue = new Queue<MessageJob>(name, { connection: via, prefix: this.prefix });
      queue.on("error", () => {});
      byName.set(name, queue);
    }
    return queue;
  }

  /** Starts writing a message body; nothing is queued until commit(). */
  openBody(id: string): BodyWriter {
    return new BodyWriter(this, this.redis, id);
  }

  /**
   * Queues the job of a fully written body and makes the body permanent. Throws if Redis did not confirm.
   * The permanent body is the commit: a worker that finds the job before it waits (delivery-start.lua), so
   * a submission that fails here (its client gets 451 and sends it again) is never delivered as well. With
   * replicas, the body becomes permanent only once they have the job, and the commit returns once they have
   * that too: a failover then keeps the job and its permanent body, or neither.
   */
  async commit(job: MessageJob): Promise<void> {
    if (this.replicasMissingUntil > Date.now()) {
      throw new Error("Redis replicas did not confirm a write moments ago: not waiting for them again yet");
    }
    const queue = this.queue(job.mailbox);
    await queue.add("deliver", job, this.addOptions(job));
    try {
      await this.replicated();
      const persisted = await this.redis.persist(this.bodyKey(job.id));
      if (persisted !== 1) throw new Error("message body expired before it was queued");
      await this.replicated();
    } catch (err) {
      // not acknowledged: take it back, so the client's retry does not make a second copy (best effort: the
      // body expires on its own otherwise, and its job is dropped then, on a primary or on the replica a
      // failover promotes; only a body made permanent before a failed confirmation can still be delivered)
      await queue.remove(job.id).catch(() => {});
      await this.redis.del(this.bodyKey(job.id)).catch(() => {});
      throw err;
    }
    this.wake(job.mailbox);
  }

  /** Waits until the configured replicas have every earlier write of the spool's connection (Redis WAIT). */
  private async replicated(): Promise<void> {
    const { minReplicas, timeoutMs } = this.replication;
    if (minReplicas === 0) return;
    const replicas = await this.redis.wait(minReplicas, timeoutMs);
    if (replicas < minReplicas) {
      // the next commit that waits again is one timeout from now; those before it get 451 at once
      this.replicasMissingUntil = Date.now() + timeoutMs;
      throw new Error(`only ${replicas} of ${minReplicas} Redis replicas confirmed the write`);
    }
  }

  private addOptions(job: MessageJob): JobsOptions {
    return { ...this.jobOptions, jobId: job.id, priority: JOB_PRIORITY[job.priority ?? "interactive"] };
  }

  /** Messages of a mailbox not yet delivered: waiting, held (delayed) and being sent. */
  async queuedCount(mailbox: string): Promise<number> {
    return this.queue(mailbox).getJobCountByTypes("waiting", "prioritized", "delayed", "active");
  }

  /** Interactive messages of a mailbox ready to be sent (not held); asked over `via` (see queue()). */
  async interactiveWaiting(mailbox: string, via?: Redis): Promise<number> {
    const queue = this.queue(mailbox, via);
    const [counts, waiting] = await Promise.all([
      queue.getCountsPerPriority([JOB_PRIORITY.interactive]),
      queue.getWaitingCount(),
    ]);
    // jobs queued before lanes existed have no priority and wait in the plain list: interactive too
    return (counts[JOB_PRIORITY.interactive] ?? 0) + waiting;
  }

  /** Moves held mail to the queue of the mailbox its client now resolves to; returns how many moved. */
  async releaseHeld(mailboxFor: (job: MessageJob) => string | null): Promise<number> {
    const held = this.queue(null);
    let moved = 0;
    for (const job of await held.getJobs(["waiting", "delayed", "prioritized"])) {
      const mailbox = mailboxFor(job.data);
      if (!mailbox || !job.id) continue;
      await this.queue(mailbox).add("deliver", { ...job.data, mailbox }, this.addOptions(job.data));
      await job.remove();
      this.wake(mailbox);
      moved++;
    }
    return moved;
  }

  async readBody(id: string): Promise<Buffer | null> {
    return this.redis.getBuffer(this.bodyKey(id));
  }

  /**
   * Deletes a message's body. `via`: the connection to use instead of the spool's own, which fails at once
   * while Redis is away (an SMTP client must get its 451 without waiting). After the upstream's 250 the
   * delivery must wait for Redis instead: a removal that failed left the body for a second delivery.
   */
  async removeBody(id: string, via: Redis = this.redis): Promise<void> {
    await via.del(this.bodyKey(id));
  }

  async close(): Promise<void> {
    await this.wakesSent;
    const queues = [...this.queues.values()].flatMap((byName) => [...byName.values()]);
    await Promise.all(queues.map((q) => q.close().catch(() => {})));
    this.queues.clear();
  }
}

/** Streams a body into Redis in chunks (bounded memory for 35 MB scans), with a TTL until committed. */
export class BodyWriter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private started = false;
  size = 0;

  constructor(
    private readonly spool: Spool,
    private readonly redis: Redis,
    readonly id: string,
  ) {}

  async write(chunk: Buffer): Promise<void> {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    this.size += chunk.length;
    if (this.pendingBytes >= FLUSH_BYTES) await this.flush();
  }

  /** Writes what is buffered; call before Spool.commit(). */
  async flush(): Promise<void> {
    const data = this.pending.length === 1 ? (this.pending[0] as Buffer) : Buffer.concat(this.pending);
    this.pending = [];
    this.pendingBytes = 0;
    const key = this.spool.bodyKey(this.id);
    if (!this.started) {
      this.started = true;
      await this.redis.set(key, data, "PX", UNCOMMITTED_BODY_TTL_MS);
    } else if (data.length) {
      await this.redis.append(key, data);
    }
  }

  /** Drops what was written (best effort: the TTL removes it otherwise). */
  async abort(): Promise<void> {
    this.pending = [];
    if (this.started) await this.redis.del(this.spool.bodyKey(this.id)).catch(() => {});
  }
}
