import DataStream from "nodemailer/lib/smtp-connection/data-stream";
import { describe, expect, it } from "vitest";

/** What DATA must carry for `input`: bare CR and LF made CRLF, a dot doubled at a line's start, the end mark. */
function expected(input: string): string {
  const lines = input.replace(/\r\n|\r|\n/g, "\r\n").replace(/(^|\r\n)\./g, "$1..");
  return `${lines}${lines.endsWith("\r\n") ? "" : "\r\n"}.\r\n`;
}

async function encode(chunks: Buffer[]): Promise<string> {
  const stream = new DataStream();
  const out: Buffer[] = [];
  stream.on("data", (chunk: Buffer) => out.push(chunk));
  const ended = new Promise((resolve) => stream.on("end", resolve));
  for (const chunk of chunks) stream.write(chunk);
  stream.end();
  await ended;
  return Buffer.concat(out).toString("latin1");
}

/** `input` cut into chunks at random places (a CRLF or a line's dot may straddle two chunks). */
function randomChunks(input: Buffer, random: () => number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let at = 0; at < input.length; ) {
    const size = 1 + Math.floor(random() * (input.length - at));
    chunks.push(input.subarray(at, at + size));
    at += size;
  }
  return chunks;
}

describe("the DATA encoding of upstream messages (nodemailer's DataStream, patched with a fast path)", () => {
  it("sends a clean message byte for byte, with the end mark", async () => {
    const body = "Subject: scan\r\n\r\nline one\r\nline two\r\n";
    expect(await encode([Buffer.from(body)])).toBe(`${body}.\r\n`);
    expect(await encode([Buffer.from("no newline at the end")])).toBe("no newline at the end\r\n.\r\n");
  });

  it("sends a clean message and its end mark in one write; a chunk over 64 KB is not held back to be copied", async () => {
    const writes = async (body: Buffer) => {
      const stream = new DataStream();
      let count = 0;
      stream.on("data", () => count++);
      const ended = new Promise((resolve) => stream.on("end", resolve));
      stream.end(body);
      await ended;
      return count;
    };
    expect(await writes(Buffer.from(`Subject: scan\r\n\r\n${"line\r\n".repeat(1_500)}`))).toBe(1);
    expect(await writes(Buffer.alloc(100 * 1024, "a"))).toBe(2);
  });

  it("doubles leading dots and makes bare CR and LF into CRLF, also where they straddle two chunks", async () => {
    expect(await encode([Buffer.from(".first\r\n..second\r\nthird")])).toBe(
      "..first\r\n...second\r\nthird\r\n.\r\n",
    );
    expect(await encode([Buffer.from("a\nb\rc\r\r\nd")])).toBe("a\r\nb\r\nc\r\n\r\nd\r\n.\r\n");
    // a CR at a chunk's end followed by a dot: the dot starts a line (no "\r.\r" smuggling)
    expect(await encode([Buffer.from("a\r"), Buffer.from(".\r\nb")])).toBe("a\r\n..\r\nb\r\n.\r\n");
    expect(await encode([Buffer.from("a\r"), Buffer.from("\nb")])).toBe("a\r\nb\r\n.\r\n");
    expect(await encode([Buffer.from("a\r\n"), Buffer.from(".b")])).toBe("a\r\n..b\r\n.\r\n");
    expect(await encode([Buffer.from("a"), Buffer.from("\nb")])).toBe("a\r\nb\r\n.\r\n");
  });

  it("encodes 20,000 random messages, cut into random chunks, as the rules say", async () => {
    let seed = 42;
    const random = () => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const alphabet = "\r\n.a\r\n";
    for (let n = 0; n < 20_000; n++) {
      const length = Math.floor(random() * 14);
      const input = Array.from({ length }, () => alphabet[Math.floor(random() * alphabet.length)]).join("");
      const chunks = randomChunks(Buffer.from(input, "latin1"), random);
      expect(await encode(chunks), JSON.stringify({ input, chunks: chunks.map(String) })).toBe(
        expected(input),
      );
    }
  });
});
