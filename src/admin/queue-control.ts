import type { Job } from "bullmq";
import type { Redis } from "ioredis";
import type { Config, Limits } from "../config/schema.js";
import { ConnectionLeases } from "../limits/connection-leases.js";
import { estimateDrainMs } from "../limits/drain-estimate.js";
import { MailboxBudget } from "../limits/mailbox-budget.js";
import type { Logger } from "../logger.js";
import { hintForReply } from "../outbound/classify-reply.js";
import { type MailboxPause, MailboxPauses } from "../outbound/mailbox-pauses.js";
import { type LastBatch, type MessageJob, withLastBatch } from "../spool/message-job.js";
import { HELD_QUEUE, type Spool } from "../spool/spool.js";

export interface QueueControlOptions {
  config: Readonly<Config>;
  spool: Spool;
  /** Any connection to the relay's Redis (commands only, nothing blocking). */
  redis: Redis;
  /** Who acts, for the log lines of pause/resume/retry/purge: "cli" or "admin api". */
  actor: string;
  logger?: Logger;
}

/**
 * The states a person asks about; BullMQ's waiting and prioritized are both "queued". "delivered" lists
 * recently delivered messages (kept as `keepDelivered` says: 24 hours by default), newest first.
 */
export type MessageState = "queued" | "delayed" | "active" | "failed" | "delivered";
export const MESSAGE_STATES: readonly MessageState[] = ["queued", "delayed", "active", "failed", "delivered"];
/** What `ls` shows without --state: everything not yet delivered. */
const PENDING_STATES: readonly MessageState[] = ["queued", "delayed", "active", "failed"];

type BullState = "wait" | "prioritized" | "delayed" | "active" | "failed" | "completed";
const BULL_STATES: Record<MessageState, BullState[]> = {
  queued: ["wait", "prioritized"],
  delayed: ["delayed"],
  active: ["active"],
  failed: ["failed"],
  delivered: ["completed"],
};

export interface MailboxStatus {
  mailbox: string;
  queued: number;
  delayed: number;
  active: number;
  failed: number;
  /** ms since the oldest waiting or delayed message was received; null when none waits. */
  oldestAgeMs: number | null;
  limits: Limits;
  messagesLastMinute: number;
  recipientsLastDay: number;
  /** Live connection leases of the mailbox across the cluster. */
  leases: number;
  /**
   * Connections the mailbox may have open now, across the cluster: `limits.connections`, or fewer during the
   * cool-down after a `432 4.3.2` (docs/limits.md).
   */
  connectionLimit: number;
  pause: MailboxPause | null;
  /** Rough time until the backlog is sent at messagesPerMinute; null while paused or for held mail. */
  drainEstimateMs: number | null;
}

export interface MessageSummary {
  id: string;
  /** The mailbox queue, or "held". */
  mailbox: string;
  state: MessageState | "unknown";
  client: string;
  mailFrom: string;
  /** Recipients still to deliver. */
  recipients: string[];
  /** Recipients the upstream accepted. */
  delivered: string[];
  size: number;
  messageId?: string;
  receivedAt: number;
  /** Attempts spent (holds for budgets, pauses and slots spend none). */
  attempts: number;
  /** The reply that failed the message, or the last one that deferred it. */
  lastReply?: string;
  /** What to do about lastReply (the reply table's hint), when the table has one. */
  hint?: string;
  /** When the message failed (ms since epoch). */
  failedAt?: number;
  /** When the message was delivered (ms since epoch). */
  deliveredAt?: number;
}

export interface UpstreamReplyRecord {
  at: string;
  reply: string;
}

export interface MessageDetail extends MessageSummary {
  refused: { recipient: string; reply: string }[];
  remoteAddress: string;
  /** The header section of the stored body (null when the body is gone, e.g. after delivery). */
  headers: string | null;
  /** Every upstream reply with its time, oldest first. */
  replies: UpstreamReplyRecord[];
}

/** The message is not in any queue of this configuration. */
export class MessageNotFound extends Error {
  constructor(readonly id: string) {
    super(`no message ${id} in the queue: check the id with \`sluice queue ls\``);
    this.name = "MessageNotFound";
  }
}

/** The operation does not apply to the message in its current state. */
export class WrongMessageState extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WrongMessageState";
  }
}

export class UnknownMailbox extends Error {
  constructor(mailbox: string, known: string[]) {
    super(`unknown mailbox ${mailbox}: the configured mailboxes are ${known.join(", ") || "(none)"}`);
    this.name = "UnknownMailbox";
  }
}

/** A manual pause lasts until resumed; the key still expires some day so nothing is left forever. */
const MANUAL_PAUSE_MS = 365 * 24 * 3600_000;
const HEADER_BYTES = 64 * 1024;

/**
 * What an operator does to the queue (status, list, show, retry, purge, pause, resume), shared by the
 * `sluice queue` CLI and the admin API. Works on Redis alone: no relay needs to be running.
 */
export class QueueControl {
  private readonly pauses: MailboxPauses;
  private readonly budget: MailboxBudget;
  private readonly leases: ConnectionLeases;

  constructor(private readonly options: QueueControlOptions) {
    const { redis, config } = options;
    this.pauses = new MailboxPauses(redis, config.redisPrefix);
    this.budget = new MailboxBudget(redis, config.redisPrefix);
    this.leases = new ConnectionLeases(redis, config.redisPrefix, { ttlMs: config.leaseTtl });
  }

  get mailboxes(): string[] {
    return Object.keys(this.options.config.mailboxes);
  }

  limitsOf(mailbox: string): Limits {
    const { config } = this.options;
    return { ...config.defaults.limits, ...config.mailboxes[mailbox]?.limits };
  }

  private requireMailbox(mailbox: string): string {
    const lower = mailbox.toLowerCase();
    if (!this.mailboxes.includes(lower)) throw new UnknownMailbox(mailbox, this.mailboxes);
    return lower;
  }

  /** Queue names to look in: the given mailbox, or every mailbox and the held queue. */
  private queueNames(mailbox?: string): string[] {
    if (mailbox) return mailbox === HELD_QUEUE ? [HELD_QUEUE] : [this.requireMailbox(mailbox)];
    return [...this.mailboxes, HELD_QUEUE];
  }

  private queueOf(name: string) {
    return this.options.spool.queue(name === HELD_QUEUE ? null : name);
  }

  async status(): Promise<MailboxStatus[]> {
    const names = [...this.mailboxes];
    const held = await this.queueOf(HELD_QUEUE).getJobCounts("wait", "delayed", "prioritized");
    if (Object.values(held).some((n) => n > 0)) names.push(HELD_QUEUE);
    return Promise.all(names.map((name) => this.mailboxStatus(name)));
  }

  private async mailboxStatus(mailbox: string): Promise<MailboxStatus> {
    const queue = this.queueOf(mailbox);
    const counts = await queue.getJobCounts("wait", "prioritized", "delayed", "active", "failed");
    const isHeld = mailbox === HELD_QUEUE;
    const limits = isHeld ? this.options.config.defaults.limits : this.limitsOf(mailbox);
    const [usage, leases, connectionLimit, pause, oldestAgeMs] = await Promise.all([
      isHeld ? { messagesLastMinute: 0, recipientsLastDay: 0 } : this.budget.usage(mailbox),
      isHeld ? 0 : this.leases.count(mailbox),
      isHeld ? limits.connections : this.leases.effectiveLimit(mailbox, limits.connections),
      isHeld ? null : this.pauses.get(mailbox),
      this.oldestAge(mailbox),
    ]);
    const queued = (counts.wait ?? 0) + (counts.prioritized ?? 0);
    const delayed = counts.delayed ?? 0;
    const active = counts.active ?? 0;
    const backlog = queued + delayed + active;
    return {
      mailbox,
      queued,
      delayed,
      active,
      failed: counts.failed ?? 0,
      oldestAgeMs,
      limits,
      ...usage,
      leases,
      connectionLimit,
      pause,
      drainEstimateMs: pause || isHeld ? null : estimateDrainMs({ queuedMessages: backlog, limits, usage }),
    };
  }

  /** Age of the oldest waiting or delayed message (the first 1000 delayed ones are looked at). */
  private async oldestAge(mailbox: string): Promise<number | null> {
    const queue = this.queueOf(mailbox);
    const [oldestWaiting, delayed] = await Promise.all([
      queue.getJobs(["wait", "prioritized"], 0, 0, true),
      queue.getJobs(["delayed"], 0, 999, true),
    ]);
    const times = [...oldestWaiting, ...delayed]
      .map((job) => (job?.data as MessageJob | undefined)?.receivedAt)
      .filter((t): t is number => typeof t === "number");
    return times.length ? Math.max(0, Date.now() - Math.min(...times)) : null;
  }

  async list(
    filter: { mailbox?: string; state?: MessageState; limit?: number } = {},
  ): Promise<MessageSummary[]> {
    const states = filter.state ? BULL_STATES[filter.state] : PENDING_STATES.flatMap((s) => BULL_STATES[s]);
    const limit = filter.limit ?? 1000;
    const newestFirst = filter.state === "delivered";
    const out: MessageSummary[] = [];
    for (const name of this.queueNames(filter.mailbox)) {
      const jobs = await this.queueOf(name).getJobs(states, 0, limit - 1, !newestFirst);
      for (const job of jobs) {
        if (job) out.push(summarize(job as Job<MessageJob>, name, await stateOf(job as Job<MessageJob>)));
      }
    }
    if (newestFirst) return out.sort((a, b) => (b.deliveredAt ?? 0) - (a.deliveredAt ?? 0)).slice(0, limit);
    return out.sort((a, b) => a.receivedAt - b.receivedAt).slice(0, limit);
  }

  private async find(id: string): Promise<{ job: Job<MessageJob>; mailbox: string }> {
    for (const name of this.queueNames()) {
      const job = await this.queueOf(name).getJob(id);
      if (job) return { job, mailbox: name };
    }
    throw new MessageNotFound(id);
  }

  async show(id: string): Promise<MessageDetail> {
    const { job, mailbox } = await this.find(id);
    const [state, logs, head] = await Promise.all([
      stateOf(job),
      this.queueOf(mailbox).getJobLogs(id, 0, -1, true),
      this.options.redis.getrangeBuffer(this.options.spool.bodyKey(id), 0, HEADER_BYTES - 1),
    ]);
    const text = head.length ? head.toString("utf8") : null;
    const end = text?.search(/\r?\n\r?\n/) ?? -1;
    // a delivered message's last replies are in its return value, not its log
    const lastReplies = (job.returnvalue as LastBatch | null)?.replies ?? [];
    return {
      ...summarize(job, mailbox, state),
      refused: dataOf(job).refused,
      remoteAddress: job.data.remoteAddress,
      headers: text === null ? null : end === -1 ? text : text.slice(0, end),
      replies: [...logs.logs, ...lastReplies].map((line) => {
        const space = line.indexOf(" ");
        return { at: line.slice(0, space), reply: line.slice(space + 1) };
      }),
    };
  }

  /** A failed message is queued again (attempts and retry.maxAge start afresh); a delayed one is sent now. */
  async retry(id: string): Promise<MessageSummary> {
    const { job, mailbox } = await this.find(id);
    const state = await stateOf(job);
    if (state === "failed") {
      if (!(await this.options.redis.exists(this.options.spool.bodyKey(id)))) {
        throw new WrongMessageState(`message ${id} cannot be retried: its body is gone (purge it)`);
      }
      await job.updateData({ ...job.data, retriedAt: Date.now() });
      await job.retry("failed", { resetAttemptsMade: true, resetAttemptsStarted: true });
    } else if (state === "delayed") {
      await job.promote();
    } else {
      throw new WrongMessageState(
        `message ${id} is ${state}: only failed or delayed messages can be retried`,
      );
    }
    this.options.spool.wake(mailbox);
    this.options.logger?.info(
      {
        event: "retried",
        id,
        messageId: job.data.messageId,
        client: job.data.client,
        mailbox,
        by: this.options.actor,
      },
      "message retried by an operator",
    );
    return summarize(job, mailbox, "queued");
  }

  /** Retries every failed message (of one mailbox); returns their ids. */
  async retryFailed(filter: { mailbox?: string } = {}): Promise<string[]> {
    const ids: string[] = [];
    for (const message of await this.list({ mailbox: filter.mailbox, state: "failed", limit: 100_000 })) {
      await this.retry(message.id);
      ids.push(message.id);
    }
    return ids;
  }

  /** Deletes the message: its job and its body. A message being delivered right now cannot be purged. */
  async purge(id: string): Promise<MessageSummary> {
    const { job, mailbox } = await this.find(id);
    const state = await stateOf(job);
    if (state === "active") {
      throw new WrongMessageState(`message ${id} is being delivered right now: try again in a moment`);
    }
    await job.remove();
    await this.options.spool.removeBody(id);
    this.options.logger?.info(
      {
        event: "purged",
        id,
        messageId: job.data.messageId,
        client: job.data.client,
        mailbox,
        by: this.options.actor,
      },
      "message purged by an operator",
    );
    return summarize(job, mailbox, state);
  }

  /** Purges failed messages that failed more than olderThanMs ago (of one mailbox); returns their ids. */
  async purgeFailed(filter: { olderThanMs: number; mailbox?: string }): Promise<string[]> {
    const before = Date.now() - filter.olderThanMs;
    const ids: string[] = [];
    for (const message of await this.list({ mailbox: filter.mailbox, state: "failed", limit: 100_000 })) {
      if ((message.failedAt ?? 0) > before) continue;
      await this.purge(message.id);
      ids.push(message.id);
    }
    return ids;
  }

  /** Failed messages purgeFailed would delete, without deleting them (for the confirmation prompt). */
  async failedOlderThan(filter: { olderThanMs: number; mailbox?: string }): Promise<MessageSummary[]> {
    const before = Date.now() - filter.olderThanMs;
    return (await this.list({ mailbox: filter.mailbox, state: "failed", limit: 100_000 })).filter(
      (m) => (m.failedAt ?? 0) <= before,
    );
  }

  /** Holds the mailbox's mail (in every relay process) until resume(); replaces an automatic pause. */
  async pause(mailbox: string, reason = "paused by an operator"): Promise<MailboxPause> {
    const name = this.requireMailbox(mailbox);
    await this.pauses.replace(name, "manual", reason, MANUAL_PAUSE_MS);
    // messages the relays have started and not yet written wait too, not only those still queued
    this.options.spool.mailboxStopped(name);
    this.options.logger?.warn(
      { event: "paused", mailbox: name, pause: "manual", reason, by: this.options.actor },
      "mailbox paused by an operator",
    );
    return (await this.pauses.get(name)) as MailboxPause;
  }

  /** Ends any pause of the mailbox (manual, auth or quota) and sends its held mail now. */
  async resume(mailbox: string): Promise<{ wasPaused: boolean }> {
    const name = this.requireMailbox(mailbox);
    const wasPaused = await this.pauses.resume(name);
    // paused mail waits as delayed jobs until the pause's end: wake it
    await this.queueOf(name).promoteJobs();
    this.options.spool.wake(name);
    this.options.logger?.info(
      { event: "resumed", mailbox: name, wasPaused, by: this.options.actor },
      "mailbox resumed by an operator",
    );
    return { wasPaused };
  }
}

async function stateOf(job: Job<MessageJob>): Promise<MessageSummary["state"]> {
  const state = await job.getState();
  if (state === "waiting" || state === "prioritized" || state === "waiting-children") return "queued";
  if (state === "completed") return "delivered";
  if (state === "delayed" || state === "active" || state === "failed") return state;
  return "unknown";
}

/** The job's data, with the last batch of a delivered message (its return value) applied. */
function dataOf(job: Job<MessageJob>): MessageJob {
  return withLastBatch(job.data, job.returnvalue as LastBatch | null);
}

function summarize(job: Job<MessageJob>, mailbox: string, state: MessageSummary["state"]): MessageSummary {
  const data = dataOf(job);
  return {
    id: data.id,
    mailbox,
    state,
    client: data.client,
    mailFrom: data.mailFrom,
    recipients: data.recipients,
    delivered: data.delivered,
    size: data.size,
    messageId: data.messageId,
    receivedAt: data.receivedAt,
    attempts: job.attemptsMade,
    lastReply: job.failedReason || undefined,
    hint: hintForReply(job.failedReason),
    failedAt: state === "failed" ? job.finishedOn : undefined,
    deliveredAt: state === "delivered" ? job.finishedOn : undefined,
  };
}
