/**
 * CPU per message of the DATA encoding every delivery goes through (nodemailer's DataStream: dot-stuffing and
 * CRLF line ends), for a 10 KB message as the delivery benchmark sends and for one that needs escaping.
 * `npx tsx bench/data-stream-cost.ts`. sluice patches DataStream (patches/nodemailer+*.patch) with a fast path
 * for chunks that need nothing changed; docs/performance.md has the figures before and after.
 */
import DataStream from "nodemailer/lib/smtp-connection/data-stream";

const LINE = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incid\r\n";
const clean = Buffer.from(`Subject: scan\r\nFrom: a@example.com\r\n\r\n${LINE.repeat(120)}`);
const escaped = Buffer.from(
  `Subject: scan\r\n\r\n${`.${LINE}`.repeat(60)}${LINE.replace("\r\n", "\n").repeat(60)}`,
);

async function microsecondsPerMessage(body: Buffer, messages: number): Promise<number> {
  const started = process.hrtime.bigint();
  for (let i = 0; i < messages; i++) {
    const stream = new DataStream();
    const ended = new Promise((resolve) => stream.on("end", resolve));
    stream.resume();
    stream.end(body);
    await ended;
  }
  return Number(process.hrtime.bigint() - started) / 1_000 / messages;
}

for (const [name, body] of [
  ["clean 10 KB", clean],
  ["10 KB needing escapes", escaped],
] as const) {
  // the first rounds warm the JIT up; the last is reported
  let cost = 0;
  for (let round = 0; round < 4; round++) cost = await microsecondsPerMessage(body, 5_000);
  console.log(`${name} (${body.length} bytes): ${cost.toFixed(1)} µs per message`);
}
