import type { Redis } from "ioredis";
import { Counter, collectDefaultMetrics, Gauge, Registry } from "prom-client";
import type { RelayEvents } from "../relay-events.js";
import type { MailboxStatus, QueueControl } from "./queue-control.js";

export interface RelayMetricsOptions {
  events: RelayEvents;
  queues: QueueControl;
  /** Connection used to tell whether Redis answers (one that fails fast while Redis is away). */
  redis: Redis;
  /** Upstream connections this process holds open for the mailbox. */
  openConnections(mailbox: string): number;
  /** How long one scrape's Redis reads are reused by the other gauges, ms. Default 1000. */
  snapshotMs?: number;
}

/** Resolves to whether Redis answered PING within timeoutMs. */
export async function redisAnswers(redis: Redis, timeoutMs = 2_000): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      redis.ping().then((reply) => reply === "PONG"),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), timeoutMs);
      }),
    ]);
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The relay's Prometheus metrics in a registry of its own (two relays in one process never collide):
 * counters fed by RelayEvents, queue and limit gauges read from Redis at scrape time, process metrics.
 */
export class RelayMetrics {
  readonly registry = new Registry();
  private snapshot?: { at: number; status: Promise<MailboxStatus[] | null> };

  constructor(private readonly options: RelayMetricsOptions) {
    const { events } = options;
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });

    const delivered = new Counter({
      name: "sluice_delivered_total",
      help: "Messages delivered upstream (every recipient has an outcome), by mailbox",
      labelNames: ["mailbox"],
      registers,
    });
    const retries = new Counter({
      name: "sluice_retries_total",
      help: "Upstream failures that lead to a later retry, by reply class (4xx, 5xx, none) and reply-table category",
      labelNames: ["mailbox", "reply_class", "category"],
      registers,
    });
    const tooManyConnections = new Counter({
      name: "sluice_upstream_432_total",
      help: "432 4.3.2 (too many concurrent connections) replies from the upstream",
      labelNames: ["mailbox"],
      registers,
    });
    const undeliverable = new Counter({
      name: "sluice_undeliverable_recipients_total",
      help: "Recipients that will never be delivered (message failed, or recipient refused with 5xx)",
      labelNames: ["mailbox"],
      registers,
    });
    const sessions = new Counter({
      name: "sluice_smtp_connections_total",
      help: "SMTP sessions opened by clients, by listener",
      labelNames: ["listener"],
      registers,
    });
    const accepted = new Counter({
      name: "sluice_smtp_messages_accepted_total",
      help: "Messages queued (250 sent), by listener",
      labelNames: ["listener"],
      registers,
    });
    const refused = new Counter({
      name: "sluice_smtp_refused_total",
      help: "Commands or messages refused by sluice, by listener and reply code",
      labelNames: ["listener", "code"],
      registers,
    });
    events.on("delivered", ({ mailbox }) => delivered.inc({ mailbox }));
    events.on("retry", ({ mailbox, replyClass, category, code }) => {
      retries.inc({ mailbox, reply_class: replyClass, category });
      if (code === 432) tooManyConnections.inc({ mailbox });
    });
    events.on("undeliverable", ({ mailbox, recipients }) =>
      undeliverable.inc({ mailbox }, recipients.length),
    );
    events.on("connection", ({ listener }) => sessions.inc({ listener }));
    events.on("accepted", ({ listener }) => accepted.inc({ listener }));
    events.on("refused", ({ listener, code }) => refused.inc({ listener, code: String(code) }));

    const perMailbox = (
      name: string,
      help: string,
      value: (status: MailboxStatus) => number | [Record<string, string>, number][],
      labelNames: string[] = [],
    ) => {
      const self = this;
      new Gauge({
        name,
        help,
        labelNames: ["mailbox", ...labelNames],
        registers,
        async collect() {
          this.reset();
          for (const status of (await self.status()) ?? []) {
            const v = value(status);
            if (typeof v === "number") this.set({ mailbox: status.mailbox }, v);
            else for (const [labels, n] of v) this.set({ mailbox: status.mailbox, ...labels }, n);
          }
        },
      });
    };
    perMailbox(
      "sluice_queue_messages",
      "Messages in the mailbox's queue by state (queued, delayed, active, failed); held = mail of clients without a mailbox",
      (s) => [
        [{ state: "queued" }, s.queued],
        [{ state: "delayed" }, s.delayed],
        [{ state: "active" }, s.active],
        [{ state: "failed" }, s.failed],
      ],
      ["state"],
    );
    perMailbox(
      "sluice_queue_oldest_age_seconds",
      "Age of the oldest message waiting (queued or delayed); 0 when none waits",
      (s) => (s.oldestAgeMs ?? 0) / 1000,
    );
    perMailbox(
      "sluice_upstream_connections",
      "Upstream connections this relay process holds open for the mailbox",
      (s) => this.options.openConnections(s.mailbox),
    );
    perMailbox(
      "sluice_connection_leases",
      "Connection leases held for the mailbox across the cluster",
      (s) => s.leases,
    );
    perMailbox(
      "sluice_connection_limit",
      "Connections the mailbox may have open now across the cluster: its limit, or fewer during the cool-down after a 432",
      (s) => s.connectionLimit,
    );
    perMailbox(
      "sluice_budget_used",
      "Budget used in the sliding window: messages in the last minute, recipients in the last 24 hours",
      (s) => [
        [{ window: "minute" }, s.messagesLastMinute],
        [{ window: "day" }, s.recipientsLastDay],
      ],
      ["window"],
    );
    perMailbox(
      "sluice_budget_limit",
      "The mailbox's limits: messagesPerMinute (minute) and recipientsPerDay (day)",
      (s) => [
        [{ window: "minute" }, s.limits.messagesPerMinute],
        [{ window: "day" }, s.limits.recipientsPerDay],
      ],
      ["window"],
    );
    perMailbox(
      "sluice_mailbox_paused",
      '1 while the mailbox is paused, with the reason (auth, quota, manual); 0 with reason "" otherwise',
      (s) => [[{ reason: s.pause?.kind ?? "" }, s.pause ? 1 : 0]],
      ["reason"],
    );
    new Gauge({
      name: "sluice_redis_up",
      help: "1 when Redis answered PING at scrape time",
      registers,
      async collect() {
        this.set((await redisAnswers(options.redis)) ? 1 : 0);
      },
    });
  }

  /** One Redis read per scrape, shared by the gauges; null while Redis is away. */
  private status(): Promise<MailboxStatus[] | null> {
    const now = Date.now();
    if (!this.snapshot || now - this.snapshot.at > (this.options.snapshotMs ?? 1_000)) {
      this.snapshot = { at: now, status: this.options.queues.status().catch(() => null) };
    }
    return this.snapshot.status;
  }

  async text(): Promise<string> {
    this.snapshot = undefined;
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
