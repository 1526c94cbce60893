/** RFC 5322 date-time in UTC, e.g. `Wed, 25 Nov 2026 20:05:24 +0000`. */
export function rfc5322Date(date: Date): string {
  return date.toUTCString().replace(/GMT$/, "+0000");
}

export interface TraceInfo {
  id: string;
  hostname: string;
  helo: string;
  clientHostname: string;
  remoteAddress: string;
  tls: boolean;
  authenticated: boolean;
  recipients: string[];
  date: Date;
}

/** The `Received:` trace header prepended to every accepted message (RFC 5321 4.4, protocol names per RFC 3848). */
export function receivedHeader(info: TraceInfo): Buffer {
  const protocol = `ESMTP${info.tls ? "S" : ""}${info.authenticated ? "A" : ""}`;
  const from = `from ${info.helo || "unknown"} (${info.clientHostname || "unknown"} [${info.remoteAddress}])`;
  const forClause = info.recipients.length === 1 ? `\r\n\tfor <${info.recipients[0]}>` : "";
  const text = `Received: ${from}\r\n\tby ${info.hostname} (sluice) with ${protocol} id ${info.id}${forClause};\r\n\t${rfc5322Date(info.date)}\r\n`;
  return Buffer.from(text.replace(/[^\t\r\n\x20-\x7e]/g, "?"), "latin1");
}

/** The Message-ID of a message, read from its header block only. */
export function findMessageId(head: Buffer): string | undefined {
  const end = head.indexOf("\r\n\r\n");
  const block = head.subarray(0, end === -1 ? head.length : end).toString("latin1");
  const match = /^message-id:[ \t]*(?:\r?\n[ \t]+)?(<[^>\r\n]{1,900}>)/im.exec(block);
  return match?.[1];
}
