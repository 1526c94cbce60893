import { randomBytes } from "node:crypto";
import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import { Queue, Worker } from "bullmq";
import type { Redis } from "ioredis";
import type { Config } from "../config/schema.js";
import type { ClientPolicy } from "../inbound/client-policy.js";
import type { Logger } from "../logger.js";
import type { RelayEventMap, RelayEvents, UndeliverableRecipient } from "../relay-events.js";
import type { MessageJob } from "../spool/message-job.js";
import { newQueueId, type Spool } from "../spool/spool.js";
import { enhancedCodeOf } from "./classify-reply.js";

export interface FailureNoticesOptions {
  config: Readonly<Config>;
  policy: ClientPolicy;
  spool: Spool;
  events: RelayEvents;
  /** A connection for BullMQ (the webhook queue and its worker). */
  connection: Redis;
  hostname: string;
  logger: Logger;
  /** Webhook deliveries tried before giving up. Default 10. */
  webhookAttempts?: number;
  /** Webhook request timeout, ms. Default 10 000. */
  webhookTimeoutMs?: number;
}

/** The JSON a webhook receives for each message with undeliverable recipients. */
export interface FailureWebhookPayload {
  event: "message.failed" | "recipients.refused";
  id: string;
  messageId?: string;
  client: string;
  mailbox: string;
  mailFrom: string;
  receivedAt: string;
  /** Recipients that will not be delivered, with the upstream's reply. */
  failed: UndeliverableRecipient[];
  /** Recipients that were delivered. */
  delivered: string[];
}

interface WebhookJob {
  url: string;
  payload: FailureWebhookPayload;
}

/** The webhook answered with something other than 2xx. */
export class WebhookRefused extends Error {
  constructor(
    readonly url: string,
    readonly status: number,
  ) {
    super(`webhook ${url} answered HTTP ${status}`);
    this.name = "WebhookRefused";
  }
}

export const WEBHOOK_QUEUE = "failure-webhook";
const HEADER_BYTES = 64 * 1024;

/**
 * Tells the sender when mail will not be delivered, as the client's `onFailure` says: nothing, an RFC 3464
 * delivery status notification sent through the client's mailbox, or a JSON POST to its webhook (retried
 * with backoff through a queue of its own, so a restart loses none).
 */
export class FailureNotices {
  private readonly queue: Queue<WebhookJob>;
  /** Only when some client has onFailure: webhook. */
  private readonly worker?: Worker<WebhookJob>;
  private readonly pending = new Set<Promise<void>>();
  private readonly listener: (event: RelayEventMap["undeliverable"][0]) => void;

  constructor(private readonly options: FailureNoticesOptions) {
    const { connection, spool, config, events } = options;
    this.queue = new Queue<WebhookJob>(WEBHOOK_QUEUE, { connection, prefix: spool.prefix });
    this.queue.on("error", () => {});
    if (config.clients.some((c) => c.onFailure === "webhook")) {
      this.worker = this.startWorker();
    }
    this.listener = (event) => {
      const task = this.notify(event).catch((err: Error) =>
        options.logger.error({ id: event.job.id, err: err.message }, "could not send the failure notice"),
      );
      this.pending.add(task);
      task.finally(() => this.pending.delete(task));
    };
    events.on("undeliverable", this.listener);
  }

  private startWorker(): Worker<WebhookJob> {
    const { connection, spool, logger } = this.options;
    const worker = new Worker<WebhookJob>(WEBHOOK_QUEUE, (job) => this.post(job.data), {
      connection,
      prefix: spool.prefix,
      concurrency: 4,
    });
    worker.on("error", (err) => logger.warn({ err: err.message }, "webhook worker error"));
    worker.on("failed", (job, err) => {
      if (!job) return;
      const final = job.attemptsMade >= (job.opts.attempts ?? 1);
      logger[final ? "error" : "warn"](
        {
          event: "webhook-failed",
          id: job.data.payload.id,
          url: job.data.url,
          attempt: job.attemptsMade,
          err: err.message,
        },
        final ? "failure webhook gave up" : "failure webhook failed: retrying with backoff",
      );
    });
    return worker;
  }

  private async notify({ job, recipients, failed }: RelayEventMap["undeliverable"][0]): Promise<void> {
    const client = this.options.policy.byName(job.client);
    const mode = client?.onFailure ?? "none";
    if (mode === "bounce") await this.bounce(job, recipients);
    if (mode === "webhook" && client?.webhookUrl) {
      const payload: FailureWebhookPayload = {
        event: failed ? "message.failed" : "recipients.refused",
        id: job.id,
        messageId: job.messageId,
        client: job.client,
        mailbox: job.mailbox ?? "",
        mailFrom: job.mailFrom,
        receivedAt: new Date(job.receivedAt).toISOString(),
        failed: recipients,
        delivered: job.delivered,
      };
      await this.queue.add(
        "notify",
        { url: client.webhookUrl, payload },
        {
          attempts: this.options.webhookAttempts ?? 10,
          backoff: { type: "exponential", delay: this.options.config.retry.firstDelay },
          removeOnComplete: true,
          removeOnFail: { age: 7 * 24 * 3600 },
        },
      );
    }
  }

  /** Queues a DSN to the original envelope sender, from the same mailbox, with a null envelope sender. */
  private async bounce(original: MessageJob, recipients: UndeliverableRecipient[]): Promise<void> {
    const { spool, logger } = this.options;
    if (!original.mailFrom || !original.mailbox) {
      logger.info({ id: original.id }, "no bounce: the message had a null envelope sender (or no mailbox)");
      return;
    }
    const body = await spool.readBody(original.id);
    const headers = body ? headerSection(body.subarray(0, HEADER_BYTES)) : undefined;
    const dsn = buildDeliveryStatusNotification({
      hostname: this.options.hostname,
      from: original.mailbox,
      to: original.mailFrom,
      original,
      recipients,
      originalHeaders: headers,
    });
    const id = newQueueId();
    const writer = spool.openBody(id);
    await writer.write(dsn);
    await writer.flush();
    await spool.commit({
      id,
      client: original.client,
      mailbox: original.mailbox,
      mailFrom: "",
      recipients: [original.mailFrom],
      delivered: [],
      refused: [],
      size: writer.size,
      messageId: `<${id}.dsn@${this.options.hostname}>`,
      remoteAddress: "127.0.0.1",
      receivedAt: Date.now(),
    });
    logger.info(
      { event: "queued", id, bounceOf: original.id, client: original.client, mailbox: original.mailbox },
      "delivery status notification queued for the sender",
    );
  }

  private async post({ url, payload }: WebhookJob): Promise<void> {
    const body = JSON.stringify(payload);
    const target = new URL(url);
    const send = target.protocol === "https:" ? httpsRequest : httpRequest;
    const status = await new Promise<number>((resolve, reject) => {
      const req = send(
        target,
        {
          method: "POST",
          agent: false,
          timeout: this.options.webhookTimeoutMs ?? 10_000,
          headers: {
            "content-type": "application/json",
            "content-length": Buffer.byteLength(body),
            "user-agent": "sluice",
          },
        },
        (res) => {
          res.resume();
          res.on("end", () => resolve(res.statusCode ?? 0));
          res.on("error", reject);
        },
      );
      req.on("timeout", () => req.destroy(new Error(`webhook ${url} did not answer in time`)));
      req.on("error", reject);
      req.end(body);
    });
    if (status < 200 || status >= 300) throw new WebhookRefused(url, status);
    this.options.logger.info({ event: "webhook-sent", id: payload.id, url }, "failure webhook delivered");
  }

  async close(): Promise<void> {
    this.options.events.off("undeliverable", this.listener);
    await Promise.allSettled([...this.pending]);
    await this.worker?.close();
    await this.queue.close();
  }
}

function headerSection(head: Buffer): string {
  const text = head.toString("utf8");
  const end = text.search(/\r?\n\r?\n/);
  return (end === -1 ? text : text.slice(0, end)).replace(/\r?\n/g, "\r\n");
}

export interface DeliveryStatusNotification {
  hostname: string;
  /** The mailbox the notice is sent as (Exchange only lets a mailbox send as itself). */
  from: string;
  to: string;
  original: MessageJob;
  recipients: UndeliverableRecipient[];
  /** The original message's header section, CRLF line ends, when the body is still stored. */
  originalHeaders?: string;
}

/** Status for a recipient: the reply's enhanced code, 4.4.7 for an expired message, else 5.0.0. */
function statusOf(reply: string): string {
  const enhanced = enhancedCodeOf(reply);
  if (enhanced?.startsWith("5.")) return enhanced;
  if (/^expired/.test(reply)) return "4.4.7";
  return enhanced ?? "5.0.0";
}

/** An RFC 3464 report: multipart/report; report-type=delivery-status, with the original headers. */
export function buildDeliveryStatusNotification(notice: DeliveryStatusNotification): Buffer {
  const { hostname, from, to, original, recipients } = notice;
  const boundary = `sluice-dsn-${randomBytes(12).toString("hex")}`;
  const date = new Date().toUTCString().replace("GMT", "+0000");
  const arrival = new Date(original.receivedAt).toUTCString().replace("GMT", "+0000");
  const oneLine = (text: string) => text.replace(/[\r\n]+/g, " ");
  const human = [
    `This is the mail relay ${hostname}.`,
    "",
    `Your message${original.messageId ? ` ${original.messageId}` : ""} (queue id ${original.id}) could not be delivered to:`,
    "",
    ...recipients.map((r) => `  ${r.recipient}: ${oneLine(r.reply)}`),
    "",
    original.delivered.length ? `It was delivered to: ${original.delivered.join(", ")}` : "",
    "The technical report and the original message's headers are attached.",
  ];
  const perRecipient = recipients.map((r) =>
    [
      `Final-Recipient: rfc822; ${r.recipient}`,
      "Action: failed",
      `Status: ${statusOf(r.reply)}`,
      `Diagnostic-Code: smtp; ${oneLine(r.reply)}`,
    ].join("\r\n"),
  );
  const headers =
    notice.originalHeaders ??
    [original.messageId ? `Message-ID: ${original.messageId}` : "", `X-Sluice-Queue-Id: ${original.id}`]
      .filter(Boolean)
      .join("\r\n");
  const lines = [
    `From: Mail Delivery System <${from}>`,
    `To: <${to}>`,
    "Subject: Undelivered mail returned to sender",
    `Date: ${date}`,
    `Message-ID: <${original.id}.${randomBytes(4).toString("hex")}.dsn@${hostname}>`,
    ...(original.messageId
      ? [`In-Reply-To: ${original.messageId}`, `References: ${original.messageId}`]
      : []),
    "Auto-Submitted: auto-replied",
    "MIME-Version: 1.0",
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"`,
    "",
    "This is a MIME-encapsulated delivery status notification.",
    "",
    `--${boundary}`,
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 8bit",
    "",
    ...human,
    "",
    `--${boundary}`,
    "Content-Type: message/delivery-status",
    "",
    `Reporting-MTA: dns; ${hostname}`,
    `X-Sluice-Queue-Id: ${original.id}`,
    `Arrival-Date: ${arrival}`,
    "",
    perRecipient.join("\r\n\r\n"),
    "",
    `--${boundary}`,
    "Content-Type: text/rfc822-headers",
    "",
    headers,
    "",
    `--${boundary}--`,
    "",
  ];
  return Buffer.from(lines.join("\r\n"), "utf8");
}
