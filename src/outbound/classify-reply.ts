import type { UpstreamError } from "./upstream-connection.js";

/** What to do with a message after an upstream reply or connection failure. */
export type ReplyAction =
  /** Try again later with backoff. */
  | "retry"
  /** Permanent for this message: keep it as failed with the reply. Never retried (Exchange punishes repeats). */
  | "fail";

export interface ReplyRule {
  /** Numeric reply code (exact), class, enhanced status code, or nodemailer error code (connection and TLS failures). */
  match: { code?: number; class?: 4 | 5; enhanced?: RegExp; errorCode?: string[] };
  action: ReplyAction;
  category: string;
  hint?: string;
}

/**
 * The reply table, first match wins. Classify on the numeric and enhanced status codes, never on free text.
 * Facts: shared/office365.md. The cluster-wide limits issue extends this table (432, 452 4.5.3, auth pauses).
 */
export const REPLY_TABLE: readonly ReplyRule[] = [
  {
    match: {
      errorCode: ["ECONNECTION", "ETIMEDOUT", "ESOCKET", "ETLS", "EDNS", "ECONNREFUSED", "ECONNRESET"],
    },
    action: "retry",
    category: "network",
    hint: "connection to the upstream failed (refused, reset, timed out, or TLS failed): retried with backoff",
  },
  { match: { class: 4 }, action: "retry", category: "temporary" },
  {
    match: { code: 535 },
    action: "fail",
    category: "authentication",
    hint: "the upstream refused the mailbox's credentials: check the password, and that SMTP AUTH is enabled for the mailbox",
  },
  { match: { class: 5 }, action: "fail", category: "permanent" },
];

export interface Classification {
  action: ReplyAction;
  category: string;
  /** The upstream's reply line, or the error message when there was no reply. */
  reply: string;
  hint?: string;
}

function enhancedCode(response: string | undefined): string | undefined {
  return response?.match(/^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})\b/)?.[1];
}

export function classifyReply(err: UpstreamError, table: readonly ReplyRule[] = REPLY_TABLE): Classification {
  const code = err.responseCode;
  const enhanced = enhancedCode(err.response);
  const reply = err.response?.trim() || err.message;
  for (const rule of table) {
    const m = rule.match;
    if (m.errorCode && !(err.code && m.errorCode.includes(err.code))) continue;
    if (m.code !== undefined && m.code !== code) continue;
    if (m.class !== undefined && (code === undefined || Math.floor(code / 100) !== m.class)) continue;
    if (m.enhanced && !(enhanced && m.enhanced.test(enhanced))) continue;
    return { action: rule.action, category: rule.category, reply, hint: rule.hint };
  }
  // an error with neither a reply code nor a known network code: a local problem, safe to retry
  return { action: "retry", category: "unknown", reply };
}
