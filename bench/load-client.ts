/**
 * SMTP load generators for the benchmark.
 *
 * - "raw": a small client over a plain socket that does what a fast MTA does on a reused connection:
 *   MAIL, RCPT and DATA in one write (PIPELINING), the body and the final dot in one write. It times the
 *   exact interval from writing the end of DATA (`.`) to reading the server's reply.
 * - "nodemailer": test/support/smtp-client.ts's openSubmission (nodemailer's SMTPConnection), as the tests
 *   use it. It cannot see the end of DATA, so its latency is the whole transaction (MAIL to the reply).
 */
import net from "node:net";
import { performance } from "node:perf_hooks";
import { openSubmission, type SubmissionSession } from "../test/support/smtp-client.js";

export type ClientKind = "raw" | "nodemailer";

interface Reply {
  code: number;
  text: string;
}

const REPLY_LINE = /^(\d{3})([ -]?)(.*)$/;

/** The DATA payload for a message: dot-stuffed, CRLF-terminated, followed by the `.` line. */
export function dataPayload(body: Buffer): Buffer {
  let text = body.toString("latin1").replace(/\r?\n/g, "\r\n");
  text = text.replace(/^\./gm, "..");
  if (!text.endsWith("\r\n")) text += "\r\n";
  return Buffer.from(`${text}.\r\n`, "latin1");
}

/** One SMTP connection driven with pipelined commands. */
export class PipelinedSmtp {
  private buffer = "";
  private lines: string[] = [];
  private readonly replies: Reply[] = [];
  private readonly waiters: { resolve(reply: Reply): void; reject(error: Error): void }[] = [];
  private closedError: Error | undefined;

  private constructor(private readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.receive(chunk));
    socket.on("error", () => undefined);
    socket.once("close", () => {
      this.closedError = new Error(`connection closed${this.buffer ? `; partial: ${this.buffer}` : ""}`);
      for (const waiter of this.waiters.splice(0)) waiter.reject(this.closedError);
    });
  }

  /** Connects, reads the greeting, says EHLO and, when given, authenticates with AUTH PLAIN. */
  static async open(options: {
    port: number;
    host?: string;
    auth?: { user: string; pass: string };
  }): Promise<PipelinedSmtp> {
    const socket = net.connect({ port: options.port, host: options.host ?? "127.0.0.1" });
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", () => {
        socket.removeListener("error", reject);
        resolve();
      });
      socket.once("error", reject);
    });
    const client = new PipelinedSmtp(socket);
    await client.expect(await client.read(), 220, "greeting");
    await client.expect(await client.command("EHLO bench.client"), 250, "EHLO");
    if (options.auth) {
      const token = Buffer.from(`\0${options.auth.user}\0${options.auth.pass}`).toString("base64");
      await client.expect(await client.command(`AUTH PLAIN ${token}`), 235, "AUTH");
    }
    return client;
  }

  /**
   * Sends one message (payload from dataPayload()). Resolves with the final reply and the ms from writing
   * the end of DATA to reading that reply; a refused MAIL/RCPT/DATA resolves with that reply (latency -1).
   */
  async send(from: string, to: string[], payload: Buffer): Promise<{ reply: Reply; latencyMs: number }> {
    const commands = [`MAIL FROM:<${from}>`, ...to.map((rcpt) => `RCPT TO:<${rcpt}>`), "DATA"];
    this.socket.write(`${commands.join("\r\n")}\r\n`);
    let refused: Reply | undefined;
    for (let i = 0; i < commands.length; i++) {
      const reply = await this.read();
      const wanted = i === commands.length - 1 ? 354 : 250;
      if (reply.code !== wanted) refused ??= reply;
    }
    if (refused) {
      await this.command("RSET");
      return { reply: refused, latencyMs: -1 };
    }
    this.socket.write(payload);
    const started = performance.now();
    const reply = await this.read();
    return { reply, latencyMs: performance.now() - started };
  }

  async quit(): Promise<void> {
    if (this.closedError) return;
    const closed = new Promise<void>((resolve) => this.socket.once("close", () => resolve()));
    this.socket.end("QUIT\r\n");
    const timer = setTimeout(() => this.socket.destroy(), 2_000);
    await closed;
    clearTimeout(timer);
  }

  private async command(line: string): Promise<Reply> {
    this.socket.write(`${line}\r\n`);
    return this.read();
  }

  private async expect(reply: Reply, code: number, what: string): Promise<void> {
    if (reply.code === code) return;
    this.socket.destroy();
    throw new Error(`${what}: expected ${code}, got ${reply.code} ${reply.text}`);
  }

  private read(): Promise<Reply> {
    const ready = this.replies.shift();
    if (ready) return Promise.resolve(ready);
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private receive(chunk: Buffer): void {
    this.buffer += chunk.toString("latin1");
    for (let end = this.buffer.indexOf("\n"); end >= 0; end = this.buffer.indexOf("\n")) {
      const line = this.buffer.slice(0, end).replace(/\r$/, "");
      this.buffer = this.buffer.slice(end + 1);
      const match = REPLY_LINE.exec(line);
      this.lines.push(match?.[3] ?? line);
      if (match && match[2] === "-") continue;
      const reply = { code: match ? Number(match[1]) : 0, text: this.lines.join("\n") };
      this.lines = [];
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(reply);
      else this.replies.push(reply);
    }
  }
}

/** A reused submission connection of either kind. */
export interface LoadSession {
  /** Resolves with ok and a latency in ms (see the module comment for what each kind times). */
  send(): Promise<{ ok: boolean; latencyMs: number; reply: string }>;
  close(): Promise<void>;
}

export interface MessageSpec {
  from: string;
  to: string[];
  body: Buffer;
}

export async function openLoadSession(
  kind: ClientKind,
  target: { port: number; auth?: { user: string; pass: string } },
  message: MessageSpec,
): Promise<LoadSession> {
  if (kind === "raw") {
    const client = await PipelinedSmtp.open(target);
    const payload = dataPayload(message.body);
    return {
      async send() {
        const { reply, latencyMs } = await client.send(message.from, message.to, payload);
        return { ok: reply.code === 250, latencyMs, reply: `${reply.code} ${reply.text}` };
      },
      close: () => client.quit(),
    };
  }
  const session: SubmissionSession = await openSubmission({
    port: target.port,
    startTls: false,
    ...(target.auth ? { auth: target.auth } : {}),
  });
  return {
    async send() {
      const started = performance.now();
      const result = await session.send({ from: message.from, to: message.to }, message.body);
      return { ok: result.ok, latencyMs: performance.now() - started, reply: result.response };
    },
    close: () => session.close(),
  };
}

export interface LoadOptions {
  kind: ClientKind;
  port: number;
  connections: number;
  /** Time not measured after every connection is open (JIT, connection ramp). */
  warmupMs: number;
  /** The measured window. */
  durationMs: number;
  message: MessageSpec;
  /** Called at the start and at the end of the measured window (e.g. to read CPU counters). */
  sample?: () => Promise<unknown>;
}

export interface LoadResult {
  kind: ClientKind;
  connections: number;
  windowMs: number;
  /** Messages answered 250 inside the window. */
  accepted: number;
  /** Messages answered otherwise inside the window. */
  failed: number;
  acceptedPerSecond: number;
  /** Messages accepted in each whole second of the window: shows stalls an average hides. */
  perSecond: number[];
  latencyMs: { p50: number; p90: number; p99: number; max: number };
  /** First few failure replies, for diagnosis. */
  failures: string[];
  samples: [unknown, unknown];
}

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] as number;
}

/** `connections` clients, each sending messages back to back over one connection, for warmup + duration. */
export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const sessions = await Promise.all(
    Array.from({ length: options.connections }, () =>
      openLoadSession(options.kind, { port: options.port }, options.message),
    ),
  );
  const startedAt = performance.now();
  const windowStart = startedAt + options.warmupMs;
  const windowEnd = windowStart + options.durationMs;
  const latencies: number[] = [];
  const failures: string[] = [];
  let accepted = 0;
  const perSecond: number[] = Array.from({ length: Math.floor(options.durationMs / 1000) }, () => 0);
  let failed = 0;
  const samples: Promise<unknown>[] = [];
  const sampleAt = (at: number) =>
    new Promise<void>((resolve) =>
      setTimeout(
        () => {
          samples.push(options.sample ? options.sample() : Promise.resolve(undefined));
          resolve();
        },
        Math.max(0, at - performance.now()),
      ),
    );
  const sampling = Promise.all([sampleAt(windowStart), sampleAt(windowEnd)]);

  await Promise.all(
    sessions.map(async (session) => {
      while (performance.now() < windowEnd) {
        let outcome: { ok: boolean; latencyMs: number; reply: string };
        try {
          outcome = await session.send();
        } catch (err) {
          outcome = { ok: false, latencyMs: -1, reply: (err as Error).message };
        }
        const now = performance.now();
        if (now >= windowStart && now < windowEnd) {
          if (outcome.ok) {
            accepted++;
            const second = Math.floor((now - windowStart) / 1000);
            perSecond[second] = (perSecond[second] ?? 0) + 1;
            latencies.push(outcome.latencyMs);
          } else {
            failed++;
            if (failures.length < 5) failures.push(outcome.reply);
          }
        }
        if (!outcome.ok && outcome.latencyMs < 0 && /closed|ECONN/.test(outcome.reply)) return;
      }
    }),
  );
  await sampling;
  const [first, last] = await Promise.all(samples);
  await Promise.all(sessions.map((s) => s.close().catch(() => undefined)));
  latencies.sort((a, b) => a - b);
  return {
    kind: options.kind,
    connections: options.connections,
    windowMs: options.durationMs,
    accepted,
    failed,
    acceptedPerSecond: accepted / (options.durationMs / 1000),
    perSecond: perSecond.slice(0, Math.floor(options.durationMs / 1000)),
    latencyMs: {
      p50: percentile(latencies, 50),
      p90: percentile(latencies, 90),
      p99: percentile(latencies, 99),
      max: latencies.at(-1) ?? Number.NaN,
    },
    failures,
    samples: [first, last],
  };
}
