/** What the queue keeps about one accepted message; the bytes are stored beside it (see Spool). */
export interface MessageJob {
  /** Queue id, also the BullMQ job id and the `queued as` id given to the client. */
  id: string;
  /** Client entry name from the config. */
  client: string;
  /** Mailbox the message is sent as; null while no mailbox is configured (held). */
  mailbox: string | null;
  /** The envelope sender the client gave (the upstream envelope sender is always the mailbox). */
  mailFrom: string;
  /** Recipients still to deliver. */
  recipients: string[];
  /** Recipients the upstream accepted already (never resent). */
  delivered: string[];
  /** Recipients the upstream refused permanently, with its reply. */
  refused: { recipient: string; reply: string }[];
  /** Recipients deferred (4xx) during the current attempt; they become `recipients` for the next one. */
  deferred?: string[];
  /** Recipients per upstream transaction, when the upstream asked for fewer (452 4.5.3). */
  batchSize?: number;
  /** The client's lane: interactive mail of a mailbox goes before bulk mail. Missing: interactive. */
  priority?: "interactive" | "bulk";
  size: number;
  messageId?: string;
  remoteAddress: string;
  receivedAt: number;
  /** When an operator last retried the failed message; retry.maxAge counts from here instead of receivedAt. */
  retriedAt?: number;
}

/**
 * The outcome of a message's last batch, kept as its job's return value: it is written with the job's
 * completion instead of by updates of its own (two round trips to Redis fewer per message).
 */
export interface LastBatch {
  accepted: string[];
  refused: { recipient: string; reply: string }[];
  /** The upstream's replies to the batch, each `<ISO time> <reply>` as in the job's log. */
  replies: string[];
}

/** A delivered message's data with its last batch (its job's return value) applied. */
export function withLastBatch(data: MessageJob, last: LastBatch | null | undefined): MessageJob {
  if (!last?.accepted) return data;
  return {
    ...data,
    recipients: [],
    deferred: [],
    delivered: [...data.delivered, ...last.accepted],
    refused: [...data.refused, ...last.refused],
  };
}
