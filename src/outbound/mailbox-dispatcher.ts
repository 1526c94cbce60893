import { type Job, UnrecoverableError, Worker } from "bullmq";
import type { Redis } from "ioredis";
import type { Limits } from "../config/schema.js";
import type { Logger } from "../logger.js";
import type { MessageJob } from "../spool/message-job.js";
import type { Spool } from "../spool/spool.js";
import { classifyReply } from "./classify-reply.js";
import { ConnectionPool } from "./connection-pool.js";
import { type RetryConfig, retryDelay } from "./retry-schedule.js";
import {
  type UpstreamConfig,
  UpstreamConnection,
  type UpstreamError,
  upstreamTlsOptions,
} from "./upstream-connection.js";

export interface MailboxDispatcherOptions {
  mailbox: string;
  password: string;
  limits: Limits;
  upstream: UpstreamConfig;
  retry: RetryConfig;
  hostname: string;
  spool: Spool;
  /** A connection for BullMQ (it duplicates it for blocking reads). */
  connection: Redis;
  logger: Logger;
}

/** Recipients the upstream refused with 4xx: the message is retried for them only. */
class RetryRecipients extends Error {
  constructor(readonly replies: string[]) {
    super(`recipients deferred by the upstream: ${replies.join("; ")}`);
    this.name = "RetryRecipients";
  }
}

/** Takes one mailbox's queued mail and delivers it upstream, reusing connections. */
export class MailboxDispatcher {
  private readonly worker: Worker<MessageJob>;
  private readonly pool: ConnectionPool;
  private readonly logger: Logger;

  constructor(private readonly options: MailboxDispatcherOptions) {
    const { mailbox, limits, upstream, spool, retry } = options;
    this.logger = options.logger.child({ mailbox });
    const tls = upstreamTlsOptions(upstream);
    this.pool = new ConnectionPool({
      maxConnections: limits.connections,
      idleTimeout: upstream.idleTimeout,
      maxMessagesPerConnection: upstream.maxMessagesPerConnection,
      logger: this.logger,
      open: async () => {
        const connection = new UpstreamConnection(
          upstream,
          tls,
          { user: mailbox, pass: options.password },
          options.hostname,
        );
        try {
          await connection.open();
        } catch (err) {
          connection.close();
          throw err;
        }
        return connection;
      },
    });
    this.worker = new Worker<MessageJob>(spool.queueName(mailbox), (job) => this.deliver(job), {
      connection: options.connection,
      prefix: spool.prefix,
      concurrency: limits.connections,
      settings: { backoffStrategy: (attemptsMade: number) => retryDelay(retry, attemptsMade) },
    });
    this.worker.on("error", (err) => this.logger.warn({ err: err.message }, "queue worker error"));
  }

  private async deliver(job: Job<MessageJob>): Promise<void> {
    const { spool, retry, mailbox } = this.options;
    const data = job.data;
    const log = {
      id: data.id,
      messageId: data.messageId,
      client: data.client,
      mailbox,
      attempt: job.attemptsMade + 1,
    };
    if (Date.now() - data.receivedAt > retry.maxAge) {
      this.logger.error({ ...log, event: "failed" }, "message expired: not delivered within retry.maxAge");
      throw new UnrecoverableError(`expired: not delivered within ${Math.round(retry.maxAge / 3600_000)} h`);
    }
    const body = await spool.readBody(data.id);
    if (!body) {
      this.logger.error(
        { ...log },
        "message body missing: the submission was never acknowledged; dropping the job",
      );
      return;
    }
    let connection: UpstreamConnection | undefined;
    let healthy = false;
    try {
      connection = await this.pool.acquire();
      const result = await connection.send(mailbox, data.recipients, body);
      healthy = true;
      const deferred = result.rejected.filter((r) => (r.responseCode ?? 400) < 500);
      const refused = result.rejected.filter((r) => (r.responseCode ?? 400) >= 500);
      const next: MessageJob = {
        ...data,
        recipients: deferred.map((r) => r.recipient),
        delivered: [...data.delivered, ...result.accepted],
        refused: [...data.refused, ...refused.map((r) => ({ recipient: r.recipient, reply: r.response }))],
      };
      await job.updateData(next);
      if (deferred.length) throw new RetryRecipients(deferred.map((r) => `${r.recipient}: ${r.response}`));
      await spool.removeBody(data.id);
      this.logger.info(
        {
          ...log,
          event: "delivered",
          reply: result.response,
          accepted: result.accepted.length,
          refused: next.refused.length,
        },
        "message delivered",
      );
    } catch (err) {
      if (err instanceof RetryRecipients) {
        this.logger.warn(
          { ...log, event: "deferred", reply: err.replies },
          "some recipients deferred: retrying them later",
        );
        throw err;
      }
      const upstreamError = err as UpstreamError;
      healthy = upstreamError.responseCode !== undefined && upstreamError.code !== "ECONNECTION";
      const verdict = classifyReply(upstreamError);
      if (verdict.action === "fail") {
        this.logger.error(
          { ...log, event: "failed", reply: verdict.reply, hint: verdict.hint },
          "message failed permanently",
        );
        throw new UnrecoverableError(verdict.reply);
      }
      this.logger.warn(
        { ...log, event: "deferred", reply: verdict.reply, category: verdict.category },
        "delivery deferred",
      );
      throw err;
    } finally {
      if (connection) this.pool.release(connection, healthy);
    }
  }

  async close(): Promise<void> {
    await this.worker.close();
    this.pool.close();
  }
}
