import { setTimeout as sleep } from "node:timers/promises";
import { createRedisBackend, DelayedError, type Job, UnrecoverableError, Worker } from "bullmq";
import type { Redis } from "ioredis";
import { TokenRefused, TokenUnavailable } from "../auth/token-errors.js";
import type { UpstreamCredentials } from "../auth/upstream-credentials.js";
import type { Limits } from "../config/schema.js";
import type { ConnectionLeases } from "../limits/connection-leases.js";
import type {
  BudgetDecision,
  BudgetRequest,
  DeliveryStart,
  MailboxBudget,
} from "../limits/mailbox-budget.js";
import type { Logger } from "../logger.js";
import { type RelayEvents, replyClassOf } from "../relay-events.js";
import type { LastBatch, MessageJob } from "../spool/message-job.js";
import type { Spool } from "../spool/spool.js";
import { type Classification, classifyReply, enhancedCodeOf, type ReplyAction } from "./classify-reply.js";
import { ConnectionPool, NoConnectionSlot } from "./connection-pool.js";
import type { DeliveryLane, DeliveryScheduler, TurnCalls } from "./delivery-scheduler.js";
import type { MailboxPauses } from "./mailbox-pauses.js";
import { type RetryConfig, retryDelay } from "./retry-schedule.js";
import {
  openUpstream,
  type SendResult,
  type UpstreamConfig,
  type UpstreamConnection,
  type UpstreamError,
  type UpstreamTlsOptions,
} from "./upstream-connection.js";

export interface MailboxDispatcherOptions {
  mailbox: string;
  /** A password, or OAuth2 tokens (see src/auth). */
  credentials: UpstreamCredentials;
  limits: Limits;
  upstream: UpstreamConfig;
  /** TLS settings of `upstream`, built once per upstream (upstreamTlsOptions) and shared by its mailboxes. */
  tls: UpstreamTlsOptions;
  retry: RetryConfig;
  hostname: string;
  spool: Spool;
  leases: ConnectionLeases;
  /** Lease lifetime, ms; leases are renewed every third of it. */
  leaseTtlMs: number;
  budget: MailboxBudget;
  pauses: MailboxPauses;
  /** A connection for BullMQ, shared by every mailbox (no blocking reads are made on it). */
  connection: Redis;
  /** Gives this mailbox's queue its turns, shared by every mailbox of the process. */
  scheduler: DeliveryScheduler;
  logger: Logger;
  /** Where deliveries, retries and failures are announced (metrics, failure notices). */
  events?: RelayEvents;
}

/** The job's queue lock lapsed before its message was sent: it is left to the worker that holds it now. */
class LockLost extends Error {
  constructor() {
    super("queue lock lost before sending: the message is left to the worker that holds the job now");
    this.name = "LockLost";
  }
}

/** The mailbox was stopped (see stoppedAt) while this message waited for a connection: it was not sent. */
class MailboxStopped extends Error {
  constructor() {
    super("the mailbox was stopped (a reply to another message, a refused AUTH, an operator's pause)");
    this.name = "MailboxStopped";
  }
}

/** Recipients the upstream deferred (4xx at RCPT): the message is retried for them only. */
class RecipientsDeferred extends Error {
  constructor(readonly replies: string[]) {
    super(`recipients deferred by the upstream: ${replies.join("; ")}`);
    this.name = "RecipientsDeferred";
  }
}

/** One run of a job's delivery, as its batches go: what the stages share. */
interface DeliveryRun {
  job: Job<MessageJob>;
  token: string | undefined;
  /** When this run began (epoch ms): a lock lost or a mailbox stopped since then stops its sending. */
  startedAt: number;
  /** The fields of the job's log lines. */
  log: () => Record<string, unknown>;
  /** The message, read with the first batch's start. */
  body?: Buffer;
  /** Replies to recipients deferred (4xx at RCPT) in this run, for its log line. */
  deferred: string[];
  batches: number;
  lastReply?: string;
  /** The last batch's outcome, once nothing is left for a retry: the job's return value. */
  last?: LastBatch;
}

/**
 * An idle connection is handed to another process that waits for a slot once it has been idle this long (ms):
 * long enough that this process's own next message would have taken it (50 ms doubled the handshakes at 50
 * mailboxes with 2 relays; 250 ms: bench/results/scheduler-2026-11-25/delivery-yield-250ms.json).
 */
const SLOT_YIELD_IDLE_MS = 250;

/**
 * How long a delivered batch's bookkeeping (reply log, job data, next job) waits after the upstream's 250, ms:
 * the time the connection's next message needs to go out (250 -> end of DATA, 2-3 ms on loopback). One relay,
 * one mailbox: 2.6-2.9 ms p50 from a 250 to the next end of DATA without it, 2.0 with it (docs/performance.md).
 */
const BOOKKEEPING_DELAY_MS = 5;

/**
 * A job whose submission is not yet committed is looked at again after this long (ms), for up to
 * UNCOMMITTED_KEEP_MS, before it goes back to the queue: a commit takes a round trip or two, and with replicas
 * up to two WAITs.
 */
const UNCOMMITTED_RECHECK_MS = 20;
const UNCOMMITTED_KEEP_MS = 1_000;

/** A process that was refused a slot this recently (ms) takes on only as many jobs as its connections serve. */
const SLOT_STARVED_MS = 1_000;

/** A reply as the job's log keeps it: `<ISO time> <reply>`. */
const stamped = (reply: string) => `${new Date().toISOString()} ${reply}`;

/** A later batch's budget take as a DeliveryStart (the body is the one read with the first batch's). */
const takenOrRefused = (decision: BudgetDecision, body: Buffer): DeliveryStart =>
  decision.ok ? { kind: "taken", body } : { kind: "refused", decision };

/** A verdict after which the connection takes no more messages (a 432, an authentication refused). */
const condemnsConnection = (action: ReplyAction) =>
  action === "reduce-connections" || action === "pause-auth";

/** A verdict after which the mailbox's other messages wait (its quota spent upstream, an authentication refused). */
const stopsMailbox = (action: ReplyAction) => action === "park-quota" || action === "pause-auth";

const jitter = (ms: number) => Math.round(ms * (0.75 + Math.random() * 0.5));

/**
 * A BullMQ Worker driven by the DeliveryScheduler instead of its own loop: it takes jobs without blocking, so it
 * needs no connection of its own (the default Worker keeps one blocked in BZPOPMIN per queue).
 */
class LaneWorker extends Worker<MessageJob> {
  /** Locks the next ready job; when none is ready, says when the earliest delayed one is due (0: none). */
  async take(token: string): Promise<{ job?: Job<MessageJob>; dueAt: number }> {
    const [jobData, id, , delayUntil] = await this.backend.moveToActive(token, this.opts.name);
    if (!jobData || !id) return { dueAt: Number(delayUntil) || 0 };
    return { job: await this.nextJobFromJobData(jobData, String(id), token), dueAt: 0 };
  }

  /** Renews the locks of the jobs being delivered (the Worker's own loop would start this). */
  startLockRenewal(): void {
    this.lockManager.start();
  }
}

/**
 * Takes one mailbox's queued mail and delivers it upstream inside the mailbox's limits: a cluster-wide lease per
 * open connection, sliding-window budgets per message, batches of at most recipientsPerMessage, and the reply
 * table's verdict on every failure. Waiting (budget spent, no free slot, mailbox paused) never spends an attempt.
 */
export class MailboxDispatcher implements DeliveryLane {
  private readonly worker: LaneWorker;
  private readonly pool: ConnectionPool;
  private readonly logger: Logger;
  /**
   * Interactive jobs of this process being delivered, from the moment they are taken: one taken from the queue
   * is no longer counted there, and reads its body before it asks for a connection; bulk mail must not take the
   * last connection meanwhile (counting them only while they waited for one let bulk mail slip in).
   */
  private interactiveInProgress = 0;
  /**
   * Jobs on their way here: being taken from the queue, or taken and their delivery not yet started (until then
   * neither the queue's count nor interactiveInProgress shows an interactive one). `arrivals` holds the call that
   * ends the wait of each job taken, until its delivery starts.
   */
  private readonly arriving = new Set<Promise<void>>();
  private readonly arrivals = new WeakMap<Job<MessageJob>, () => void>();
  /**
   * Jobs being delivered here: how many runs of each (after a lapsed lock, a job can have two, the old one and
   * the new one), and when BullMQ last could not renew its queue lock (0: never). A lock that lapsed (Redis was
   * away, or the event loop stalled) lets the stalled-job check give the job to another run, which will send
   * it. Forgotten with the job's last run here: a newer run that ended must not clear it while the old one still
   * waits for a connection (that one would send).
   */
  private readonly inProgress = new Map<string, { runs: number; lockLostAt: number }>();
  /**
   * When a reply last stopped the whole mailbox (its quota spent upstream, its authentication refused; 0: never),
   * in this process or, as soon as its announcement arrives, in another. A message whose delivery started
   * before then is not sent: Exchange would answer it the same way, and it blocks a mailbox that keeps repeating
   * an error. It waits for the mailbox's pause instead.
   */
  private stoppedAt = 0;
  /** Turns in progress (close() waits for them). */
  private readonly turns = new Set<Promise<unknown>>();
  private closing = false;
  readonly name: string;

  constructor(private readonly options: MailboxDispatcherOptions) {
    const { mailbox, limits, upstream, spool, retry, leases } = options;
    this.logger = options.logger.child({ mailbox });
    this.pool = new ConnectionPool({
      maxConnections: limits.connections,
      idleTimeout: upstream.idleTimeout,
      maxMessagesPerConnection: upstream.maxMessagesPerConnection,
      leaseWaitMs: 5_000,
      logger: this.logger,
      lease: {
        acquire: () => leases.acquire(mailbox, limits.connections),
        renew: (id) => leases.renew(mailbox, id),
        release: (id) => leases.release(mailbox, id),
        renewEveryMs: Math.max(100, Math.floor(options.leaseTtlMs / 3)),
      },
      // a refused AUTH stops the mailbox as a reply to a message does
      open: () =>
        openUpstream(upstream, options.tls, options.credentials, options.hostname).catch(
          (err: UpstreamError) => {
            this.noteIfStops(this.verdictOf(err).action);
            throw err;
          },
        ),
      // every slot is taken: processes that hold one idle hand it over (slotWanted) instead of after idleTimeout
      onStarved: () => spool.wantSlot(mailbox),
    });
    this.name = spool.queueName(mailbox);
    this.worker = new LaneWorker(
      this.name,
      (job, token) => this.deliver(job, token),
      {
        connection: options.connection,
        prefix: spool.prefix,
        autorun: false,
        // a relay that dies frees its connection slots after leaseTtl; its in-flight messages go back to the queue then too
        lockDuration: options.leaseTtlMs,
        // a message whose lock lapsed goes back to the queue at the second check after that: within leaseTtl x 5/3
        // of the relay's death, not up to 3 x leaseTtl
        stalledInterval: Math.max(1_000, Math.floor(options.leaseTtlMs / 3)),
        // acknowledged mail is never failed for having been in flight in relays that died (BullMQ's default
        // fails it at the second stall); retry.maxAge still ends it
        maxStalledCount: 1_000,
        settings: {
          backoffStrategy: (attemptsMade: number) => {
            const delay = retryDelay(retry, attemptsMade);
            options.scheduler.wakeAt(this.name, Date.now() + delay);
            return delay;
          },
        },
      },
      // the scheduler takes jobs without blocking: no blocking connection per mailbox
      (name, opts) => createRedisBackend(name, opts),
    );
    this.worker.on("error", (err) => this.logger.warn({ err: err.message }, "queue worker error"));
    this.worker.on("stalled", () => options.scheduler.wake(this.name));
    this.worker.on("lockRenewalFailed", (ids: string[]) => {
      for (const id of ids) {
        const state = this.inProgress.get(id);
        if (state) state.lockLostAt = Date.now();
      }
    });
    this.worker.startLockRenewal();
    this.worker.startStalledCheckTimer().catch((err: Error) => {
      this.logger.warn({ err: err.message }, "stalled job check failed to start");
    });
    options.scheduler.add(this);
  }

  /** One turn of the scheduler: deliver the next ready job, and the ones after it while `more()` allows. */
  async turn(token: string, calls: TurnCalls): Promise<{ dueAt: number }> {
    if (this.closing) return { dueAt: 0 };
    // tracked from the start: a job locked while close() begins is still delivered (or retried) before the worker stops
    const run = this.runTurn(token, calls);
    this.turns.add(run);
    try {
      return await run;
    } finally {
      this.turns.delete(run);
    }
  }

  private async runTurn(token: string, calls: TurnCalls): Promise<{ dueAt: number }> {
    // a job on its way here (being taken from the queue, or taken and its delivery not yet started) is in
    // neither the queue's count of interactive mail nor this process's: interactiveWaiting() waits for it
    let arrival: (() => void) | undefined = this.expectArrival();
    try {
      const taken = await this.worker.take(token);
      if (!taken.job) return { dueAt: taken.dueAt };
      calls.found();
      let job: Job<MessageJob> | undefined = taken.job;
      while (job) {
        this.arrivals.set(job, arrival ?? (() => {}));
        arrival = undefined;
        // the next job comes with this one's completion, when more() allows: on its way from then
        const fetchNext = () => {
          if (!arrival && !this.closing && calls.more()) arrival = this.expectArrival();
          return arrival !== undefined;
        };
        const current: Job<MessageJob> = job;
        try {
          job = (await this.worker.processJob(current, token, fetchNext)) ?? undefined;
        } finally {
          // not delivered at all (BullMQ failed it before its processor): it has arrived all the same
          this.arrived(current);
        }
      }
      return { dueAt: 0 };
    } finally {
      arrival?.();
    }
  }

  /** Counts a job on its way here until the returned call. */
  private expectArrival(): () => void {
    let arrived = () => {};
    const promise = new Promise<void>((resolve) => {
      arrived = () => {
        this.arriving.delete(promise);
        resolve();
      };
    });
    this.arriving.add(promise);
    return arrived;
  }

  /** The job's delivery has started here (its lane is counted) or will not: it is no longer on its way. */
  private arrived(job: Job<MessageJob>): void {
    this.arrivals.get(job)?.();
    this.arrivals.delete(job);
  }

  /**
   * Deliveries this process takes on for the mailbox at once: twice its connections, so that while one job
   * does its Redis bookkeeping the next already uses the connection. While other processes hold the
   * mailbox's other slots, twice the connections this process has (at least one job, to ask for a slot):
   * the rest of the queue is left to the processes that hold them, instead of waiting here behind too few
   * connections (and at the end of a backlog, for their idle connections to be handed over).
   */
  get capacity(): number {
    const full = this.options.limits.connections * 2;
    if (!this.pool.starvedWithin(SLOT_STARVED_MS)) return full;
    return Math.min(full, Math.max(1, 2 * this.pool.size));
  }

  slotWanted(): void {
    const closed = this.pool.yieldIdle(SLOT_YIELD_IDLE_MS);
    if (closed)
      this.logger.debug({ closed }, "idle upstream connections closed: another process waits for a slot");
  }

  stopped(): void {
    this.stoppedAt = Date.now();
    this.logger.debug(
      "mailbox stopped (a reply, here or in another process, or an operator's pause): messages started before now are not sent",
    );
  }

  get mailbox(): string {
    return this.options.mailbox;
  }

  /** Upstream connections this process holds open for the mailbox. */
  get openConnections(): number {
    return this.pool.size;
  }

  /** Keeps an upstream reply in the job's log (shown by `sluice queue show`). */
  private async recordReply(job: Job<MessageJob>, reply: string): Promise<void> {
    await job.log(stamped(reply)).catch(() => {});
  }

  /** Puts the job back to wait `delayMs` without spending an attempt. */
  private async hold(job: Job<MessageJob>, token: string | undefined, delayMs: number): Promise<never> {
    const at = Date.now() + Math.max(0, delayMs);
    await job.moveToDelayed(at, token);
    this.options.scheduler.wakeAt(this.name, at);
    throw new DelayedError();
  }

  /** Delivers the job's remaining recipients; the last batch's outcome is the job's return value. */
  private async deliver(job: Job<MessageJob>, token?: string): Promise<LastBatch | undefined> {
    const startedAt = Date.now();
    const interactive = job.data.priority !== "bulk";
    if (interactive) this.interactiveInProgress++;
    this.arrived(job);
    const id = job.id ?? "";
    const state = this.inProgress.get(id) ?? { runs: 0, lockLostAt: 0 };
    state.runs++;
    this.inProgress.set(id, state);
    try {
      return await this.deliverJob(job, token, startedAt);
    } finally {
      if (interactive) this.interactiveInProgress--;
      if (--state.runs === 0) this.inProgress.delete(id);
    }
  }

  /** The job's lock was found lost since this run of it started: another worker may be sending it. */
  private lostLock(job: Job<MessageJob>, startedAt: number): boolean {
    return (this.inProgress.get(job.id ?? "")?.lockLostAt ?? 0) >= startedAt;
  }

  /**
   * Leaves a job whose queue lock lapsed (while it waited for Redis to come back, or a stalled event loop) to
   * the queue or the worker that holds it now, which will send it: sending it here as well would send it twice.
   */
  private leaveLockLost(line: Record<string, unknown>): never {
    const err = new LockLost();
    this.logger.warn({ ...line, event: "deferred" }, err.message);
    throw err;
  }

  /**
   * The job's delivery, batch by batch (each: start -> send -> record), then its outcome. Every way of waiting
   * or failing throws (hold, retry, fail); a job dropped as already delivered returns undefined.
   */
  private async deliverJob(
    job: Job<MessageJob>,
    token: string | undefined,
    startedAt: number,
  ): Promise<LastBatch | undefined> {
    const { retry, mailbox, limits } = this.options;
    // the mailbox is in every line already: this.logger is a child logger bound to it
    const log = () => ({
      id: job.data.id,
      messageId: job.data.messageId,
      client: job.data.client,
      attempt: job.attemptsMade + 1,
    });
    if (Date.now() - (job.data.retriedAt ?? job.data.receivedAt) > retry.maxAge) {
      this.logger.error({ ...log(), event: "failed" }, "message expired: not delivered within retry.maxAge");
      const reply = `expired: not delivered within ${Math.round(retry.maxAge / 3600_000)} h`;
      this.options.events?.emit("undeliverable", {
        mailbox,
        job: job.data,
        recipients: job.data.recipients.map((recipient) => ({ recipient, reply })),
        failed: true,
      });
      throw new UnrecoverableError(reply);
    }
    const run: DeliveryRun = { job, token, startedAt, log, deferred: [], batches: 0 };
    while (job.data.recipients.length) {
      // asked again before every batch: interactive mail queued while a newsletter's batches go out gets the
      // minute's last unit
      const budgetLimits = await this.laneLimits(job);
      if (!budgetLimits) {
        this.logger.debug(
          { ...log(), event: "deferred" },
          "bulk message steps aside: interactive mail waits",
        );
        return this.hold(job, token, jitter(250));
      }
      const batchSize = Math.min(
        job.data.batchSize ?? limits.recipientsPerMessage,
        limits.recipientsPerMessage,
      );
      const batch = job.data.recipients.slice(0, batchSize);
      const takeId = `${job.data.id}:${job.data.delivered.length + job.data.refused.length}:${Date.now()}`;
      run.body = await this.startBatch(run, { id: takeId, recipients: batch.length }, budgetLimits);
      if (!run.body) return undefined;
      await this.sendBatch(run, run.body, batch, takeId);
    }
    return this.finishJob(run);
  }

  /**
   * Takes the batch's budget, and with the first batch checks the mailbox's pause and the job's lock and reads
   * the body (one round trip). Returns the body; undefined: the job is to be dropped (its body is gone). Throws
   * to hold the job while the mailbox is paused, its budget spent or its submission not yet committed.
   */
  private async startBatch(
    run: DeliveryRun,
    request: BudgetRequest,
    budgetLimits: Limits,
  ): Promise<Buffer | undefined> {
    const { spool, mailbox, limits, budget, pauses } = this.options;
    const { job, token, startedAt, log, body } = run;
    const startOf = async (): Promise<DeliveryStart> =>
      body
        ? takenOrRefused(await budget.take(mailbox, request, budgetLimits), body)
        : await budget.startDelivery(mailbox, request, budgetLimits, {
            pause: pauses.keyOf(mailbox),
            body: spool.bodyKey(job.data.id),
            ...(token && job.id ? { lock: { key: `${this.worker.toKey(job.id)}:lock`, token } } : {}),
          });
    let start = await startOf();
    // a body found before its submission's commit ends (a round trip or two, more with replicas) is looked at
    // again in a moment, the job kept: put back in the queue, an interactive message would lose its place
    // ahead of bulk mail
    const keepUntil = Date.now() + UNCOMMITTED_KEEP_MS;
    while (start.kind === "uncommitted" && Date.now() < keepUntil) {
      await sleep(UNCOMMITTED_RECHECK_MS);
      start = await startOf();
    }
    if (start.kind === "lock-lost" || this.lostLock(job, startedAt)) {
      if (start.kind === "taken") await budget.refund(mailbox, request.id).catch(() => {});
      this.leaveLockLost(log());
    }
    switch (start.kind) {
      case "taken":
        return start.body;
      case "paused": {
        const pause = pauses.parse(start.pause);
        this.logger.debug(
          { ...log(), event: "deferred", pause: pause.kind },
          "mailbox paused: message waits",
        );
        // the mailbox's other messages would wait as well: none taken until the pause ends (or a wake says it was lifted)
        this.options.scheduler.backOff(this.name, pause.until);
        return this.hold(job, token, pause.until - Date.now() + jitter(1_000));
      }
      case "no-body":
        this.logger.error(
          log(),
          "message body missing: an earlier run of this job already delivered it (its queue lock was lost), or the submission was never acknowledged; dropping the job",
        );
        return undefined;
      case "uncommitted": {
        // still not committed: a commit that failed (its client got 451 and may send the message again) leaves
        // a body that expires, and the job is dropped then (no-body). It waits in the queue, longer the older
        // it is, until then
        const waitMs = Math.min(
          Math.max(UNCOMMITTED_KEEP_MS, Date.now() - job.timestamp),
          start.expiresInMs + UNCOMMITTED_RECHECK_MS,
        );
        this.logger.debug({ ...log(), waitMs }, "message not yet committed by its submission: it waits");
        return this.hold(job, token, waitMs);
      }
      case "refused": {
        const { decision } = start;
        if (decision.retryInMs < 0) {
          throw new UnrecoverableError(
            `a batch of ${request.recipients} recipients can never fit ${decision.budget} = ${decision.limit}: raise the limit or lower recipientsPerMessage`,
          );
        }
        this.logger.info(
          {
            ...log(),
            event: "deferred",
            budget: decision.budget,
            used: decision.used,
            limit: decision.limit,
            waitMs: decision.retryInMs,
          },
          `mailbox budget ${decision.budget} spent: message waits until the window frees`,
        );
        // the mailbox's other messages would be held as well: none taken until the window frees (interactive
        // first then, by priority) — unless this is bulk mail held short of the limit for interactive mail,
        // which comes next by priority and may take the unit left. Bulk wakes later than interactive mail held
        // for the same window
        if (budgetLimits === limits)
          this.options.scheduler.backOff(this.name, Date.now() + decision.retryInMs + 50);
        return this.hold(job, token, decision.retryInMs + 50 + (job.data.priority === "bulk" ? 1_000 : 0));
      }
    }
  }

  /** Sends the batch on a connection of the pool and records its outcome; a failure throws (hold, retry, fail). */
  private async sendBatch(run: DeliveryRun, body: Buffer, batch: string[], takeId: string): Promise<void> {
    const { job, startedAt, log } = run;
    let connection: UpstreamConnection | undefined;
    /** The connection, given back to the pool once the message was written (see send's onWritten). */
    let released: UpstreamConnection | undefined;
    let healthy = false;
    try {
      connection = await this.acquireConnection(job, startedAt);
      // waiting for a connection can take seconds (all slots busy, Redis away): a job whose lock lapsed
      // meanwhile is another worker's to send
      if (this.lostLock(job, startedAt)) this.leaveLockLost(log());
      if (this.stoppedSince(startedAt)) throw new MailboxStopped();
      const sending = connection;
      // the connection goes back as soon as the message is written: the next message's envelope follows at
      // once (PIPELINING) and is answered right after this message's reply, without a round trip of its own.
      // A reply that condemns the connection closes it then (below)
      const result = await sending.send(this.options.mailbox, batch, body, {
        onWritten: () => {
          connection = undefined;
          released = sending;
          this.pool.release(sending, true);
        },
        // asked again when the upstream takes the data, which for a message pipelined behind another is that
        // one's reply time later
        mayWrite: () => !this.lostLock(job, startedAt) && !this.stoppedSince(startedAt),
        // a reply that stops the mailbox or condemns the connection stops a message already sent behind this
        // one too, before its data: its 354 is handled in the same turn as this reply
        onFailed: (err) => {
          const { action } = this.verdictOf(err);
          this.noteIfStops(action);
          if (condemnsConnection(action)) sending.close();
        },
      });
      healthy = true;
      // an upstream without PIPELINING: the connection goes back now, before the bookkeeping below
      if (connection) this.pool.release(connection, true);
      connection = undefined;
      await this.recordBatch(run, batch, result);
    } catch (err) {
      await this.options.budget.refund(this.options.mailbox, takeId).catch(() => {});
      healthy = this.reusableAfter(err);
      await this.sendFailed(run, batch.length, err);
    } finally {
      if (connection) this.pool.release(connection, healthy);
      // given back when the message was written, and condemned by its reply (421, 432): no more messages on it
      else if (released && !healthy) this.pool.condemn(released);
    }
  }

  /** Whether the connection may take more messages after `err` (a reply about this message only). */
  private reusableAfter(err: unknown): boolean {
    // nothing was sent: the connection is as good as before
    if (err instanceof LockLost || err instanceof MailboxStopped) return true;
    const upstreamError = err as UpstreamError;
    // withdrawn (dropped before its data), or lost behind another message's reply
    if (upstreamError.code === "EWITHDRAWN" || upstreamError.behindAnother) return false;
    // 421 and 432 condemn the connection itself
    return (
      upstreamError.responseCode !== undefined &&
      upstreamError.responseCode !== 421 &&
      upstreamError.code !== "ECONNECTION" &&
      !condemnsConnection(this.verdictOf(upstreamError).action)
    );
  }

  /** Records a batch the upstream answered: its recipients' outcomes in the job, its replies in the job's log. */
  private async recordBatch(run: DeliveryRun, batch: string[], result: SendResult): Promise<void> {
    const { job, log } = run;
    // the bookkeeping waits a moment, so that it does not hold up this event loop while the connection's
    // next message goes out (the upstream then takes its time to answer: there is room for it there)
    await sleep(BOOKKEEPING_DELAY_MS);
    const refusedNow = result.rejected
      .filter((r) => (r.responseCode ?? 400) >= 500)
      .map((r) => ({ recipient: r.recipient, reply: r.response }));
    // 452 4.5.3 at RCPT: the upstream takes fewer recipients per message; they go in the next batch
    const tooMany = result.rejected.filter(
      (r) => r.responseCode === 452 && enhancedCodeOf(r.response) === "4.5.3",
    );
    const deferredNow = result.rejected.filter((r) => (r.responseCode ?? 400) < 500 && !tooMany.includes(r));
    run.deferred.push(...deferredNow.map((r) => `${r.recipient}: ${r.response}`));
    if (tooMany.length) {
      this.logger.warn(
        { ...log(), batchSize: result.accepted.length, reply: tooMany[0]?.response },
        "upstream takes fewer recipients per message: the rest go in further batches",
      );
    }
    const data: MessageJob = {
      ...job.data,
      batchSize: tooMany.length ? Math.max(1, result.accepted.length) : job.data.batchSize,
      recipients: [...tooMany.map((r) => r.recipient), ...job.data.recipients.slice(batch.length)],
      delivered: [...job.data.delivered, ...result.accepted],
      refused: [...job.data.refused, ...refusedNow],
      deferred: [...(job.data.deferred ?? []), ...deferredNow.map((r) => r.recipient)],
    };
    const replies = [result.response, ...result.rejected.map((r) => `${r.recipient}: ${r.response}`)];
    if (data.recipients.length === 0 && data.deferred?.length === 0) {
      // the message's last batch, nothing left for a retry: its outcome is written with the job's
      // completion (the return value), not by updates of its own. Should this process die before that, the
      // body is gone already: the job, run again, is dropped as delivered (never sent twice)
      job.data = data;
      run.last = { accepted: result.accepted, refused: refusedNow, replies: replies.map(stamped) };
      // on the worker connection, which waits for Redis when it is away (the spool's fails at once), and
      // without waiting for its answer: BullMQ's completion goes over the same connection right after it, and
      // Redis runs the two in that order (one round trip, not two). Should the removal fail (the connection
      // closed for good), the completion, queued behind it, fails too and the job is run again
      this.options.spool.removeBody(job.data.id, this.options.connection).catch((err: Error) => {
        this.logger.warn({ ...log(), err: err.message }, "could not remove a delivered message's body");
      });
    } else {
      await Promise.all([...replies.map((reply) => this.recordReply(job, reply)), job.updateData(data)]);
    }
    run.lastReply = result.response;
    // a message that goes in one batch gets one line (delivered, with the reply); one in several, or with
    // recipients left for a retry, one per batch as well
    if (++run.batches > 1 || job.data.recipients.length || deferredNow.length) {
      this.logger.info(
        {
          ...log(),
          event: "batch-delivered",
          reply: result.response,
          accepted: result.accepted.length,
          refused: refusedNow.length,
          deferred: deferredNow.length,
        },
        "upstream accepted the batch",
      );
    }
  }

  /** What a batch's failure to go out means for the job: always throws (hold, retry or fail). */
  private async sendFailed(run: DeliveryRun, batchLength: number, err: unknown): Promise<never> {
    const { job, token, startedAt, log } = run;
    if (err instanceof LockLost) throw err;
    const notSent = err as UpstreamError;
    if (err instanceof MailboxStopped || notSent.code === "EWITHDRAWN") {
      // nothing of the message was written (a withdrawn one: the connection was dropped before its data)
      if (this.lostLock(job, startedAt)) this.leaveLockLost(log());
      if (this.stoppedSince(startedAt)) {
        // a moment for the reply's pause to reach Redis: the message then waits for it there
        this.logger.debug(log(), "the reply to an earlier message stopped the mailbox: message waits");
        return this.hold(job, token, jitter(1_000));
      }
      this.logger.debug(log(), "connection closed before the message's turn: message waits");
      return this.hold(job, token, 0);
    }
    if (notSent.behindAnother) {
      this.logger.debug(
        { ...log(), err: notSent.message },
        "connection lost before the message's turn (the one before it was waiting for its reply): message waits",
      );
      return this.hold(job, token, jitter(250));
    }
    if (err instanceof NoConnectionSlot) {
      this.logger.debug(log(), "no free upstream connection slot: message waits");
      if (!err.givenUp) return this.hold(job, token, jitter(500));
      // given up for the processes that hold the slots: ready for them at once, and they are told; this
      // process, if it holds no connection, leaves the mailbox to them for a moment
      if (err.backOffMs > 0) this.options.scheduler.backOff(this.name, Date.now() + err.backOffMs);
      return this.hold(job, token, 0).finally(() => this.options.spool.givenBack(this.options.mailbox));
    }
    if (err instanceof TokenUnavailable) {
      this.logger.warn(
        { ...log(), event: "deferred", err: err.message, waitMs: err.retryInMs },
        "no OAuth2 token (token endpoint down or slow): message waits",
      );
      return this.hold(job, token, err.retryInMs + jitter(250));
    }
    if (err instanceof TokenRefused) {
      const refused: Classification = {
        action: "pause-auth",
        category: "oauth2-token",
        reply: err.message,
        hint: err.hint,
      };
      return this.onFailure(job, token, batchLength, refused, log());
    }
    const verdict = this.verdictOf(notSent);
    await this.recordReply(job, verdict.reply);
    return this.onFailure(job, token, batchLength, verdict, log(), notSent.responseCode);
  }

  /** After the last batch: retries the deferred recipients (throws), or announces and logs the outcome. */
  private async finishJob(run: DeliveryRun): Promise<LastBatch | undefined> {
    const { job, log, deferred, last, lastReply } = run;
    const { mailbox, spool, events } = this.options;
    const remaining = job.data.deferred ?? [];
    if (remaining.length) {
      await job.updateData({ ...job.data, recipients: remaining, deferred: [] });
      this.logger.warn(
        { ...log(), event: "deferred", reply: deferred },
        "some recipients deferred: retrying them later",
      );
      throw new RecipientsDeferred(deferred);
    }
    if (!last) await spool.removeBody(job.data.id, this.options.connection);
    if (job.data.delivered.length) events?.emit("delivered", { mailbox, job: job.data });
    if (job.data.refused.length) {
      events?.emit("undeliverable", {
        mailbox,
        job: job.data,
        recipients: job.data.refused,
        failed: job.data.delivered.length === 0,
      });
    }
    this.logger.info(
      {
        ...log(),
        event: "delivered",
        ...(lastReply ? { reply: lastReply } : {}),
        delivered: job.data.delivered.length,
        refused: job.data.refused.length,
      },
      job.data.refused.length ? "message delivered; some recipients refused" : "message delivered",
    );
    return last;
  }

  /** What the reply table says of an upstream failure, with the credentials' explanation of an auth verdict. */
  private verdictOf(err: UpstreamError): Classification {
    return this.options.credentials.explain(classifyReply(err));
  }

  /** A verdict that stops the mailbox is noted here at once, and in the other processes, whose messages would get it too. */
  private noteIfStops(action: ReplyAction): void {
    if (!stopsMailbox(action)) return;
    this.stopped();
    this.options.spool.mailboxStopped(this.options.mailbox);
  }

  /** A reply stopped the mailbox since `startedAt` (see stoppedAt). */
  private stoppedSince(startedAt: number): boolean {
    return this.stoppedAt >= startedAt;
  }

  /**
   * The budget limits a job may use. Bulk mail leaves the last message of the minute window to interactive
   * mail while any is waiting (and the last connection: acquireConnection): undefined = step aside now.
   */
  private async laneLimits(job: Job<MessageJob>): Promise<Limits | undefined> {
    const { limits } = this.options;
    if (job.data.priority !== "bulk" || !(await this.interactiveWaiting())) return limits;
    if (limits.messagesPerMinute <= 1) return undefined;
    return { ...limits, messagesPerMinute: limits.messagesPerMinute - 1 };
  }

  /** Interactive mail waiting for this mailbox: in the queue, on its way here, or being delivered here. */
  private async interactiveWaiting(): Promise<boolean> {
    if (this.interactiveInProgress > 0) return true;
    // over the worker connection, which waits while Redis is away (the spool's fails at once, and the failure
    // was taken for the upstream's and cost the bulk message an attempt)
    const { spool, mailbox, connection } = this.options;
    if ((await spool.interactiveWaiting(mailbox, connection)) > 0) return true;
    // a job taken from the queue before the count was made is no longer in it, and its delivery here may not
    // have started: BullMQ takes many more steps from the take's reply to the processor than this answer takes
    // to get here. Once the jobs on their way now have arrived, an interactive one among them is counted here
    await Promise.all([...this.arriving]);
    return this.interactiveInProgress > 0;
  }

  /**
   * A connection; bulk mail may not bring the mailbox's last one into use while interactive mail waits, and never
   * goes behind another message's reply (it would be committed ahead of interactive mail that comes later). While
   * other processes hold the mailbox's other slots, a job that this process's connections cannot serve soon
   * gives up at once (NoConnectionSlot.givenUp) and goes back to the queue for them.
   */
  private async acquireConnection(job: Job<MessageJob>, startedAt: number): Promise<UpstreamConnection> {
    const { connections } = this.options.limits;
    // a mailbox stopped while the message waits (a refused AUTH on a connection being opened for another
    // message): no connection taken, none opened, so no further AUTH is refused the same way
    const stopped = () => (this.stoppedSince(startedAt) ? new MailboxStopped() : undefined);
    if (job.data.priority === "bulk") {
      return this.pool.acquire({
        behindReply: false,
        maxInUse: async () =>
          connections > 1 && (await this.interactiveWaiting()) ? connections - 1 : connections,
        stopped,
      });
    }
    return this.pool.acquire({ stopped });
  }

  /** Acts on the reply table's verdict; always throws (hold, retry or fail). */
  private async onFailure(
    job: Job<MessageJob>,
    token: string | undefined,
    batchLength: number,
    verdict: Classification,
    log: Record<string, unknown>,
    code?: number,
  ): Promise<never> {
    const { mailbox, limits, leases, pauses, retry, events } = this.options;
    const context = { ...log, reply: verdict.reply, category: verdict.category };
    if (verdict.action !== "fail") {
      events?.emit("retry", { mailbox, replyClass: replyClassOf(code), category: verdict.category, code });
    }
    switch (verdict.action) {
      case "reduce-connections": {
        const effective = await leases.reduce(mailbox, limits.connections);
        this.logger.warn(
          { ...context, event: "deferred", connections: effective },
          "432 from upstream: fewer connections for a cool-down",
        );
        return this.hold(job, token, jitter(1_000));
      }
      case "split-batch": {
        const batchSize = Math.max(1, Math.floor(batchLength / 2));
        await job.updateData({ ...job.data, batchSize });
        this.logger.warn(
          { ...context, event: "deferred", batchSize },
          "upstream wants fewer recipients per message: resending in smaller batches",
        );
        return this.hold(job, token, 0);
      }
      case "park-quota": {
        const parkMs = 3600_000;
        if (await pauses.pause(mailbox, "quota", verdict.reply, parkMs)) {
          this.logger.error(
            { ...context, event: "paused", hint: verdict.hint, forMs: parkMs },
            "mailbox parked: daily quota spent upstream",
          );
        }
        return this.hold(job, token, parkMs);
      }
      case "pause-auth": {
        const pauseMs = retry.authRetryInterval;
        if (await pauses.pause(mailbox, "auth", `${verdict.reply} — ${verdict.hint ?? ""}`, pauseMs)) {
          this.logger.error(
            { ...context, event: "paused", hint: verdict.hint, forMs: pauseMs },
            "mailbox paused: upstream authentication failed",
          );
        }
        return this.hold(job, token, pauseMs + jitter(1_000));
      }
      case "fail":
        this.logger.error({ ...context, event: "failed", hint: verdict.hint }, "message failed permanently");
        events?.emit("undeliverable", {
          mailbox,
          job: job.data,
          recipients: job.data.recipients.map((recipient) => ({ recipient, reply: verdict.reply })),
          failed: job.data.delivered.length === 0,
        });
        throw new UnrecoverableError(verdict.reply);
      default:
        this.logger.warn({ ...context, event: "deferred" }, "delivery deferred");
        throw Object.assign(new Error(verdict.reply), { name: "UpstreamDeferred" });
    }
  }

  /** Lets running deliveries finish (up to graceMs), then stops the worker and closes the connections. */
  async close(graceMs = 30_000): Promise<void> {
    this.closing = true;
    let timer: NodeJS.Timeout | undefined;
    const graceful = Promise.allSettled([...this.turns]).then(() => true);
    const late = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), graceMs);
    });
    const finished = await Promise.race([graceful, late]);
    clearTimeout(timer);
    // unfinished deliveries keep their locks until leaseTtl: then another process (or a restart) takes them
    await this.worker.close(!finished).catch(() => {});
    await this.pool.close();
  }
}
