import type { UpstreamError } from "./upstream-connection.js";

/** What to do with a message after an upstream reply or connection failure. */
export type ReplyAction =
  /** Try again later with exponential backoff; spends an attempt. */
  | "retry"
  /** Too many connections for the mailbox: lower its connection count for a cool-down and requeue (no attempt spent). */
  | "reduce-connections"
  /** Too many recipients in one transaction: resend in smaller batches (no attempt spent). */
  | "split-batch"
  /** Daily quota spent upstream: park the whole mailbox until the window frees; its mail waits. */
  | "park-quota"
  /** Credentials or mailbox set-up wrong: pause the mailbox, keep its mail, retry AUTH at a slow interval. */
  | "pause-auth"
  /** Permanent for this message: keep it as failed with the reply. Never retried (Exchange punishes repeats). */
  | "fail";

export interface ReplyRule {
  /** Every given field must match. */
  match: {
    /** Numeric reply code, exactly. */
    code?: number;
    /** First digit of the reply code. */
    class?: 4 | 5;
    /** Enhanced status code, e.g. "4.3.2"; a [from, to] pair matches a range of the last part ("4.7.500".."4.7.699"). */
    enhanced?: string | [string, string];
    /** Exchange's exception name in the reply (a stable token, not free text). */
    token?: string;
    /** nodemailer error codes for failures without a usable reply (connection, TLS). */
    errorCode?: string[];
  };
  action: ReplyAction;
  category: string;
  /** What the operator should do; logged with the failure. */
  hint?: string;
}

export const AUTH_HINT_BASE =
  "the upstream refused to authenticate the mailbox: mail is kept and AUTH is retried slowly";

/**
 * The reply table, first match wins. Classify on the numeric and enhanced status codes (and Exchange's
 * exception names), never on free text. Facts: shared/office365.md.
 */
export const REPLY_TABLE: readonly ReplyRule[] = [
  {
    match: { code: 432, enhanced: "4.3.2" },
    action: "reduce-connections",
    category: "concurrent-connections",
    hint: "Exchange's limit of concurrent connections per mailbox was hit: connections lowered for a cool-down",
  },
  {
    match: { code: 452, enhanced: "4.5.3" },
    action: "split-batch",
    category: "too-many-recipients",
    hint: "the upstream takes fewer recipients per message than configured: lower limits.recipientsPerMessage",
  },
  {
    match: { code: 421, enhanced: "4.7.66" },
    action: "retry",
    category: "tls-too-old",
    hint: "the upstream refuses TLS 1.0/1.1: sluice uses TLS 1.2 or newer, so something between them (a TLS-intercepting proxy or firewall) downgrades the connection; let port 587 through untouched",
  },
  { match: { class: 4, enhanced: ["4.7.500", "4.7.699"] }, action: "retry", category: "throttled" },
  { match: { class: 4 }, action: "retry", category: "temporary" },
  {
    match: {
      errorCode: ["ECONNECTION", "ETIMEDOUT", "ESOCKET", "ETLS", "EDNS", "ECONNREFUSED", "ECONNRESET"],
    },
    action: "retry",
    category: "connection",
    hint: "connection to the upstream failed (refused, reset, timed out, or TLS failed): retried with backoff",
  },
  {
    match: { code: 554, enhanced: "5.2.0", token: "SubmissionQuotaExceededException" },
    action: "park-quota",
    category: "daily-quota",
    hint: "the mailbox's daily recipient quota (10,000 per 24 h) is spent upstream: its mail waits until the window frees",
  },
  {
    match: { code: 535, enhanced: "5.7.139" },
    action: "pause-auth",
    category: "authentication",
    hint: `${AUTH_HINT_BASE}. SMTP AUTH is disabled for the mailbox or tenant: Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false`,
  },
  {
    match: { code: 550, enhanced: "5.7.30" },
    action: "pause-auth",
    category: "authentication",
    hint: `${AUTH_HINT_BASE}. Basic authentication is switched off: configure oauth2 for this mailbox`,
  },
  {
    match: { code: 530, enhanced: "5.7.57" },
    action: "pause-auth",
    category: "authentication",
    hint: `${AUTH_HINT_BASE}. The upstream saw no authentication: check that the mailbox has a password or oauth2 set`,
  },
  {
    match: { code: 535 },
    action: "pause-auth",
    category: "authentication",
    hint: `${AUTH_HINT_BASE}. Wrong password or token: check mailboxes.<address>.password, and that SMTP AUTH is enabled for the mailbox`,
  },
  {
    match: { code: 554, enhanced: "5.2.0", token: "SendAsDeniedException" },
    action: "fail",
    category: "send-as-denied",
    hint: "the mailbox may not send as this sender: give it SendAs rights, or let sluice rewrite From",
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

export function enhancedCodeOf(response: string | undefined): string | undefined {
  return response?.match(/^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})\b/)?.[1];
}

function enhancedMatches(pattern: string | [string, string], enhanced: string | undefined): boolean {
  if (!enhanced) return false;
  if (typeof pattern === "string") return pattern === enhanced;
  const [from, to] = pattern;
  const prefix = from.slice(0, from.lastIndexOf(".") + 1);
  if (!enhanced.startsWith(prefix)) return false;
  const detail = Number(enhanced.slice(prefix.length));
  return detail >= Number(from.slice(prefix.length)) && detail <= Number(to.slice(prefix.length));
}

export function classifyReply(err: UpstreamError, table: readonly ReplyRule[] = REPLY_TABLE): Classification {
  const code = err.responseCode;
  const enhanced = enhancedCodeOf(err.response);
  const reply = err.response?.trim() || err.message;
  for (const rule of table) {
    const m = rule.match;
    if (m.errorCode && !(err.code && m.errorCode.includes(err.code))) continue;
    if (m.code !== undefined && m.code !== code) continue;
    if (m.class !== undefined && (code === undefined || Math.floor(code / 100) !== m.class)) continue;
    if (m.enhanced && !enhancedMatches(m.enhanced, enhanced)) continue;
    if (m.token && !err.response?.includes(m.token)) continue;
    return { action: rule.action, category: rule.category, reply, hint: rule.hint };
  }
  // neither a reply code nor a known network code: a local problem, safe to retry
  return { action: "retry", category: "unknown", reply };
}

/**
 * What to do about a reply kept as text (a failed message's reason, the last reply that deferred it): the reply
 * table's hint, looked up again when the message is shown. Undefined for a reply the table has no hint for, or
 * text that is not a reply (an expiry).
 */
export function hintForReply(reply: string | null | undefined): string | undefined {
  // BullMQ leaves failedReason null or undefined on a job that never failed
  if (!reply) return undefined;
  const err = replyError(reply);
  return err.responseCode === undefined ? undefined : classifyReply(err).hint;
}

/** A reply line read as text, as the error nodemailer would have given for it (no code: not a reply). */
export function replyError(reply: string): UpstreamError {
  const code = reply.match(/^(\d{3})[ -]/)?.[1];
  return Object.assign(new Error(reply), {
    response: reply,
    ...(code ? { responseCode: Number(code) } : {}),
  });
}
