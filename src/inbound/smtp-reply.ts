import { SMTPConnection } from "smtp-server/lib/smtp-connection.js";

/** An Error that smtp-server sends as the SMTP reply: `<code> <enhanced> <text>`. */
export class SmtpReply extends Error {
  constructor(
    readonly responseCode: number,
    readonly enhancedCode: string,
    text: string,
  ) {
    super(`${enhancedCode} ${text}`);
    this.name = "SmtpReply";
  }
}

const ENHANCED_PREFIX = /^[245]\.\d{1,3}\.\d{1,3} /;
const PATCHED = Symbol.for("sluice.enhancedStatusCodes");

/**
 * smtp-server adds a generic enhanced status code from its own table to every reply, which would turn
 * `451 4.3.0 ...` chosen by us into `451 4.3.0 4.3.0 ...` and cannot express 5.7.1 for 550. Where a reply text
 * already starts with an enhanced status code, send it as it is. Replies without one are unchanged.
 */
export function preferOwnEnhancedStatusCodes(): void {
  const proto = SMTPConnection.prototype as unknown as Record<PropertyKey, unknown> & {
    send(code: number, data: unknown, context?: unknown): void;
  };
  if (proto[PATCHED]) return;
  const original = proto.send;
  proto.send = function send(this: unknown, code: number, data: unknown, context?: unknown) {
    const own = typeof data === "string" && ENHANCED_PREFIX.test(data);
    return original.call(this, code, data, own ? false : context);
  };
  proto[PATCHED] = true;
}
