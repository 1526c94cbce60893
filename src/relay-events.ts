import { EventEmitter } from "node:events";
import type { MessageJob } from "./spool/message-job.js";

/** A recipient the upstream will not take, with its reply. */
export interface UndeliverableRecipient {
  recipient: string;
  reply: string;
}

/**
 * What happened in the relay, for whoever counts or reacts (metrics, failure notices) without the
 * front door and dispatchers knowing about them. Listener labels are `host:port` as bound.
 */
export interface RelayEventMap {
  /** A client opened an SMTP session. */
  connection: [{ listener: string }];
  /** A message was queued (250 sent). */
  accepted: [{ listener: string; client: string; mailbox: string | null }];
  /** sluice refused something with this reply code (any stage of the session). */
  refused: [{ listener: string; code: number }];
  /** Every recipient of the message has an outcome and at least one was accepted upstream. */
  delivered: [{ mailbox: string; job: MessageJob }];
  /** An upstream failure that leads to a later retry (no permanent failure). */
  retry: [{ mailbox: string; replyClass: string; category: string; code?: number }];
  /**
   * Recipients that will never be delivered: the message failed for good, or some recipients were refused
   * with 5xx while the rest were delivered.
   */
  undeliverable: [
    { mailbox: string; job: MessageJob; recipients: UndeliverableRecipient[]; failed: boolean },
  ];
}

export class RelayEvents extends EventEmitter<RelayEventMap> {}

/** "4xx", "5xx", or "none" (connection failures without a reply). */
export function replyClassOf(code: number | undefined): string {
  return code ? `${Math.floor(code / 100)}xx` : "none";
}
