/** One header field inside a header block: byte offsets, the field's line ending included. */
export interface HeaderField {
  /** Field name as written. */
  name: string;
  /** Offset of the first byte of the name. */
  start: number;
  /** Offset just past the field's last line ending (or the end of the block). */
  end: number;
  /** Offset just past the colon: the raw value runs from here to `end` minus the line ending. */
  valueStart: number;
  /** "\r\n", "\n" or "" (a last field without one). */
  lineEnding: string;
}

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const HT = 0x09;

/**
 * Where the header block ends: the offset just past the empty line that separates it from the body, or -1
 * when `data` holds no empty line yet. A message that starts with an empty line has an empty header block.
 */
export function headerBlockEnd(data: Buffer, from = 0): number {
  if (from === 0) {
    if (data[0] === LF) return 1;
    if (data[0] === CR && data[1] === LF) return 2;
  }
  for (let i = data.indexOf(LF, Math.max(0, from)); i !== -1; i = data.indexOf(LF, i + 1)) {
    if (data[i + 1] === LF) return i + 2;
    if (data[i + 1] === CR && data[i + 2] === LF) return i + 3;
  }
  return -1;
}

/** The fields of a header block (the empty line that ends it may be included or not). Unfolds nothing. */
export function parseHeaderFields(block: Buffer): HeaderField[] {
  const fields: HeaderField[] = [];
  let offset = 0;
  while (offset < block.length) {
    const lineEnd = nextLineEnd(block, offset);
    if (lineEnd === offset || (block[offset] === CR && lineEnd === offset + 2)) break; // the empty line
    const first = block[offset];
    const previous = fields[fields.length - 1];
    if ((first === SP || first === HT) && previous) {
      // a folded continuation of the previous field
      previous.end = lineEnd;
      previous.lineEnding = lineEndingBefore(block, lineEnd);
    } else {
      const colon = block.indexOf(":", offset);
      const hasName = colon !== -1 && colon < lineEnd;
      fields.push({
        name: hasName ? block.toString("latin1", offset, colon).trim() : "",
        start: offset,
        end: lineEnd,
        valueStart: hasName ? colon + 1 : offset,
        lineEnding: lineEndingBefore(block, lineEnd),
      });
    }
    offset = lineEnd;
  }
  return fields;
}

/** The raw bytes of a field's value: after the colon, folding kept, without the final line ending. */
export function rawValue(block: Buffer, field: HeaderField): Buffer {
  return block.subarray(field.valueStart, field.end - field.lineEnding.length);
}

/** A field's value unfolded (RFC 5322 3.2.2) and read as UTF-8 (RFC 6532 allows UTF-8 in headers). */
export function unfoldedValue(block: Buffer, field: HeaderField): string {
  return rawValue(block, field)
    .toString("utf8")
    .replace(/\r?\n(?=[ \t])/g, "")
    .trim();
}

export function findFields(fields: readonly HeaderField[], name: string): HeaderField[] {
  const lower = name.toLowerCase();
  return fields.filter((field) => field.name.toLowerCase() === lower);
}

/** A new block with byte ranges replaced; everything outside the ranges is copied as it is. */
export function spliceBlock(block: Buffer, edits: { start: number; end: number; insert: Buffer }[]): Buffer {
  const sorted = [...edits].sort((a, b) => a.start - b.start);
  const parts: Buffer[] = [];
  let offset = 0;
  for (const edit of sorted) {
    parts.push(block.subarray(offset, edit.start), edit.insert);
    offset = edit.end;
  }
  parts.push(block.subarray(offset));
  return Buffer.concat(parts);
}

function nextLineEnd(block: Buffer, offset: number): number {
  const lf = block.indexOf(LF, offset);
  return lf === -1 ? block.length : lf + 1;
}

function lineEndingBefore(block: Buffer, lineEnd: number): string {
  if (block[lineEnd - 1] !== LF) return "";
  return block[lineEnd - 2] === CR ? "\r\n" : "\n";
}
