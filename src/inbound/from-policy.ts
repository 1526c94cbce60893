import libmime from "libmime";
import addressparser from "nodemailer/lib/addressparser";
import type { ClientConfig } from "../config/schema.js";
import {
  findFields,
  type HeaderField,
  parseHeaderFields,
  rawValue,
  spliceBlock,
  unfoldedValue,
} from "./header-block.js";
import { SmtpReply } from "./smtp-reply.js";

export type FromMode = ClientConfig["from"];

/** What the From header of a message says. */
export interface FromHeader {
  /** Every address of every From field, lower case; empty when there is none (or only a group). */
  addresses: string[];
  /** The display name of the first address, RFC 2047 decoded; "" when none. */
  name: string;
  /** The From fields (a valid message has exactly one). */
  fields: HeaderField[];
}

/** Reads the From header of a header block (folded, RFC 2047-encoded and UTF-8 values all work). */
export function readFrom(block: Buffer): FromHeader {
  const fields = findFields(parseHeaderFields(block), "From");
  const parsed = fields.flatMap((field) =>
    addressparser(unfoldedValue(block, field), { flatten: true }).filter((a) => a.address),
  );
  return {
    addresses: parsed.map((a) => a.address.toLowerCase()),
    name: parsed[0]?.name ? decodeWords(parsed[0].name) : "",
    fields,
  };
}

/** true when the message has one From field and every address in it is one of `allowed`. */
export function fromIsAllowed(from: FromHeader, allowed: readonly string[]): boolean {
  return (
    from.fields.length === 1 &&
    from.addresses.length > 0 &&
    from.addresses.every((address) => allowed.includes(address))
  );
}

/** The reply for a From header none of the client's mailboxes may send as, saying what to configure. */
export function fromRefusal(from: FromHeader, mailboxes: readonly string[], client: string): SmtpReply {
  const shown = from.addresses.length ? from.addresses.join(", ") : "(no From header)";
  const where = mailboxes.map((m) => `mailboxes.${m}.aliases`).join(" or ");
  return new SmtpReply(
    550,
    "5.7.1",
    `From ${shown} is not ${mailboxes.join(" or ")} or an alias: add it to ${where}, or set from: rewrite (or keep, if the mailbox has SendAs rights) on client ${client}`,
  );
}

/**
 * The header block with From replaced by the mailbox (keeping the original display name) and, unless the
 * message has a Reply-To already, the original From value (byte for byte) as Reply-To right after it.
 * Every other byte of the block is kept as it is.
 */
export function rewriteFrom(block: Buffer, mailbox: string): Buffer {
  const all = parseHeaderFields(block);
  const froms = findFields(all, "From");
  const first = froms[0];
  if (!first) {
    // no From at all: add one after the last field
    const last = all[all.length - 1];
    const at = last ? last.end : 0;
    const ending = last?.lineEnding || "\r\n";
    const prefix = last && !last.lineEnding ? ending : "";
    return spliceBlock(block, [
      { start: at, end: at, insert: Buffer.from(`${prefix}From: ${mailbox}${ending}`) },
    ]);
  }
  const from = readFrom(block);
  const original = rawValue(block, first);
  const ending = first.lineEnding || "\r\n";
  const eightBit = original.some((byte) => byte >= 0x80);
  const name = displayName(from.name, eightBit);
  const lines = [`From: ${name ? `${name} <${mailbox}>` : mailbox}${ending}`];
  const replyTo = findFields(all, "Reply-To").length > 0;
  const insert: Buffer[] = [Buffer.from(lines.join(""), "utf8")];
  if (!replyTo && from.addresses.length) {
    insert.push(Buffer.from("Reply-To:"), original, Buffer.from(ending));
  }
  const edits: { start: number; end: number; insert: Buffer }[] = [
    { start: first.start, end: first.end, insert: Buffer.concat(insert) },
  ];
  // further From fields (invalid, but seen) go: Exchange would judge the message by them too
  for (const extra of froms.slice(1))
    edits.push({ start: extra.start, end: extra.end, insert: Buffer.alloc(0) });
  const result = spliceBlock(block, edits);
  // a From that ended the block without a line ending: so does its replacement
  return first.lineEnding || first.end < block.length
    ? result
    : result.subarray(0, result.length - ending.length);
}

function decodeWords(value: string): string {
  try {
    return libmime.decodeWords(value);
  } catch {
    return value;
  }
}

const ATOM_PHRASE = /^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]+$/;

/** A display name ready for a header: as it is, quoted, or RFC 2047-encoded when it is not ASCII. */
function displayName(name: string, eightBit: boolean): string {
  const trimmed = name.trim();
  if (!trimmed) return "";
  const ascii = /^[\x20-\x7e]*$/.test(trimmed);
  if (ascii && ATOM_PHRASE.test(trimmed)) return trimmed;
  if (ascii || eightBit) return `"${trimmed.replace(/[\\"]/g, "\\$&")}"`;
  return libmime.encodeWords(trimmed, "Q", 52);
}
