import net from "node:net";

/**
 * The handful of ASN.1 DER encoders needed to build X.509 certificates synchronously (node:crypto signs
 * synchronously; the certificate libraries at hand are async-only).
 */

/** Tag-length-value with a definite length. */
export function tlv(tag: number, content: Buffer): Buffer {
  return Buffer.concat([Buffer.from([tag]), encodeLength(content.length), content]);
}

function encodeLength(length: number): Buffer {
  if (length < 0x80) return Buffer.from([length]);
  const bytes: number[] = [];
  for (let rest = length; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest % 256);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

export function sequence(...items: Buffer[]): Buffer {
  return tlv(0x30, Buffer.concat(items));
}

export function set(...items: Buffer[]): Buffer {
  return tlv(0x31, Buffer.concat(items));
}

export function boolean(value: boolean): Buffer {
  return tlv(0x01, Buffer.from([value ? 0xff : 0x00]));
}

/** INTEGER from a small non-negative number or from unsigned big-endian bytes. */
export function integer(value: number | Buffer): Buffer {
  let bytes = value;
  if (typeof bytes === "number") {
    const hex = bytes.toString(16);
    bytes = Buffer.from(hex.length % 2 === 0 ? hex : `0${hex}`, "hex");
  }
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0 && ((bytes[start + 1] ?? 0) & 0x80) === 0) start++;
  bytes = bytes.subarray(start);
  if (((bytes[0] ?? 0) & 0x80) !== 0) bytes = Buffer.concat([Buffer.from([0]), bytes]);
  return tlv(0x02, bytes);
}

export function objectIdentifier(dotted: string): Buffer {
  const arcs = dotted.split(".").map(Number);
  const [first = 0, second = 0, ...rest] = arcs;
  const bytes: number[] = [first * 40 + second];
  for (const arc of rest) {
    const chunk: number[] = [arc & 0x7f];
    for (let value = Math.floor(arc / 128); value > 0; value = Math.floor(value / 128)) {
      chunk.unshift((value & 0x7f) | 0x80);
    }
    bytes.push(...chunk);
  }
  return tlv(0x06, Buffer.from(bytes));
}

export function utf8String(text: string): Buffer {
  return tlv(0x0c, Buffer.from(text, "utf8"));
}

export function octetString(bytes: Buffer): Buffer {
  return tlv(0x04, bytes);
}

/** BIT STRING with `unusedBits` padding bits at the end of `bytes`. */
export function bitString(bytes: Buffer, unusedBits = 0): Buffer {
  return tlv(0x03, Buffer.concat([Buffer.from([unusedBits]), bytes]));
}

/** BIT STRING of named bits (bit 0 = most significant bit of the first byte), minimal DER form. */
export function namedBits(bits: number[]): Buffer {
  const highest = Math.max(...bits);
  const bytes = Buffer.alloc(Math.floor(highest / 8) + 1);
  for (const bit of bits)
    bytes[Math.floor(bit / 8)] = (bytes[Math.floor(bit / 8)] ?? 0) | (0x80 >> (bit % 8));
  return bitString(bytes, 7 - (highest % 8));
}

/** UTCTime for 1950-2049, GeneralizedTime otherwise (RFC 5280 4.1.2.5). */
export function time(date: Date): Buffer {
  const iso = date.toISOString().replace(/[-:T]/g, "").slice(0, 14);
  const year = date.getUTCFullYear();
  if (year >= 1950 && year < 2050) return tlv(0x17, Buffer.from(`${iso.slice(2)}Z`, "ascii"));
  return tlv(0x18, Buffer.from(`${iso}Z`, "ascii"));
}

/** [n] EXPLICIT wrapper. */
export function explicit(tagNumber: number, content: Buffer): Buffer {
  return tlv(0xa0 | tagNumber, content);
}

/** [n] IMPLICIT primitive value (e.g. a GeneralName). */
export function implicitPrimitive(tagNumber: number, bytes: Buffer): Buffer {
  return tlv(0x80 | tagNumber, bytes);
}

/** Network-order bytes of an IPv4 or IPv6 address. */
export function ipAddressBytes(address: string): Buffer {
  if (net.isIPv4(address)) return Buffer.from(address.split(".").map(Number));
  if (!net.isIPv6(address)) throw new Error(`not an IP address: ${address}`);
  const [head = "", tail] = address.split("::");
  const toGroups = (part: string) => (part === "" ? [] : part.split(":"));
  let headGroups = toGroups(head);
  let tailGroups = tail === undefined ? [] : toGroups(tail);
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two groups.
  const expandV4 = (groups: string[]) => {
    const last = groups.at(-1);
    if (last === undefined || !net.isIPv4(last)) return groups;
    const octets = last.split(".").map(Number);
    const pair = (a = 0, b = 0) => ((a << 8) | b).toString(16);
    return [...groups.slice(0, -1), pair(octets[0], octets[1]), pair(octets[2], octets[3])];
  };
  if (tail === undefined) headGroups = expandV4(headGroups);
  else tailGroups = expandV4(tailGroups);
  const missing = 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...Array<string>(tail === undefined ? 0 : missing).fill("0"), ...tailGroups];
  const bytes = Buffer.alloc(16);
  for (const [index, group] of groups.entries()) bytes.writeUInt16BE(Number.parseInt(group, 16), index * 2);
  return bytes;
}
