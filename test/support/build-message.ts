import { randomUUID } from "node:crypto";
import { withoutUndefined } from "./defaults.js";
import { mulberry32 } from "./seeded-random.js";

export interface BuildMessageOptions {
  from: string;
  to: string[];
  /** Default "Test message". */
  subject?: string;
  /** Approximate size of the text body in bytes. Default 512. */
  bodyBytes?: number;
  /**
   * Size in bytes of a PDF-like attachment (before base64, which adds about a third). When given, the
   * message is multipart/mixed with the text body and the attachment. Default: no attachment.
   */
  attachmentBytes?: number;
  /** Message-ID header, with or without angle brackets. Default: a random one. */
  messageId?: string;
  /** Date header. Default: now. */
  date?: Date;
  /** Seed of the pseudo-random attachment content. Default derived from attachmentBytes. */
  seed?: number;
}

const WORDS = (
  "printer scan report invoice monthly summary attached please find document page toner tray paper " +
  "office building floor meeting room schedule backup job completed successfully warning device status"
).split(" ");

/**
 * A realistic RFC 5322 message with CRLF line endings (no line over 78 characters): a text/plain body,
 * or multipart/mixed with a base64 (76-character lines) application/pdf attachment. Body and attachment
 * are deterministic for the same sizes and seed; Date and Message-ID are not unless given.
 */
export function buildMessage(options: BuildMessageOptions): Buffer {
  const { from, to, subject, bodyBytes, attachmentBytes, date } = {
    subject: "Test message",
    bodyBytes: 512,
    date: new Date(),
    ...withoutUndefined(options),
  };
  const messageId = options.messageId ?? `${randomUUID()}@sluice.test`;
  const random = mulberry32(options.seed ?? (attachmentBytes ?? 0) + bodyBytes);
  const headers = [
    `From: ${from}`,
    `To: ${to.join(", ")}`,
    `Subject: ${subject}`,
    `Date: ${rfc5322Date(date)}`,
    `Message-ID: ${messageId.startsWith("<") ? messageId : `<${messageId}>`}`,
    "MIME-Version: 1.0",
    "X-Mailer: sluice test support",
  ];
  const text = textBody(bodyBytes, random);
  if (attachmentBytes === undefined) {
    return crlf([
      ...headers,
      "Content-Type: text/plain; charset=utf-8",
      "Content-Transfer-Encoding: 7bit",
      "",
      text,
    ]);
  }
  const boundary = `----=_sluice_${Math.floor(random() * 0xffffffff).toString(16)}`;
  const pdf = pdfLikeBytes(attachmentBytes, random);
  return crlf([
    ...headers,
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    "",
    "This is a multi-part message in MIME format.",
    `--${boundary}`,
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 7bit",
    "",
    text,
    `--${boundary}`,
    'Content-Type: application/pdf; name="scan.pdf"',
    "Content-Transfer-Encoding: base64",
    'Content-Disposition: attachment; filename="scan.pdf"',
    "",
    (pdf.toString("base64").match(/.{1,76}/g) ?? []).join("\r\n"),
    `--${boundary}--`,
    "",
  ]);
}

function crlf(lines: string[]): Buffer {
  return Buffer.from(`${lines.join("\r\n").replace(/(\r\n)?$/, "")}\r\n`, "utf8");
}

/** Lines of words, at most 72 characters each, about `bytes` bytes in total with CRLFs. */
function textBody(bytes: number, random: () => number): string {
  const lines: string[] = [];
  let size = 0;
  let line = "";
  while (size + line.length < bytes) {
    const word = WORDS[Math.floor(random() * WORDS.length)] ?? "word";
    if (line.length + word.length + 1 > 72) {
      lines.push(line);
      size += line.length + 2;
      line = "";
    }
    line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines.join("\r\n");
}

/** `size` bytes that start like a PDF and end with %%EOF, random in between. */
function pdfLikeBytes(size: number, random: () => number): Buffer {
  const head = Buffer.from("%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "latin1");
  const tail = Buffer.from("\n%%EOF\n", "latin1");
  const bytes = Buffer.alloc(Math.max(size, 0));
  for (let i = 0; i + 4 <= bytes.length; i += 4) bytes.writeUInt32LE(Math.floor(random() * 0x100000000), i);
  for (let i = bytes.length - (bytes.length % 4); i < bytes.length; i++)
    bytes[i] = Math.floor(random() * 256);
  if (bytes.length >= head.length + tail.length) {
    head.copy(bytes, 0);
    tail.copy(bytes, bytes.length - tail.length);
  }
  return bytes;
}

function rfc5322Date(date: Date): string {
  const days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
  const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const pad = (n: number) => String(n).padStart(2, "0");
  return (
    `${days[date.getUTCDay()]}, ${date.getUTCDate()} ${months[date.getUTCMonth()]} ${date.getUTCFullYear()} ` +
    `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())} +0000`
  );
}
