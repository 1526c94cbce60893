/**
 * sluice benchmark: prints numbers, asserts nothing. Method and results: docs/performance.md.
 *
 * 1. Delivery at the connection-cap ceiling: two relay processes (and, for comparison, one) sharing one
 *    Redis (append-only, fsync always) deliver a queued backlog to a fake Office 365 (STARTTLS, AUTH, 50 ms
 *    per message, 432 beyond 3 connections per mailbox). Ceiling: 3 connections / 50 ms = 60 msg/s per
 *    mailbox. Each run is preceded by the same messages sent without sluice (bare nodemailer connections
 *    from as many processes: bench/bare-client-worker.mjs), the floor on this machine (`--no-bare` skips it).
 * 2. Ingest: 50 clients, one reused connection each, 10 KB messages, into one relay whose mail is held
 *    (no mailbox configured, so nothing is delivered); the same clients against a trivial sink for their
 *    own ceiling.
 * 3. Large (`--only large`): 20 clients at once, each one 25 MB scan (base64 attachment, about 34 MB), into
 *    one relay with its embedded Redis; accepted count, wall time, peak RSS of the relay and of Redis.
 * 4. 500 mailboxes (`--only mailboxes500`): delivery at the connection cap as in 1, 500 mailboxes, 2 relays.
 * 5. Backlog (`--only backlog`): 100,000 queued 1 KB messages in one paused mailbox (written with the Spool
 *    class, no SMTP): Redis and relay memory, and the wall time of `sluice queue status`.
 *
 * `npm run bench` (full: 7-8 minutes on 2 cores, half of it the 50-mailbox runs; 500 mailboxes take 1-2)
 * writes bench/results/latest.json. Options (results then go to latest-partial.json): `--quick` (about
 * 1 minute), `--only delivery|ingest|large|mailboxes500|backlog`, `--runs 2x1,2x10` (only these delivery runs:
 * relays x mailboxes), `--no-bare`, `--max-messages-per-connection N` (default 1,000, the relay's default),
 * `--delivery-concurrency N` (the relays' deliveryConcurrency; default the relay's, 200),
 * `--appendfsync everysec|no` (an experiment: Redis fsyncs less), `--redis-stall MS` (an experiment: Redis
 * answers nothing for MS once, 8 s into each delivery run, as during a slow fsync: CLIENT PAUSE ALL), `--keep` (keep the temporary folder with
 * the relays' logs, and each delivery as the upstream saw it: deliveries-d<run>.json, with the fake's
 * performance.now() times of MAIL FROM, 354, end of DATA and 250, and the relay's queue id), `--profile <dir>` (a CPU
 * profile of each relay during each delivery run, to open in Chrome's DevTools). BENCH_NODE_ARGS="--cpu-prof
 * --cpu-prof-dir=/tmp/prof" passes node options to the relays (profiles of their whole life).
 * The relays run from dist/ (npm run bench builds first).
 */
import { execFileSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import { createTestPki } from "../test/support/certs.js";
import { type FakeUpstream, type ReceivedMessage, startFakeUpstream } from "../test/support/fake-upstream.js";
import { type PrivateRedis, startPrivateRedis } from "../test/support/redis-server.js";
import { buildMessage } from "../test/support/smtp-client.js";
import {
  type ClientKind,
  dataPayload,
  type LoadResult,
  PipelinedSmtp,
  percentile,
  runLoad,
} from "./load-client.js";
import { childPid, machineCpuMs, procCpuMs, procRss, startWorker, type Worker } from "./processes.js";
import type { ProcessStats, WorkerMessage } from "./worker-ipc.js";

const QUICK = process.argv.includes("--quick");
/** The word after `--name` on the command line, if the flag is there. */
const flagValue = (name: string): string | undefined =>
  process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined;
/**
 * Messages an upstream connection carries before it is closed and a new one opened: the relay's
 * `upstream.maxMessagesPerConnection`, and the bare client's too. Default: the relay's default (1,000).
 */
const MESSAGES_PER_CONNECTION = Number(flagValue("--max-messages-per-connection") ?? 1_000);
/** `--delivery-concurrency N`: the relays' deliveryConcurrency (default: the relay's default). */
const DELIVERY_CONCURRENCY = flagValue("--delivery-concurrency");
/** `--runs 2x1,1x10`: only these delivery runs (relays x mailboxes), for development. */
const RUNS = flagValue("--runs")?.split(",");
const KEEP = process.argv.includes("--keep");
/** `--profile <dir>`: a CPU profile of each relay during each delivery run (not the queueing before it). */
const PROFILE_DIR = flagValue("--profile");
if (PROFILE_DIR) mkdirSync(PROFILE_DIR, { recursive: true });
/** `--only delivery` or `--only ingest`: run one part (for development; results go to a separate file). */
const ONLY = flagValue("--only") as "delivery" | "ingest" | "large" | "mailboxes500" | "backlog" | undefined;
const RUN_DELIVERY = !process.argv.includes("--only") || ONLY === "delivery";
const RUN_INGEST = !process.argv.includes("--only") || ONLY === "ingest";
const RUN_LARGE = !process.argv.includes("--only") || ONLY === "large";
const RUN_MAILBOXES500 = !process.argv.includes("--only") || ONLY === "mailboxes500";
const RUN_BACKLOG = !process.argv.includes("--only") || ONLY === "backlog";
const RUN_ALL = RUN_DELIVERY && RUN_INGEST && RUN_LARGE && RUN_MAILBOXES500 && RUN_BACKLOG;
/** The queue of mail whose client has no mailbox (src/spool/spool.ts HELD_QUEUE). */
const HELD_QUEUE_NAME = "held";
/** `--appendfsync everysec|no`: an experiment (results go to latest-partial.json); default always. */
const APPENDFSYNC = flagValue("--appendfsync") ?? "always";
/** `--redis-stall MS`: an experiment (results go to latest-partial.json); Redis paused once per delivery run. */
const REDIS_STALL_MS = Number(flagValue("--redis-stall") ?? 0);
const REDIS_STALL_AFTER_MS = 8_000;
const HERE = import.meta.dirname;
const ROOT = join(HERE, "..");
const RELAY_WORKER = join(HERE, "relay-worker.mjs");
const BARE_CLIENT_WORKER = join(HERE, "bare-client-worker.mjs");
const SINK_WORKER = join(HERE, "sink-worker.mjs");

const REPLY_DELAY_MS = 50;
const CONNECTIONS_PER_MAILBOX = 3;
/** Messages per second one mailbox can reach: 3 connections, each busy 50 ms per message. */
const CEILING_PER_MAILBOX = (CONNECTIONS_PER_MAILBOX * 1000) / REPLY_DELAY_MS;
const MESSAGE_BYTES = 10 * 1024;
const PASSWORD = "bench-mailbox-pass";
const CLIENT_PASSWORD = "bench-client-pass";
/** Concurrent SMTP sessions that pre-queue the delivery backlog. */
const QUEUEING_SESSIONS = 16;

const TARGETS = {
  deliveryShareOfCeiling: 0.95,
  messagesPerConnection: 50,
  count432: 0,
  maxConcurrentPerMailbox: CONNECTIONS_PER_MAILBOX,
  ingestMessagesPerSecond: 800,
  largeAccepted: "all 20",
  largeRelayPeakRssMB: 300,
};

const PLAN = QUICK
  ? {
      delivery: [
        { relays: 2, mailboxes: 1, perMailbox: 300 },
        { relays: 2, mailboxes: 10, perMailbox: 40 },
        { relays: 2, mailboxes: 50, perMailbox: 8 },
        { relays: 1, mailboxes: 1, perMailbox: 300 },
        { relays: 1, mailboxes: 10, perMailbox: 40 },
      ],
      ingest: { connections: 50, warmupMs: 500, durationMs: 3_000 },
      large: { clients: 5, attachmentBytes: 25 * 1024 * 1024 },
      mailboxes500: { relays: 2, mailboxes: 500, perMailbox: 2, deadlineSeconds: 120 },
      backlog: { messages: 10_000, concurrency: 200 },
    }
  : {
      delivery: [
        // each run lasts 20 s or more at the ceiling (1,200 messages per mailbox), so that a steady stream is
        // measured rather than the start: the first message takes about 250 ms (TLS, AUTH, leases), which was 7 %
        // of a 10-mailbox run of 200 per mailbox and a third of a 50-mailbox run of 40
        { relays: 2, mailboxes: 1, perMailbox: 2_000 },
        { relays: 2, mailboxes: 10, perMailbox: 1_200 },
        { relays: 2, mailboxes: 50, perMailbox: 1_200 },
        // for comparison: the same backlog through a single relay process
        { relays: 1, mailboxes: 1, perMailbox: 2_000 },
        { relays: 1, mailboxes: 10, perMailbox: 1_200 },
      ],
      ingest: { connections: 50, warmupMs: 1_000, durationMs: 10_000 },
      large: { clients: 20, attachmentBytes: 25 * 1024 * 1024 },
      // 2,000 messages, as in the 1-mailbox delivery runs
      mailboxes500: { relays: 2, mailboxes: 500, perMailbox: 4, deadlineSeconds: 180 },
      backlog: { messages: 100_000, concurrency: 200 },
    };
/** Run number of the 500-mailbox delivery (mailbox names and prefix); apart from PLAN.delivery's. */
const MAILBOXES500_RUN = 500;

// ---------------------------------------------------------------------------------------------- helpers

const round = (value: number, digits = 1) =>
  Number.isFinite(value) ? Math.round(value * 10 ** digits) / 10 ** digits : Number.NaN;
const mb = (bytes: number) => round(bytes / (1024 * 1024), 0);
const pct = (part: number, whole: number) => round((100 * part) / whole, 0);

function log(line: string): void {
  process.stderr.write(`[bench] ${line}\n`);
}

/** A ~10 KB text message (headers included). */
function tenKilobyteMessage(from: string, to: string): Buffer {
  const probe = buildMessage({ from, to: [to], bodyBytes: MESSAGE_BYTES, subject: "bench" });
  return buildMessage({
    from,
    to: [to],
    subject: "bench",
    bodyBytes: MESSAGE_BYTES - (probe.length - MESSAGE_BYTES),
  });
}

/** Median ms of write(10 KB) + fsync on the temp file system, the cost Redis pays per `appendfsync always`. */
function measureFsync(dir: string, rounds = 200): number {
  const file = join(dir, "fsync-probe");
  const fd = openSync(file, "w");
  const block = Buffer.alloc(MESSAGE_BYTES, 0x61);
  const times: number[] = [];
  try {
    for (let i = 0; i < rounds; i++) {
      writeSync(fd, block);
      const started = performance.now();
      fsyncSync(fd);
      times.push(performance.now() - started);
    }
  } finally {
    closeSync(fd);
    rmSync(file, { force: true });
  }
  times.sort((a, b) => a - b);
  return percentile(times, 50);
}

/** The commit measured, and whether src/ had changes not committed. */
function gitState(): { commit: string; srcDirty: boolean } {
  try {
    const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], {
      cwd: ROOT,
      encoding: "utf8",
    }).trim();
    const status = execFileSync("git", ["status", "--porcelain", "--", "src"], {
      cwd: ROOT,
      encoding: "utf8",
    });
    return { commit, srcDirty: status.trim().length > 0 };
  } catch {
    return { commit: "unknown", srcDirty: false };
  }
}

function redisVersion(): string {
  try {
    return execFileSync("redis-server", ["--version"], { encoding: "utf8" }).trim();
  } catch {
    return "unknown";
  }
}

/** Flushes dirty pages so one run's writes do not land on the next run's fsyncs. */
function syncDisks(): void {
  try {
    execFileSync("sync");
  } catch {
    // best effort
  }
}

export interface RedisProbe {
  /** Slowest `appendfsync always` fsync Redis saw (its latency monitor, 1 ms resolution). */
  fsyncMaxMs: number;
  /** Seconds in which some fsync took 1 ms or more. */
  slowFsyncSeconds: number;
  /** Forks (AOF rewrites) during the run: they compete with the fsyncs for the disk. */
  aofRewrites: number;
}

const totalForks = (info: string) => Number(/total_forks:(\d+)/.exec(info)?.[1] ?? Number.NaN);

/** Starts watching Redis's fsync latency and forks; call the result at the end of the window. */
async function probeRedis(admin: Redis): Promise<() => Promise<RedisProbe>> {
  await admin.config("SET", "latency-monitor-threshold", "1");
  if (APPENDFSYNC !== "always") await admin.config("SET", "appendfsync", APPENDFSYNC);
  await admin.call("LATENCY", "RESET");
  const forks = totalForks(await admin.info("stats"));
  return async () => {
    const history = (await admin.call("LATENCY", "HISTORY", "aof-fsync-always")) as [number, number][];
    return {
      fsyncMaxMs: Math.max(0, ...history.map(([, ms]) => Number(ms))),
      slowFsyncSeconds: history.length,
      aofRewrites: totalForks(await admin.info("stats")) - forks,
    };
  };
}

function relayConfig(options: {
  redis?: string;
  prefix: string;
  dataDir: string;
  upstream?: { port: number; ca: string };
  mailboxes: string[];
  clients: Record<string, unknown>[];
}): Record<string, unknown> {
  return {
    listen: [
      {
        port: 0,
        host: "127.0.0.1",
        tls: "none",
        allowInsecureAuth: true,
        // every benchmark client comes from 127.0.0.1: the per-address default (50) would turn some away
        maxClients: 1_000,
        maxClientsPerAddress: 1_000,
      },
    ],
    ...(options.redis ? { redis: options.redis } : {}),
    redisPrefix: options.prefix,
    dataDir: options.dataDir,
    hostname: "relay.bench",
    shutdownTimeout: 5_000,
    ...(DELIVERY_CONCURRENCY ? { deliveryConcurrency: Number(DELIVERY_CONCURRENCY) } : {}),
    ...(options.upstream
      ? {
          upstream: {
            host: "127.0.0.1",
            port: options.upstream.port,
            tls: "starttls",
            ca: options.upstream.ca,
            maxMessagesPerConnection: MESSAGES_PER_CONNECTION,
          },
        }
      : {}),
    // a failed delivery would otherwise wait the default 30 s and stall the run; none is expected
    retry: { firstDelay: 1_000, maxDelay: 5_000 },
    defaults: {
      limits: {
        connections: CONNECTIONS_PER_MAILBOX,
        messagesPerMinute: "unlimited",
        recipientsPerDay: "unlimited",
      },
    },
    mailboxes: Object.fromEntries(options.mailboxes.map((m) => [m, { password: PASSWORD }])),
    clients: options.clients,
  };
}

interface CpuSample {
  at: number;
  relays: ProcessStats[];
  redisMs: number;
  benchMs: number;
  machineMs: number;
}

async function sampleCpu(
  relays: Worker[],
  redisPid: number | undefined,
  /** `--profile`: "start", or the file for relay i's profile (stops it). */
  profile?: (relay: number) => string,
): Promise<CpuSample> {
  const stats = await Promise.all(relays.map((r, i) => r.stats(profile?.(i))));
  const cpu = process.cpuUsage();
  return {
    at: performance.now(),
    relays: stats,
    redisMs: procCpuMs(redisPid),
    benchMs: (cpu.user + cpu.system) / 1000,
    machineMs: machineCpuMs(),
  };
}

/**
 * Cores that delivery at the target share of the ceiling would take if each message cost what it cost in the
 * run (every process of the run together). More than the machine has: the target cannot be reached on it at
 * that cost per message, whatever the scheduling. A rough bound: the cost per message falls a little as load
 * rises (more work per wake-up).
 */
function coresAtTarget(cpuMsPerMessage: number, ceilingPerSecond: number): number {
  return round((cpuMsPerMessage * TARGETS.deliveryShareOfCeiling * ceilingPerSecond) / 1000, 2);
}

/** Lines of a relay log by pino "event" field and level. */
function scanLog(file: string): { events: Record<string, number>; warnings: number; errors: number } {
  const events: Record<string, number> = {};
  let warnings = 0;
  let errors = 0;
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return { events, warnings, errors };
  }
  for (const line of text.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const entry = JSON.parse(line) as { level?: number; event?: string };
      if (entry.event) events[entry.event] = (events[entry.event] ?? 0) + 1;
      if ((entry.level ?? 0) >= 50) errors++;
      else if ((entry.level ?? 0) >= 40) warnings++;
    } catch {
      // not a log line
    }
  }
  return { events, warnings, errors };
}

async function runPool<T>(tasks: (() => Promise<T>)[], concurrency: number): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, tasks.length) }, async () => {
      while (next < tasks.length) {
        const index = next++;
        results[index] = await (tasks[index] as () => Promise<T>)();
      }
    }),
  );
  return results;
}

function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [
    headers,
    ...rows.map((row) => row.map((cell) => (typeof cell === "number" ? fmt(cell) : cell))),
  ];
  const widths = headers.map((_, i) => Math.max(...cells.map((row) => String(row[i] ?? "").length)));
  const line = (row: (string | number)[]) =>
    row.map((cell, i) => String(cell).padStart(widths[i] ?? 0)).join("  ");
  return [
    line(cells[0] as string[]),
    widths.map((w) => "-".repeat(w)).join("  "),
    ...cells.slice(1).map(line),
  ].join("\n");
}

function fmt(value: number): string {
  if (!Number.isFinite(value)) return "n/a";
  if (Number.isInteger(value)) return String(value);
  return value.toFixed(Math.abs(value) >= 100 ? 0 : 1);
}

// --------------------------------------------------------------------------------------------- delivery

/** The same delivery without sluice: what nodemailer and the fake upstream reach by themselves. */
interface BareClientResult {
  processes: number;
  mailboxes: number;
  messages: number;
  perSecond: number;
  perMailbox: DeliveryResult["perMailbox"];
  messagesPerConnection: number;
  count432: number;
  /** The client processes' CPU per message, all together (compare perMessage.relayCpuMs). */
  clientCpuMsPerMessage: number;
  /** The benchmark process's CPU per message: the fake upstream's TLS and SMTP. */
  upstreamCpuMsPerMessage: number;
  /** Cores the run's CPU per message (clients and upstream) would take at the target share (coresAtTarget). */
  coresAtTarget: number;
  turnaroundSplitMs: TurnaroundSplit;
}

interface DeliverySpec {
  relays: number;
  mailboxes: number;
  perMailbox: number;
  deadlineSeconds?: number;
}

interface Spread {
  p50: number;
  p90: number;
  p99: number;
  mean: number;
}

/**
 * Where each message's time on a connection goes beyond the upstream's 50 ms, ms (p50/p90, from the fake
 * upstream's sub-millisecond clock). client: from the previous message's 250 to this one's end of DATA, the
 * sum of handoff (250 -> MAIL FROM read: the client's turnaround), envelope (MAIL FROM -> 354 sent: the
 * pipelined MAIL/RCPT/DATA round) and body (354 -> end of DATA read); upstream: end of DATA -> 250 beyond
 * its 50 ms (timer slack and processing).
 */
interface TurnaroundSplit {
  /** From one 250 to the next on a connection, less the upstream's 50 ms: what each message costs beyond it. */
  gap: Spread;
  client: Spread;
  handoff: Spread;
  envelope: Spread;
  body: Spread;
  upstream: Spread;
}

function turnaroundSplit(messages: ReceivedMessage[]): TurnaroundSplit {
  const parts = { gap: [], client: [], handoff: [], envelope: [], body: [], upstream: [] } as Record<
    keyof TurnaroundSplit,
    number[]
  >;
  const byConnection = new Map<string, ReceivedMessage[]>();
  for (const m of messages) {
    byConnection.set(m.connectionId, [...(byConnection.get(m.connectionId) ?? []), m]);
    parts.upstream.push(m.timing.replied - m.timing.dataEnd - REPLY_DELAY_MS);
  }
  for (const list of byConnection.values()) {
    list.sort((a, b) => a.timing.replied - b.timing.replied);
    for (let i = 1; i < list.length; i++) {
      const [previous, next] = [(list[i - 1] as ReceivedMessage).timing, (list[i] as ReceivedMessage).timing];
      parts.gap.push(next.replied - previous.replied - REPLY_DELAY_MS);
      parts.client.push(next.dataEnd - previous.replied);
      parts.handoff.push(next.mailFrom - previous.replied);
      parts.envelope.push(next.dataStart - next.mailFrom);
      parts.body.push(next.dataEnd - next.dataStart);
    }
  }
  const spread = (list: number[]): Spread => {
    list.sort((a, b) => a - b);
    const mean = list.reduce((sum, v) => sum + v, 0) / list.length;
    return {
      p50: round(percentile(list, 50), 2),
      p90: round(percentile(list, 90), 2),
      p99: round(percentile(list, 99), 2),
      mean: round(mean, 2),
    };
  };
  return {
    gap: spread(parts.gap),
    client: spread(parts.client),
    handoff: spread(parts.handoff),
    envelope: spread(parts.envelope),
    body: spread(parts.body),
    upstream: spread(parts.upstream),
  };
}

/** "p50/p90" of a spread. */
const spreadText = (s: Spread) => `${s.p50}/${s.p90}`;
/** "mean/p50/p99" of a spread. */
const gapText = (s: Spread) => `${s.mean}/${s.p50}/${s.p99}`;

/** Table columns of a TurnaroundSplit (splitCells). */
const SPLIT_HEADERS = [
  "250->next 250 -50 ms mean/p50/p99",
  "of which 250->end of DATA p50/p90",
  "= 250->MAIL",
  "+ MAIL->354",
  "+ body",
  "and upstream beyond 50 ms p50/p90",
];

/**
 * Table columns of perMailboxRates' slot figures (slotCells): how long a mailbox took to have all 3
 * connections carrying mail, and slotUse (the share of the ceiling is slot use x 50 / (50 + the mean gap)).
 */
const SLOT_HEADERS = ["3rd connection's 1st msg ms p50/max", "slots carrying mail %"];

const slotCells = ({ allSlotsMs, slotUse }: DeliveryResult["perMailbox"]) => [
  `${allSlotsMs.p50}/${allSlotsMs.max}`,
  fmt(100 * slotUse),
];

const splitCells = (split: TurnaroundSplit) => [
  gapText(split.gap),
  spreadText(split.client),
  spreadText(split.handoff),
  spreadText(split.envelope),
  spreadText(split.body),
  spreadText(split.upstream),
];

/**
 * Messages per second each mailbox got from `startedAt` to its last message, and the longest time any
 * mailbox went without one (from the start, between messages), ms. The share of the ceiling is the product of
 * two parts, also given as means over the mailboxes: slotUse, the share of the mailbox's time (start to last
 * message) x 3 slots during which a connection of it was carrying messages (from its first MAIL FROM to its
 * last 250), and the rest, the share of that connection time that was the upstream's 50 ms per message (what
 * each message costs beyond it: the turnaround split).
 */
function perMailboxRates(messages: ReceivedMessage[], mailboxes: string[], startedAt: number) {
  let longestStall = 0;
  const slotUses: number[] = [];
  const allSlotsAt: number[] = [];
  const rates = mailboxes.map((mailbox) => {
    const mineMessages = messages.filter((m) => m.user === mailbox);
    const mine = mineMessages.map((m) => m.receivedAt).sort((a, b) => a - b);
    mine.forEach((at, i) => {
      longestStall = Math.max(longestStall, at - (i === 0 ? startedAt : (mine[i - 1] as number)));
    });
    const end = mine.at(-1) ?? startedAt;
    const spans = new Map<string, { from: number; to: number }>();
    const firstOnConnection = new Map<string, number>();
    for (const { connectionId, receivedAt } of mineMessages) {
      firstOnConnection.set(
        connectionId,
        Math.min(firstOnConnection.get(connectionId) ?? receivedAt, receivedAt),
      );
    }
    const thirdConnectionAt = [...firstOnConnection.values()].sort((a, b) => a - b)[
      CONNECTIONS_PER_MAILBOX - 1
    ];
    if (thirdConnectionAt !== undefined) allSlotsAt.push(thirdConnectionAt - startedAt);
    for (const { connectionId, timing } of mineMessages) {
      const span = spans.get(connectionId);
      spans.set(connectionId, {
        from: Math.min(span?.from ?? timing.mailFrom, timing.mailFrom),
        to: Math.max(span?.to ?? timing.replied, timing.replied),
      });
    }
    const busyMs = [...spans.values()].reduce((sum, span) => sum + span.to - span.from, 0);
    if (end > startedAt) slotUses.push(busyMs / (CONNECTIONS_PER_MAILBOX * (end - startedAt)));
    return mine.length ? mine.length / ((end - startedAt) / 1000) : 0;
  });
  const mean = rates.reduce((a, b) => a + b, 0) / rates.length;
  return {
    longestStall,
    perMailbox: {
      meanPerSecond: round(mean),
      minPerSecond: round(Math.min(...rates)),
      meanShare: round(mean / CEILING_PER_MAILBOX, 3),
      minShare: round(Math.min(...rates) / CEILING_PER_MAILBOX, 3),
      slotUse: round(slotUses.reduce((a, b) => a + b, 0) / Math.max(1, slotUses.length), 3),
      allSlotsMs: {
        p50: round(
          percentile(
            allSlotsAt.sort((a, b) => a - b),
            50,
          ),
          0,
        ),
        max: allSlotsAt.at(-1) ?? Number.NaN,
      },
    },
  };
}

/**
 * The floor under a delivery run: the same mailboxes' messages sent by bare nodemailer SMTPConnections
 * (bench/bare-client-worker.mjs: STARTTLS, AUTH, PIPELINING, one message after another on each) straight to
 * the fake upstream, with no queue and no Redis, from as many OS processes as the run has relays. Each
 * mailbox's 3 connections are dealt to the processes in turn (2 processes, 1 mailbox: 2 + 1), and each
 * connection sends a third of the mailbox's messages, on a new connection after every
 * MESSAGES_PER_CONNECTION as the relay does.
 */
async function bareClientRun(env: DeliveryEnv, run: number, spec: DeliverySpec): Promise<BareClientResult> {
  const mailboxes = Array.from({ length: spec.mailboxes }, (_, k) => mailboxName(run, k));
  const perConnection = Math.ceil(spec.perMailbox / CONNECTIONS_PER_MAILBOX);
  log(
    `delivery without sluice: ${spec.mailboxes} mailbox(es) x ${CONNECTIONS_PER_MAILBOX} bare nodemailer connections x ${perConnection} messages, ${spec.relays} process(es)`,
  );
  env.upstream.reset();
  const connections = mailboxes.flatMap((user) =>
    Array.from({ length: CONNECTIONS_PER_MAILBOX }, () => ({ user, messages: perConnection })),
  );
  const workers: Worker[] = [];
  try {
    for (let i = 0; i < spec.relays; i++) {
      const planFile = join(env.dir, `bare-d${run}-${i}.json`);
      writeFileSync(
        planFile,
        JSON.stringify({
          port: env.upstream.port,
          caFile: env.caFile,
          password: PASSWORD,
          // the From: of each message is the first mailbox's: the fake checks MAIL FROM, not the header
          body: tenKilobyteMessage(mailboxes[0] as string, "reader@example.org").toString("utf8"),
          connections: connections.filter((_, j) => j % spec.relays === i),
          messagesPerConnection: MESSAGES_PER_CONNECTION,
        }),
      );
      workers.push(await startWorker(BARE_CLIENT_WORKER, [planFile], join(env.dir, `bare-d${run}-${i}.log`)));
    }
    const before = await Promise.all(workers.map((w) => w.stats()));
    const benchBefore = process.cpuUsage();
    const startedAt = Date.now();
    await Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            w.child.on("message", (message: WorkerMessage) => message.type === "done" && resolve());
            w.child.once("exit", (code) =>
              reject(new Error(`bare client exited with ${code}: see ${w.logFile}`)),
            );
            w.child.send({ type: "go" } satisfies WorkerMessage);
          }),
      ),
    );
    const seconds = (Date.now() - startedAt) / 1000;
    const after = await Promise.all(workers.map((w) => w.stats()));
    const bench = process.cpuUsage(benchBefore);
    const messages = [...env.upstream.messages];
    const { perMailbox } = perMailboxRates(messages, mailboxes, startedAt);
    const cpuMs = after.reduce((sum, a, i) => sum + a.cpuMs - (before[i] as ProcessStats).cpuMs, 0);
    const result: BareClientResult = {
      processes: spec.relays,
      mailboxes: spec.mailboxes,
      messages: messages.length,
      perSecond: round(messages.length / seconds),
      perMailbox,
      messagesPerConnection: round(messages.length / env.upstream.connectionCount()),
      count432: mailboxes.reduce((sum, m) => sum + env.upstream.count432(m), 0),
      clientCpuMsPerMessage: round(cpuMs / messages.length, 2),
      upstreamCpuMsPerMessage: round((bench.user + bench.system) / 1000 / messages.length, 2),
      coresAtTarget: coresAtTarget(
        (cpuMs + (bench.user + bench.system) / 1000) / messages.length,
        spec.mailboxes * CEILING_PER_MAILBOX,
      ),
      turnaroundSplitMs: turnaroundSplit(messages),
    };
    log(
      `  ${result.perSecond} msg/s (${round(perMailbox.meanShare * 100)}% of the ceiling per mailbox), ${result.count432} x 432`,
    );
    return result;
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
  }
}

interface DeliveryEnv {
  dir: string;
  redis: PrivateRedis;
  admin: Redis;
  upstream: FakeUpstream;
  caFile: string;
}

interface DeliveryResult {
  relays: number;
  mailboxes: number;
  messages: number;
  /** Messages the upstream accepted, duplicates included. */
  delivered: number;
  /** Distinct queue ids among them: delivered - distinctDelivered were delivered twice. */
  distinctDelivered: number;
  queueing: { seconds: number; perSecond: number; refused: number };
  /** From resume (clock start) to the last message the upstream accepted. */
  seconds: number;
  firstMessageMs: number;
  totalPerSecond: number;
  /** Rate between the 10th and the 90th percentile of delivery times (ramp-up and tail left out). */
  steadyPerSecond: number;
  ceilingPerSecond: number;
  perMailbox: {
    meanPerSecond: number;
    minPerSecond: number;
    meanShare: number;
    minShare: number;
    /** Connection time carrying messages / (3 slots x the mailbox's time), mean over mailboxes. */
    slotUse: number;
    /** From the start until a mailbox's third connection delivered its first message, over the mailboxes. */
    allSlotsMs: { p50: number; max: number };
  };
  steadyShare: number;
  upstreamConnections: number;
  authentications: number;
  messagesPerConnection: number;
  count432: number;
  maxConcurrentPerMailbox: number;
  /** Longest time any mailbox went without a delivery (from the clock start, between deliveries), ms. */
  longestStallMs: number;
  /** Per message on a connection beyond the upstream's 50 ms, and its parts; `client` is the relay's side. */
  turnaroundSplitMs: TurnaroundSplit;
  /** Each relay process: CPU % of one core over the delivery, RSS now and peak, messages it delivered. */
  relayProcesses: {
    cpuPercent: number;
    rssMB: number;
    maxRssMB: number;
    delivered: number;
    deferred: number;
    /** The relay's event loop delay over the delivery. */
    loopDelayMs: ProcessStats["loopDelayMs"];
  }[];
  redisCpuPercent: number;
  /**
   * Per delivered message: the relays' CPU (all processes together, ms), Redis's and the benchmark process's
   * (the fake upstream), and the commands Redis ran.
   */
  perMessage: { relayCpuMs: number; redisCpuMs: number; upstreamCpuMs: number; redisCommands: number };
  /** Cores the run's CPU per message (relays, Redis, upstream) would take at the target share (coresAtTarget). */
  coresAtTarget: number;
  redis: RedisProbe;
  /** The benchmark process itself (fake upstream's TLS and SMTP), % of one core. */
  benchCpuPercent: number;
  /** CPU the rest of the machine used meanwhile (other people's processes), % of one core. */
  otherCpuPercent: number;
  /** Redis INFO clients connected_clients at the end of the delivery (relays and the benchmark's own). */
  redisConnectedClients: number;
  logProblems: { warnings: number; errors: number; events: Record<string, number> };
  timedOut: boolean;
}

/** Where queueIdOf looks for the queue id: the fake upstream keeps no more of each message. */
const QUEUE_ID_HEAD_BYTES = 2_048;

/** The relay's queue id from the Received header it adds (`... with ESMTP id <queue id>`). */
function queueIdOf(raw: Buffer): string {
  const head = raw.subarray(0, QUEUE_ID_HEAD_BYTES).toString("latin1");
  return / id ([0-9A-Z]+)/.exec(head)?.[1] ?? head;
}

function mailboxName(run: number, index: number): string {
  return `mb${run}-${String(index).padStart(2, "0")}@contoso.bench`;
}

async function deliveryRun(env: DeliveryEnv, run: number, spec: DeliverySpec): Promise<DeliveryResult> {
  const mailboxes = Array.from({ length: spec.mailboxes }, (_, k) => mailboxName(run, k));
  const total = spec.mailboxes * spec.perMailbox;
  const prefix = `bench-d${run}`;
  const clientOf = (k: number) => `client${run}-${k}`;
  log(`delivery: ${spec.mailboxes} mailbox(es) x ${spec.perMailbox} messages, ${spec.relays} relay(s)`);
  env.upstream.reset();

  // Hold deliveries: a paused queue hands no job to the relays' workers until resume().
  const queues = mailboxes.map((m) => new Queue(m, { connection: env.admin, prefix }));
  await Promise.all(queues.map((q) => q.pause()));

  const configFile = join(env.dir, `relay-d${run}.json`);
  writeFileSync(
    configFile,
    JSON.stringify(
      relayConfig({
        redis: env.redis.url,
        prefix,
        dataDir: join(env.dir, `data-d${run}`),
        upstream: { port: env.upstream.port, ca: env.caFile },
        mailboxes,
        clients: mailboxes.map((mailbox, k) => ({
          name: clientOf(k),
          username: clientOf(k),
          password: CLIENT_PASSWORD,
          mailbox,
        })),
      }),
    ),
  );
  const relays: Worker[] = [];
  try {
    relays.push(
      ...(await Promise.all(
        Array.from({ length: spec.relays }, (_, i) =>
          startWorker(RELAY_WORKER, [configFile], join(env.dir, `relay-d${run}-${i}.log`)),
        ),
      )),
    );

    // Pre-queue through the relays' SMTP ports, alternating between the two relays.
    const sessionsPerMailbox = Math.max(1, Math.floor(QUEUEING_SESSIONS / spec.mailboxes));
    const tasks: (() => Promise<{ ok: number; refused: number; reply?: string }>)[] = [];
    mailboxes.forEach((mailbox, k) => {
      // From: the mailbox itself, as a scanner or an application sending as its mailbox does
      const payload = dataPayload(tenKilobyteMessage(mailbox, `user${k}@example.net`));
      for (let s = 0; s < sessionsPerMailbox; s++) {
        const count =
          Math.floor(spec.perMailbox / sessionsPerMailbox) +
          (s < spec.perMailbox % sessionsPerMailbox ? 1 : 0);
        const relay = relays[(k + s) % relays.length] as Worker;
        tasks.push(async () => {
          const client = await PipelinedSmtp.open({
            port: relay.port,
            auth: { user: clientOf(k), pass: CLIENT_PASSWORD },
          });
          let ok = 0;
          let refused = 0;
          let refusal: string | undefined;
          for (let i = 0; i < count; i++) {
            const { reply } = await client.send(mailbox, [`user${k}@example.net`], payload);
            if (reply.code === 250) ok++;
            else {
              refused++;
              refusal ??= `${reply.code} ${reply.text}`;
            }
          }
          await client.quit();
          return { ok, refused, ...(refusal ? { reply: refusal } : {}) };
        });
      }
    });
    const queueStarted = performance.now();
    const submitted = await runPool(tasks, QUEUEING_SESSIONS);
    const queueSeconds = (performance.now() - queueStarted) / 1000;
    const queuedOk = submitted.reduce((sum, r) => sum + r.ok, 0);
    const refused = submitted.reduce((sum, r) => sum + r.refused, 0);
    const refusal = submitted.find((r) => r.reply)?.reply;
    if (refusal) log(`  submissions refused, e.g.: ${refusal}`);
    if (queuedOk === 0) throw new Error(`the relays refused every submission: ${refusal}`);
    const counts = await Promise.all(queues.map((q) => q.getJobCounts("wait", "prioritized")));
    const waiting = counts.reduce((sum, c) => sum + Object.values(c).reduce((a, b) => a + b, 0), 0);
    log(`  queued ${queuedOk} (${refused} refused) in ${queueSeconds.toFixed(1)} s; ${waiting} jobs waiting`);
    if (env.upstream.messages.length > 0) log("  warning: messages were delivered before the clock started");

    // Start the clock and let the relays go.
    syncDisks();
    const endProbe = await probeRedis(env.admin);
    const before = await sampleCpu(relays, env.redis.pid(), PROFILE_DIR ? () => "start" : undefined);
    const commandsBefore = infoField(await env.admin.info("stats"), "total_commands_processed");
    const commandStatsBefore = commandCalls(await env.admin.info("commandstats"));
    const startedAt = Date.now();
    await Promise.all(queues.map((q) => q.resume()));
    // the relays' schedulers hear of ready mail by pub/sub (as from Spool.wake); they would otherwise find it by polling
    await Promise.all(mailboxes.map((m) => env.admin.publish(`${prefix}:wake`, m)));
    const ideal = spec.perMailbox / CEILING_PER_MAILBOX;
    const deadline = startedAt + (spec.deadlineSeconds ?? ideal * 3 + 20) * 1000;
    // distinct queue ids (Received: ... id <queue id>): a message delivered twice must not end the wait early
    const distinct = new Set<string>();
    let seen = 0;
    const distinctCount = () => {
      for (const m of env.upstream.messages.slice(seen)) distinct.add(queueIdOf(m.raw));
      seen = env.upstream.messages.length;
      return distinct.size;
    };
    const stall =
      REDIS_STALL_MS > 0
        ? setTimeout(() => {
            env.admin.call("CLIENT", "PAUSE", String(REDIS_STALL_MS), "ALL").catch(() => {});
          }, REDIS_STALL_AFTER_MS)
        : undefined;
    while (distinctCount() < queuedOk && Date.now() < deadline) await sleep(10);
    clearTimeout(stall);
    const timedOut = distinctCount() < queuedOk;
    const after = await sampleCpu(
      relays,
      env.redis.pid(),
      PROFILE_DIR
        ? (i) => join(PROFILE_DIR, `relay${i + 1}-${spec.relays}x${spec.mailboxes}.cpuprofile`)
        : undefined,
    );
    // less the two INFO calls of the benchmark itself
    const redisCommands =
      infoField(await env.admin.info("stats"), "total_commands_processed") - commandsBefore - 2;
    const commandStats = commandCalls(await env.admin.info("commandstats"));
    const busiest = [...commandStats]
      .map(([name, calls]) => [name, calls - (commandStatsBefore.get(name) ?? 0)] as const)
      .filter(([, calls]) => calls > 0)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 24);
    log(`  Redis commands per message: ${busiest.map(([n, c]) => `${n} ${round(c / total, 1)}`).join(", ")}`);
    const redisClients = infoField(await env.admin.info("clients"), "connected_clients");
    const redisProbe = await endProbe();
    const wallMs = after.at - before.at;

    const messages: ReceivedMessage[] = env.upstream.messages.slice();
    if (KEEP) {
      // each delivery as the upstream saw it, for a closer look (times from the start, ms)
      const rows = messages.map((m) => [
        m.user,
        m.connectionId,
        m.receivedAt - startedAt,
        m.timing.mailFrom,
        m.timing.dataStart,
        m.timing.dataEnd,
        m.timing.replied,
        queueIdOf(m.raw),
      ]);
      writeFileSync(join(env.dir, `deliveries-d${run}.json`), JSON.stringify(rows));
    }
    const times = messages.map((m) => m.receivedAt).sort((a, b) => a - b);
    const last = times.at(-1) ?? startedAt;
    const seconds = (last - startedAt) / 1000;
    const lo = Math.floor(times.length * 0.1);
    const hi = Math.max(lo, Math.ceil(times.length * 0.9) - 1);
    const steady =
      hi > lo ? (hi - lo) / (((times[hi] as number) - (times[lo] as number)) / 1000) : Number.NaN;

    const { longestStall, perMailbox } = perMailboxRates(messages, mailboxes, startedAt);
    const auths = mailboxes.reduce((sum, m) => sum + env.upstream.authCount(m), 0);
    const stopCodes = await Promise.all(relays.map((r) => r.stop()));
    if (stopCodes.some((code) => code !== 0)) log(`  warning: relay exit codes ${stopCodes.join(", ")}`);
    const scans = relays.map((r) => scanLog(r.logFile));
    const events: Record<string, number> = {};
    for (const scan of scans) {
      for (const [event, count] of Object.entries(scan.events)) events[event] = (events[event] ?? 0) + count;
    }

    const ceiling = spec.mailboxes * CEILING_PER_MAILBOX;
    const relaysCpuMs = after.relays.reduce(
      (sum, r, i) => sum + r.cpuMs - (before.relays[i] as ProcessStats).cpuMs,
      0,
    );
    const redisCpuMs = after.redisMs - before.redisMs;
    const benchCpuMs = after.benchMs - before.benchMs;
    const result: DeliveryResult = {
      relays: spec.relays,
      mailboxes: spec.mailboxes,
      messages: total,
      delivered: messages.length,
      distinctDelivered: new Set(messages.map((m) => queueIdOf(m.raw))).size,
      queueing: { seconds: round(queueSeconds, 2), perSecond: round(queuedOk / queueSeconds, 0), refused },
      seconds: round(seconds, 2),
      firstMessageMs: (times[0] ?? Number.NaN) - startedAt,
      totalPerSecond: round(messages.length / seconds),
      steadyPerSecond: round(steady),
      ceilingPerSecond: ceiling,
      perMailbox,
      steadyShare: round(steady / ceiling, 3),
      upstreamConnections: env.upstream.connectionCount(),
      authentications: auths,
      messagesPerConnection: round(messages.length / auths),
      count432: mailboxes.reduce((sum, m) => sum + env.upstream.count432(m), 0),
      maxConcurrentPerMailbox: Math.max(...mailboxes.map((m) => env.upstream.maxConcurrent(m))),
      longestStallMs: longestStall,
      turnaroundSplitMs: turnaroundSplit(messages),
      relayProcesses: relays.map((_, i) => {
        const a = before.relays[i] as ProcessStats;
        const b = after.relays[i] as ProcessStats;
        const scan = scans[i] as ReturnType<typeof scanLog>;
        return {
          cpuPercent: pct(b.cpuMs - a.cpuMs, wallMs),
          rssMB: mb(b.rss),
          maxRssMB: mb(b.maxRss),
          delivered: scan.events.delivered ?? 0,
          deferred: scan.events.deferred ?? 0,
          loopDelayMs: b.loopDelayMs,
        };
      }),
      redisCpuPercent: pct(redisCpuMs, wallMs),
      perMessage: {
        relayCpuMs: round(relaysCpuMs / messages.length, 2),
        redisCpuMs: round(redisCpuMs / messages.length, 2),
        upstreamCpuMs: round(benchCpuMs / messages.length, 2),
        redisCommands: round(redisCommands / messages.length, 1),
      },
      coresAtTarget: coresAtTarget((relaysCpuMs + redisCpuMs + benchCpuMs) / messages.length, ceiling),
      redis: redisProbe,
      benchCpuPercent: pct(benchCpuMs, wallMs),
      otherCpuPercent: pct(
        after.machineMs - before.machineMs - redisCpuMs - benchCpuMs - relaysCpuMs,
        wallMs,
      ),
      redisConnectedClients: redisClients,
      logProblems: {
        warnings: scans.reduce((s, x) => s + x.warnings, 0),
        errors: scans.reduce((s, x) => s + x.errors, 0),
        events,
      },
      timedOut,
    };
    log(
      `  delivered ${result.delivered}/${queuedOk} in ${result.seconds} s: ${result.totalPerSecond} msg/s ` +
        `(${pct(result.perMailbox.meanShare, 1)}% of the ceiling per mailbox), ${result.messagesPerConnection} msg/connection, ` +
        `${result.count432} x 432${timedOut ? " — TIMED OUT" : ""}`,
    );
    return result;
  } finally {
    await Promise.all(relays.map((r) => r.stop()));
    await Promise.all(queues.map((q) => q.close().catch(() => undefined)));
    await env.admin.flushall();
  }
}

// ----------------------------------------------------------------------------------------------- ingest

interface IngestResult {
  server: string;
  client: ClientKind;
  connections: number;
  seconds: number;
  accepted: number;
  failed: number;
  acceptedPerSecond: number;
  /** Slowest and fastest whole second of the window. */
  perSecondMin: number;
  perSecondMax: number;
  /** raw client: end of DATA to the reply; nodemailer client: MAIL FROM to the reply. */
  latencyMs: LoadResult["latencyMs"];
  latencyMeasures: string;
  serverCpuPercent: number;
  redisCpuPercent: number;
  clientCpuPercent: number;
  /** CPU the rest of the machine used meanwhile (other people's processes), % of one core. */
  otherCpuPercent: number;
  serverRssMB: number;
  redis?: RedisProbe;
  failures: string[];
  /** Set when the run could not be measured. */
  error?: string;
}

interface IngestSample {
  at: number;
  serverMs: number;
  serverRss: number;
  redisMs: number;
  clientMs: number;
  machineMs: number;
}

/** measureIngest, reporting a failure as a result (with `error`) so the other runs still print. */
async function ingestOne(...args: Parameters<typeof measureIngest>): Promise<IngestResult> {
  try {
    return await measureIngest(...args);
  } catch (err) {
    const error = (err as Error).message;
    log(`  failed: ${error}`);
    const nan = Number.NaN;
    return {
      server: args[0],
      client: args[1],
      connections: PLAN.ingest.connections,
      seconds: nan,
      accepted: 0,
      failed: nan,
      acceptedPerSecond: nan,
      perSecondMin: nan,
      perSecondMax: nan,
      latencyMs: { p50: nan, p90: nan, p99: nan, max: nan },
      latencyMeasures: "",
      serverCpuPercent: nan,
      redisCpuPercent: nan,
      clientCpuPercent: nan,
      otherCpuPercent: nan,
      serverRssMB: nan,
      failures: [],
      error,
    };
  }
}

async function measureIngest(
  server: string,
  kind: ClientKind,
  worker: Worker,
  redisPid: number | undefined,
  message: { from: string; to: string[]; body: Buffer },
  redisAdmin?: Redis,
): Promise<IngestResult> {
  syncDisks();
  const endProbe = redisAdmin ? await probeRedis(redisAdmin) : undefined;
  log(`ingest: ${kind} client -> ${server}, ${PLAN.ingest.connections} connections`);
  const sample = async (): Promise<IngestSample> => {
    const stats = await worker.stats();
    const cpu = process.cpuUsage();
    return {
      at: performance.now(),
      serverMs: stats.cpuMs,
      serverRss: stats.rss,
      redisMs: procCpuMs(redisPid),
      clientMs: (cpu.user + cpu.system) / 1000,
      machineMs: machineCpuMs(),
    };
  };
  const load = await runLoad({
    kind,
    port: worker.port,
    connections: PLAN.ingest.connections,
    warmupMs: PLAN.ingest.warmupMs,
    durationMs: PLAN.ingest.durationMs,
    message,
    sample,
  });
  const redisProbe = endProbe ? await endProbe() : undefined;
  const [a, b] = load.samples as [IngestSample, IngestSample];
  const wall = b.at - a.at;
  const result: IngestResult = {
    server,
    client: kind,
    connections: load.connections,
    seconds: load.windowMs / 1000,
    accepted: load.accepted,
    failed: load.failed,
    acceptedPerSecond: round(load.acceptedPerSecond, 0),
    perSecondMin: Math.min(...load.perSecond),
    perSecondMax: Math.max(...load.perSecond),
    latencyMs: {
      p50: round(load.latencyMs.p50, 2),
      p90: round(load.latencyMs.p90, 2),
      p99: round(load.latencyMs.p99, 2),
      max: round(load.latencyMs.max, 2),
    },
    latencyMeasures: kind === "raw" ? "end of DATA -> 250" : "MAIL FROM -> 250 (whole transaction)",
    serverCpuPercent: pct(b.serverMs - a.serverMs, wall),
    redisCpuPercent: pct(b.redisMs - a.redisMs, wall),
    clientCpuPercent: pct(b.clientMs - a.clientMs, wall),
    otherCpuPercent: pct(
      b.machineMs -
        a.machineMs -
        (b.serverMs - a.serverMs) -
        (Number.isNaN(b.redisMs) ? 0 : b.redisMs - a.redisMs) -
        (b.clientMs - a.clientMs),
      wall,
    ),
    serverRssMB: mb(b.serverRss),
    ...(redisProbe ? { redis: redisProbe } : {}),
    failures: load.failures,
  };
  log(
    `  ${result.acceptedPerSecond} msg/s, p50 ${result.latencyMs.p50} ms, p99 ${result.latencyMs.p99} ms` +
      (result.failed ? `, ${result.failed} failed: ${result.failures[0]}` : ""),
  );
  return result;
}

async function ingestRuns(dir: string): Promise<IngestResult[]> {
  const message = {
    from: "scanner@bench.example",
    to: ["someone@example.net"],
    body: tenKilobyteMessage("scanner@bench.example", "someone@example.net"),
  };
  const kinds: ClientKind[] = ["raw", "nodemailer"];
  const results: IngestResult[] = [];

  const sink = await startWorker(SINK_WORKER, [], join(dir, "sink.log"));
  try {
    for (const kind of kinds)
      results.push(await ingestOne("sink (smtp-server)", kind, sink, undefined, message));
  } finally {
    await sink.stop();
  }

  const clients = [{ name: "loopback", networks: ["127.0.0.0/8"] }];
  const redis = await startPrivateRedis({ appendOnly: true });
  const admin = new Redis(redis.url);
  try {
    const configFile = join(dir, "relay-ingest.json");
    writeFileSync(
      configFile,
      JSON.stringify(
        relayConfig({
          redis: redis.url,
          prefix: "bench-i",
          dataDir: join(dir, "data-i"),
          mailboxes: [],
          clients,
        }),
      ),
    );
    const relay = await startWorker(RELAY_WORKER, [configFile], join(dir, "relay-ingest.log"));
    try {
      for (const kind of kinds) {
        results.push(await ingestOne("sluice, redis over TCP", kind, relay, redis.pid(), message, admin));
        await admin.flushall();
      }
    } finally {
      await relay.stop();
    }
  } finally {
    admin.disconnect();
    await redis.destroy();
  }

  const embeddedFile = join(dir, "relay-embedded.json");
  writeFileSync(
    embeddedFile,
    JSON.stringify(relayConfig({ prefix: "bench-e", dataDir: join(dir, "data-e"), mailboxes: [], clients })),
  );
  const embedded = await startWorker(RELAY_WORKER, [embeddedFile], join(dir, "relay-embedded.log"));
  const embeddedAdmin = new Redis({ path: join(dir, "data-e", "redis", "redis.sock") });
  try {
    const redisPid = childPid(embedded.pid, "redis-server");
    results.push(
      await ingestOne("sluice, embedded redis", "raw", embedded, redisPid, message, embeddedAdmin),
    );
  } finally {
    embeddedAdmin.disconnect();
    await embedded.stop();
  }
  return results;
}

function formatReport(report: {
  mode: string;
  git: { commit: string; srcDirty: boolean };
  machine: {
    cpus: number;
    cpuModel: string;
    node: string;
    redis: string;
    fsyncMsMedian: number;
    fsyncMsMedianAtEnd: number;
    othersCpuPercentAtStart: number;
  };
  delivery: DeliveryResult[];
  /** The same runs without sluice (bareClientRun), in the order of `delivery`. */
  deliveryWithoutSluice: BareClientResult[];
  ingest: IngestResult[];
  large: LargeResult | undefined;
  mailboxes500: DeliveryResult | undefined;
  backlog: BacklogResult | undefined;
}): string {
  const { machine, delivery, deliveryWithoutSluice: bare, ingest, large, mailboxes500, backlog } = report;
  const runLabel = (d: DeliveryResult) => `${d.relays} relay${d.relays > 1 ? "s" : ""}, ${d.mailboxes} mbx`;
  return [
    "",
    `sluice ${report.git.commit}${report.git.srcDirty ? " (src/ modified)" : ""} benchmark (${report.mode}): ${machine.cpus} x ${machine.cpuModel}, node ${machine.node}, ` +
      `${machine.redis.split(" ").slice(0, 3).join(" ")}, fsync of 10 KB: median ${machine.fsyncMsMedian} ms (${machine.fsyncMsMedianAtEnd} ms at the end), ` +
      `other processes at the start: ${machine.othersCpuPercentAtStart}% of a core`,
    "",
    `Delivery of a queued backlog, 10 KB messages; ceiling ${CONNECTIONS_PER_MAILBOX} connections x 1 msg / ${REPLY_DELAY_MS} ms = ${CEILING_PER_MAILBOX} msg/s per mailbox`,
    table(
      [
        "run",
        "delivered",
        "secs",
        "msg/s",
        "ceiling",
        "% of ceiling/mbx (mean, min)",
        "steady msg/s (10-90%)",
        "msg/conn",
        "432s",
        "max conn/mbx",
      ],
      delivery.map((d) => [
        runLabel(d),
        `${d.delivered}/${d.messages}${d.timedOut ? " TIMEOUT" : ""}`,
        d.seconds,
        d.totalPerSecond,
        d.ceilingPerSecond,
        `${fmt(100 * d.perMailbox.meanShare)}, ${fmt(100 * d.perMailbox.minShare)}`,
        `${fmt(d.steadyPerSecond)} (${fmt(100 * d.steadyShare)}%)`,
        d.messagesPerConnection,
        d.count432,
        d.maxConcurrentPerMailbox,
      ]),
    ),
    "",
    "The same runs without sluice: bare nodemailer connections (3 per mailbox) in as many processes as relays, no queue, no Redis",
    table(
      [
        "run",
        "msg/s",
        "% of ceiling/mbx (mean, min)",
        "msg/conn",
        "432s",
        "client CPU ms/msg",
        "upstream CPU ms/msg",
        `cores at ${pct(TARGETS.deliveryShareOfCeiling, 1)} %`,
        ...SLOT_HEADERS,
        ...SPLIT_HEADERS,
      ],
      bare.map((b) => [
        `${b.processes} process${b.processes === 1 ? "" : "es"}, ${b.mailboxes} mbx`,
        b.perSecond,
        `${fmt(100 * b.perMailbox.meanShare)}, ${fmt(100 * b.perMailbox.minShare)}`,
        b.messagesPerConnection,
        b.count432,
        b.clientCpuMsPerMessage,
        b.upstreamCpuMsPerMessage,
        b.coresAtTarget,
        ...slotCells(b.perMailbox),
        ...splitCells(b.turnaroundSplitMs),
      ]),
    ),
    "",
    "Delivery: where the time goes, and resources (CPU % of one core over the delivery; 2 cores = 200 %)",
    table(
      [
        "run",
        "1st msg ms",
        "longest stall ms",
        ...SLOT_HEADERS,
        ...SPLIT_HEADERS,
        "relay CPU %",
        "relay CPU ms/msg",
        "relay loop delay p99/max ms",
        "redis cmds/msg",
        "relay peak RSS MB",
        "redis CPU %",
        "upstream+bench CPU %",
        "others' CPU %",
        "CPU ms/msg relay + redis + upstream",
        `cores at ${pct(TARGETS.deliveryShareOfCeiling, 1)} %`,
        "slowest fsync ms",
      ],
      delivery.map((d) => [
        runLabel(d),
        d.firstMessageMs,
        d.longestStallMs,
        ...slotCells(d.perMailbox),
        ...splitCells(d.turnaroundSplitMs),
        d.relayProcesses.map((r) => r.cpuPercent).join(" + "),
        d.perMessage.relayCpuMs,
        d.relayProcesses.map((r) => `${r.loopDelayMs.p99}/${r.loopDelayMs.max}`).join(" + "),
        d.perMessage.redisCommands,
        d.relayProcesses.map((r) => r.maxRssMB).join(" + "),
        d.redisCpuPercent,
        d.benchCpuPercent,
        d.otherCpuPercent,
        `${d.perMessage.relayCpuMs} + ${d.perMessage.redisCpuMs} + ${d.perMessage.upstreamCpuMs}`,
        d.coresAtTarget,
        d.redis.fsyncMaxMs,
      ]),
    ),
    "",
    `Ingest: ${PLAN.ingest.connections} clients, one reused connection each, 10 KB, ${PLAN.ingest.durationMs / 1000} s measured, mail held`,
    table(
      [
        "server",
        "client",
        "msg/s",
        "per second min-max",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "failed",
        "server CPU %",
        "redis CPU %",
        "client CPU %",
        "others' CPU %",
        "server RSS MB",
        "slowest fsync ms",
        "AOF rewrites",
      ],
      ingest.map((r) => [
        r.server,
        r.client,
        r.acceptedPerSecond,
        `${r.perSecondMin}-${r.perSecondMax}`,
        r.latencyMs.p50,
        r.latencyMs.p90,
        r.latencyMs.p99,
        r.failed,
        r.serverCpuPercent,
        r.redisCpuPercent,
        r.clientCpuPercent,
        r.otherCpuPercent,
        r.serverRssMB,
        r.redis?.fsyncMaxMs ?? "-",
        r.redis?.aofRewrites ?? "-",
      ]),
    ),
    ...ingest.filter((r) => r.error).map((r) => `  ${r.server} / ${r.client}: FAILED: ${r.error}`),
    "  redis: redis-server 7, appendonly yes, appendfsync always; over TCP on loopback, or the embedded one (unix socket)",
    "  latency: raw client = end of DATA to the reply; nodemailer client = MAIL FROM to the reply (whole transaction)",
    `  cores at ${pct(TARGETS.deliveryShareOfCeiling, 1)} %: the CPU the run's processes spent per message (relays or clients, Redis, the fake upstream), times ${pct(TARGETS.deliveryShareOfCeiling, 1)} % of the ceiling; this machine has ${machine.cpus}`,
    "",
    ...(large ? formatLarge(large) : []),
    ...(mailboxes500 ? formatMailboxes500(mailboxes500) : []),
    ...(backlog ? formatBacklog(backlog) : []),
  ].join("\n");
}

// ------------------------------------------------------------------------------------- large messages

interface LargeResult {
  clients: number;
  attachmentMB: number;
  messageMB: number;
  maxMessageSize: string;
  accepted: number;
  refused: number;
  refusals: string[];
  heldJobs: number;
  seconds: number;
  /** ms per client from the first DATA byte written to the 250 (transfer included). */
  perClientMs: { min: number; p50: number; max: number };
  relayPeakRssMB: number;
  /** Peak RSS of the relay since it started (VmHWM; see bench/worker-stats.mjs). */
  relayMaxRssMB: number;
  relayRssBeforeMB: number;
  relayRssAfterMB: number;
  redisPeakRssMB: number;
  redisUsedMemoryMB: number;
  redis: RedisProbe;
}

/** Polls /proc/<pid>/status VmRSS of each pid every `everyMs`; stop() returns the peaks (bytes). */
function watchRss(pids: (number | undefined)[], everyMs = 50): { stop(): number[] } {
  const peaks = pids.map(() => 0);
  const poll = () =>
    pids.forEach((pid, i) => {
      const rss = procRss(pid);
      if (rss > (peaks[i] as number)) peaks[i] = rss;
    });
  poll();
  const timer = setInterval(poll, everyMs);
  return {
    stop() {
      clearInterval(timer);
      poll();
      return peaks;
    },
  };
}

/** INFO commandstats as command -> calls (commands run inside scripts count too). */
function commandCalls(info: string): Map<string, number> {
  const calls = new Map<string, number>();
  for (const match of info.matchAll(/^cmdstat_(\S+):calls=(\d+)/gm))
    calls.set(match[1] as string, Number(match[2]));
  return calls;
}

const infoField = (info: string, field: string) =>
  Number(new RegExp(`^${field}:(\\S+)`, "m").exec(info)?.[1] ?? Number.NaN);

/**
 * 20 clients at once, each one 25 MB scan (base64 attachment, about 34 MB on the wire), into one relay with
 * its embedded Redis (append-only, fsync always); mail held (no mailbox configured).
 */
async function largeRun(dir: string): Promise<LargeResult> {
  const { clients, attachmentBytes } = PLAN.large;
  const maxMessageSize = "50MB";
  const from = "scanner@bench.example";
  const to = "someone@example.net";
  const message = buildMessage({ from, to: [to], subject: "scan", bodyBytes: 200, attachmentBytes });
  const payload = dataPayload(message);
  log(`large: ${clients} clients x ${mb(message.length)} MB message (${mb(attachmentBytes)} MB attachment)`);
  const configFile = join(dir, "relay-large.json");
  writeFileSync(
    configFile,
    JSON.stringify({
      ...relayConfig({
        prefix: "bench-l",
        dataDir: join(dir, "data-l"),
        mailboxes: [],
        clients: [{ name: "loopback", networks: ["127.0.0.0/8"] }],
      }),
      maxMessageSize,
    }),
  );
  const relay = await startWorker(RELAY_WORKER, [configFile], join(dir, "relay-large.log"));
  const admin = new Redis({ path: join(dir, "data-l", "redis", "redis.sock") });
  try {
    const redisPid = childPid(relay.pid, "redis-server");
    syncDisks();
    const endProbe = await probeRedis(admin);
    const before = await relay.stats();
    const watch = watchRss([relay.pid, redisPid]);
    const started = performance.now();
    const outcomes = await Promise.all(
      Array.from({ length: clients }, async () => {
        try {
          const client = await PipelinedSmtp.open({ port: relay.port });
          const { reply, latencyMs } = await client.send(from, [to], payload);
          await client.quit();
          return { ok: reply.code === 250, ms: latencyMs, reply: `${reply.code} ${reply.text}` };
        } catch (err) {
          return { ok: false, ms: Number.NaN, reply: (err as Error).message };
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const [relayPeak, redisPeak] = watch.stop() as [number, number];
    const after = await relay.stats();
    const redisProbe = await endProbe();
    const held = new Queue(HELD_QUEUE_NAME, { connection: admin, prefix: "bench-l" });
    const counts = await held.getJobCounts("wait", "prioritized", "delayed");
    await held.close();
    const usedMemory = infoField(await admin.info("memory"), "used_memory");
    const times = outcomes
      .filter((o) => o.ok)
      .map((o) => o.ms)
      .sort((a, b) => a - b);
    const refusals = [...new Set(outcomes.filter((o) => !o.ok).map((o) => o.reply))];
    const result: LargeResult = {
      clients,
      attachmentMB: round(attachmentBytes / 1024 ** 2),
      messageMB: round(message.length / 1024 ** 2),
      maxMessageSize,
      accepted: outcomes.filter((o) => o.ok).length,
      refused: outcomes.filter((o) => !o.ok).length,
      refusals,
      heldJobs: Object.values(counts).reduce((a, b) => a + b, 0),
      seconds: round(seconds),
      perClientMs: {
        min: round(times[0] ?? Number.NaN, 0),
        p50: round(percentile(times, 50), 0),
        max: round(times.at(-1) ?? Number.NaN, 0),
      },
      relayPeakRssMB: mb(relayPeak),
      relayMaxRssMB: mb(after.maxRss),
      relayRssBeforeMB: mb(before.rss),
      relayRssAfterMB: mb(after.rss),
      redisPeakRssMB: mb(redisPeak),
      redisUsedMemoryMB: mb(usedMemory),
      redis: redisProbe,
    };
    log(
      `  ${result.accepted}/${clients} accepted in ${result.seconds} s; relay peak RSS ${result.relayPeakRssMB} MB ` +
        `(VmHWM ${result.relayMaxRssMB} MB), redis peak RSS ${result.redisPeakRssMB} MB` +
        (refusals.length ? `; refused: ${refusals[0]}` : ""),
    );
    return result;
  } finally {
    admin.disconnect();
    await relay.stop();
  }
}

// ---------------------------------------------------------------------------------------------- backlog

interface BacklogResult {
  messages: number;
  messageBytes: number;
  /** How the backlog was made: jobs and bodies written with the Spool class of dist/ (no SMTP). */
  fill: { method: string; seconds: number; perSecond: number; concurrency: number };
  queuedSeen: number;
  redisUsedMemoryMB: number;
  redisUsedMemoryRssMB: number;
  redisProcessRssMB: number;
  redisKeys: number;
  aofMB: number;
  relayRssMB: number;
  relayMaxRssMB: number;
  relayStartSeconds: number;
  /** `node dist/cli.js --help`: node and the CLI's own start-up, for comparison. */
  cliStartupMs: number;
  statusTableMs: number[];
  statusJsonMs: number[];
  statusRowQueued: number;
}

function timeCli(args: string[]): { ms: number; stdout: string } {
  const started = performance.now();
  const stdout = execFileSync(process.execPath, [join(ROOT, "dist", "cli.js"), ...args], {
    cwd: ROOT,
    encoding: "utf8",
    maxBuffer: 64 * 1024 * 1024,
    env: { ...process.env, FORCE_COLOR: "0" },
  });
  return { ms: round(performance.now() - started, 0), stdout };
}

/**
 * 100,000 queued 1 KB messages in one mailbox whose queue is paused (nothing is delivered): Redis memory, a
 * relay's memory with that backlog, and how long `sluice queue status` takes against it.
 */
async function backlogRun(dir: string, caFile: string): Promise<BacklogResult> {
  const { messages, concurrency } = PLAN.backlog;
  const prefix = "bench-b";
  const mailbox = "backlog@contoso.bench";
  log(`backlog: ${messages} x 1 KB queued in one mailbox, delivery paused`);
  const redis = await startPrivateRedis({ appendOnly: true });
  const admin = new Redis(redis.url, { maxRetriesPerRequest: null });
  const writer = new Redis(redis.url, { maxRetriesPerRequest: null });
  // the type from src/, the class from dist/ (as the relays run it); dist/ has no .d.ts files
  const spoolModule = join(ROOT, "dist", "spool", "spool.js");
  const { Spool, newQueueId } = (await import(spoolModule)) as typeof import("../src/spool/spool.js");
  const spool = new Spool(writer, prefix, {
    attempts: 1_000_000,
    backoff: { type: "exponential", delay: 1_000 },
    removeOnComplete: { age: 24 * 3600, count: 10_000 },
  });
  const queue = new Queue(mailbox, { connection: admin, prefix });
  let relay: Worker | undefined;
  try {
    await queue.pause();
    const body = buildMessage({
      from: mailbox,
      to: ["user@example.net"],
      subject: "backlog",
      bodyBytes: 700,
    });
    const fillStarted = performance.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < messages) {
          next++;
          const id = newQueueId();
          const bodyWriter = spool.openBody(id);
          await bodyWriter.write(body);
          await bodyWriter.flush();
          await spool.commit({
            id,
            client: "bench",
            mailbox,
            mailFrom: mailbox,
            recipients: ["user@example.net"],
            delivered: [],
            refused: [],
            size: body.length,
            remoteAddress: "127.0.0.1",
            receivedAt: Date.now(),
          });
        }
      }),
    );
    const fillSeconds = (performance.now() - fillStarted) / 1000;
    log(`  filled in ${fillSeconds.toFixed(1)} s (${round(messages / fillSeconds, 0)} msg/s)`);

    const configFile = join(dir, "relay-backlog.json");
    writeFileSync(
      configFile,
      JSON.stringify(
        relayConfig({
          redis: redis.url,
          prefix,
          dataDir: join(dir, "data-b"),
          // nothing listens on port 9: were the queue not paused, delivery would fail, not succeed
          upstream: { port: 9, ca: caFile },
          mailboxes: [mailbox],
          clients: [{ name: "loopback", networks: ["127.0.0.0/8"], mailbox }],
        }),
      ),
    );
    const relayStarted = performance.now();
    relay = await startWorker(RELAY_WORKER, [configFile], join(dir, "relay-backlog.log"));
    const relayStartSeconds = (performance.now() - relayStarted) / 1000;
    await sleep(5_000);
    const relayStats = await relay.stats();

    const cliStartupMs = timeCli(["--help"]).ms;
    const statusTableMs: number[] = [];
    const statusJsonMs: number[] = [];
    let statusRowQueued = Number.NaN;
    for (let i = 0; i < 3; i++) {
      const table = timeCli(["queue", "status", "--config", configFile]);
      statusTableMs.push(table.ms);
      if (i === 0) process.stderr.write(`${table.stdout.trimEnd()}\n`);
      const json = timeCli(["queue", "status", "--config", configFile, "--json"]);
      statusJsonMs.push(json.ms);
      const rows = JSON.parse(json.stdout) as { mailbox: string; queued: number; delayed: number }[];
      const row = rows.find((r) => r.mailbox === mailbox);
      statusRowQueued = row ? row.queued + row.delayed : Number.NaN;
    }
    const memory = await admin.info("memory");
    const persistence = await admin.info("persistence");
    const counts = await queue.getJobCounts("wait", "prioritized", "delayed", "active");
    const result: BacklogResult = {
      messages,
      messageBytes: body.length,
      fill: {
        method:
          "Spool.openBody().write()/flush() + Spool.commit() from dist/spool/spool.js (the relay's own code path after DATA), no SMTP",
        seconds: round(fillSeconds),
        perSecond: round(messages / fillSeconds, 0),
        concurrency,
      },
      queuedSeen: Object.values(counts).reduce((a, b) => a + b, 0),
      redisUsedMemoryMB: mb(infoField(memory, "used_memory")),
      redisUsedMemoryRssMB: mb(infoField(memory, "used_memory_rss")),
      redisProcessRssMB: mb(procRss(redis.pid())),
      redisKeys: await admin.dbsize(),
      aofMB: mb(infoField(persistence, "aof_current_size")),
      relayRssMB: mb(relayStats.rss),
      relayMaxRssMB: mb(relayStats.maxRss),
      relayStartSeconds: round(relayStartSeconds, 2),
      cliStartupMs,
      statusTableMs,
      statusJsonMs,
      statusRowQueued,
    };
    log(
      `  redis used_memory ${result.redisUsedMemoryMB} MB (RSS ${result.redisProcessRssMB} MB), relay RSS ` +
        `${result.relayRssMB} MB; queue status ${statusTableMs.join("/")} ms, --json ${statusJsonMs.join("/")} ms`,
    );
    return result;
  } finally {
    await relay?.stop();
    await spool.close();
    await queue.close().catch(() => undefined);
    writer.disconnect();
    admin.disconnect();
    await redis.destroy();
  }
}

function formatLarge(r: LargeResult): string[] {
  return [
    `Large messages: ${r.clients} clients at once, one ${r.messageMB} MB message each (${r.attachmentMB} MB base64 attachment), ` +
      `maxMessageSize ${r.maxMessageSize}, embedded redis (appendfsync always), mail held`,
    table(
      [
        "accepted",
        "refused",
        "held jobs",
        "wall s",
        "per client ms min/p50/max",
        "relay peak RSS MB (50 ms polls)",
        "relay VmHWM MB",
        "relay RSS before/after MB",
        "redis peak RSS MB",
        "redis used_memory MB",
        "slowest fsync ms",
      ],
      [
        [
          `${r.accepted}/${r.clients}`,
          r.refused,
          r.heldJobs,
          r.seconds,
          `${fmt(r.perClientMs.min)}/${fmt(r.perClientMs.p50)}/${fmt(r.perClientMs.max)}`,
          r.relayPeakRssMB,
          r.relayMaxRssMB,
          `${r.relayRssBeforeMB}/${r.relayRssAfterMB}`,
          r.redisPeakRssMB,
          r.redisUsedMemoryMB,
          r.redis.fsyncMaxMs,
        ],
      ],
    ),
    ...r.refusals.map((reply) => `  refused: ${reply}`),
    "",
  ];
}

function formatMailboxes500(d: DeliveryResult): string[] {
  const problems = d.logProblems;
  return [
    `Delivery with ${d.mailboxes} mailboxes, ${d.relays} relays, ${d.messages / d.mailboxes} messages each; ceiling ${d.ceilingPerSecond} msg/s`,
    table(
      [
        "delivered (distinct)",
        "secs",
        "msg/s",
        "% of ceiling",
        "1st msg ms",
        "432s",
        "max conn/mbx",
        "msg/conn",
        "relay CPU %",
        "relay peak RSS MB",
        "redis CPU %",
        "redis connected_clients",
        "queueing s",
      ],
      [
        [
          `${d.delivered} (${d.distinctDelivered})/${d.messages}${d.timedOut ? " TIMEOUT" : ""}`,
          d.seconds,
          d.totalPerSecond,
          round((100 * d.totalPerSecond) / d.ceilingPerSecond, 2),
          d.firstMessageMs,
          d.count432,
          d.maxConcurrentPerMailbox,
          d.messagesPerConnection,
          d.relayProcesses.map((r) => r.cpuPercent).join(" + "),
          d.relayProcesses.map((r) => r.maxRssMB).join(" + "),
          d.redisCpuPercent,
          d.redisConnectedClients,
          d.queueing.seconds,
        ],
      ],
    ),
    `  relay logs: ${problems.warnings} warnings, ${problems.errors} errors; longest stall ${d.longestStallMs} ms`,
    "",
  ];
}

function formatBacklog(b: BacklogResult): string[] {
  return [
    `Backlog: ${b.messages} queued ${b.messageBytes}-byte messages in one paused mailbox, redis over TCP (appendfsync always)`,
    `  filled in ${b.fill.seconds} s (${b.fill.perSecond} msg/s, ${b.fill.concurrency} at once): ${b.fill.method}`,
    table(
      [
        "jobs seen",
        "redis used_memory MB",
        "redis RSS MB",
        "keys",
        "AOF MB",
        "relay RSS MB",
        "relay start s",
        "cli --help ms",
        "queue status ms (3 runs)",
        "--json ms (3 runs)",
        "status says queued",
      ],
      [
        [
          b.queuedSeen,
          b.redisUsedMemoryMB,
          b.redisProcessRssMB,
          b.redisKeys,
          b.aofMB,
          b.relayRssMB,
          b.relayStartSeconds,
          b.cliStartupMs,
          b.statusTableMs.join(" / "),
          b.statusJsonMs.join(" / "),
          b.statusRowQueued,
        ],
      ],
    ),
    "",
  ];
}

/** The relays run from dist/ (as shipped): refuse a missing build, warn about one older than src/. */
function checkBuild(): void {
  const main = join(ROOT, "dist", "main.js");
  if (!existsSync(main) || !existsSync(join(ROOT, "dist", "limits", "lua"))) {
    throw new Error(
      "dist/ is missing or incomplete: run `npm run bench` (it builds first) or `npm run build`",
    );
  }
  const built = statSync(main).mtimeMs;
  const newest = (dir: string): number =>
    Math.max(
      0,
      ...readdirSync(dir, { withFileTypes: true }).map((entry) =>
        entry.isDirectory() ? newest(join(dir, entry.name)) : statSync(join(dir, entry.name)).mtimeMs,
      ),
    );
  if (newest(join(ROOT, "src")) > built) log("warning: src/ is newer than dist/: run `npm run build` first");
}

// ------------------------------------------------------------------------------------------------- main

async function main(): Promise<void> {
  checkBuild();
  const started = performance.now();
  const dir = mkdtempSync(join(os.tmpdir(), "sluice-bench-"));
  // How busy the machine is without us: other people's tests on a shared machine skew every number.
  const idleFrom = machineCpuMs();
  await sleep(2_000);
  const othersBefore = pct(machineCpuMs() - idleFrom, 2_000);
  if (othersBefore > 20) log(`warning: other processes use ${othersBefore}% of a core: numbers will be low`);
  syncDisks();
  const fsyncMs = measureFsync(dir);
  const machine = {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? "unknown",
    memoryGB: round(os.totalmem() / 1024 ** 3, 0),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    redis: redisVersion(),
    fsyncMsMedian: round(fsyncMs, 3),
    fsyncMsMedianAtEnd: Number.NaN,
    /** CPU other processes used in the 2 s before the start, % of one core. */
    othersCpuPercentAtStart: othersBefore,
    loadAverageAtStart: round(os.loadavg()[0] ?? Number.NaN, 2),
  };
  log(
    `${QUICK ? "quick" : "full"} run; ${machine.cpus} x ${machine.cpuModel}; fsync(10 KB) median ${machine.fsyncMsMedian} ms; logs in ${dir}`,
  );

  const pki = await createTestPki();
  const caFile = join(dir, "ca.pem");
  writeFileSync(caFile, pki.ca);
  const users: Record<string, string> = {};
  PLAN.delivery.forEach((spec, run) => {
    for (let k = 0; k < spec.mailboxes; k++) users[mailboxName(run, k)] = PASSWORD;
  });
  for (let k = 0; k < PLAN.mailboxes500.mailboxes; k++) users[mailboxName(MAILBOXES500_RUN, k)] = PASSWORD;

  const delivery: DeliveryResult[] = [];
  const failures: { relays: number; mailboxes: number; perMailbox: number; error: string }[] = [];
  let mailboxes500: DeliveryResult | undefined;
  const withoutSluice: BareClientResult[] = [];
  if (RUN_DELIVERY || RUN_MAILBOXES500) {
    const redis = await startPrivateRedis({ appendOnly: true });
    const admin = new Redis(redis.url, { maxRetriesPerRequest: null });
    const upstream = await startFakeUpstream({
      tls: await pki.issue(["127.0.0.1"]),
      users,
      replyDelayMs: REPLY_DELAY_MS,
      maxConnectionsPerUser: CONNECTIONS_PER_MAILBOX,
      // the head (queueIdOf reads the Received header): whole messages kept this process's GC pausing it
      keepBytes: QUEUE_ID_HEAD_BYTES,
    });
    try {
      const env: DeliveryEnv = { dir, redis, admin, upstream, caFile };
      for (const [run, spec] of RUN_DELIVERY ? PLAN.delivery.entries() : []) {
        if (RUNS && !RUNS.includes(`${spec.relays}x${spec.mailboxes}`)) continue;
        try {
          if (!process.argv.includes("--no-bare")) withoutSluice.push(await bareClientRun(env, run, spec));
          delivery.push(await deliveryRun(env, run, spec));
        } catch (err) {
          log(`  failed: ${(err as Error).stack ?? err}`);
          failures.push({ ...spec, error: (err as Error).message });
        }
      }
      if (RUN_MAILBOXES500) {
        try {
          mailboxes500 = await deliveryRun(env, MAILBOXES500_RUN, PLAN.mailboxes500);
        } catch (err) {
          log(`  failed: ${(err as Error).stack ?? err}`);
          failures.push({ ...PLAN.mailboxes500, error: (err as Error).message });
        }
      }
    } finally {
      await upstream.stop();
      admin.disconnect();
      await redis.destroy();
    }
  }
  const ingest = RUN_INGEST ? await ingestRuns(dir) : [];
  const otherFailures: { part: string; error: string }[] = [];
  const attempt = async <T>(part: string, run: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await run();
    } catch (err) {
      log(`  ${part} failed: ${(err as Error).stack ?? err}`);
      otherFailures.push({ part, error: (err as Error).message });
      return undefined;
    }
  };
  const large = RUN_LARGE ? await attempt("large", () => largeRun(dir)) : undefined;
  const backlog = RUN_BACKLOG ? await attempt("backlog", () => backlogRun(dir, caFile)) : undefined;

  syncDisks();
  machine.fsyncMsMedianAtEnd = round(measureFsync(dir), 3);
  const report = {
    date: new Date().toISOString(),
    mode: `${QUICK ? "quick" : "full"}${ONLY && !RUN_ALL ? `, ${ONLY} only` : ""}${APPENDFSYNC === "always" ? "" : `, appendfsync ${APPENDFSYNC}`}${REDIS_STALL_MS ? `, Redis stalled ${REDIS_STALL_MS} ms once per delivery run` : ""}`,
    command: `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`,
    durationSeconds: round((performance.now() - started) / 1000, 0),
    git: gitState(),
    machine,
    setup: {
      messageBytes: MESSAGE_BYTES,
      upstream: `fake Office 365 on loopback: STARTTLS (test PKI, verified), AUTH PLAIN, ${REPLY_DELAY_MS} ms before each end-of-DATA reply, 432 4.3.2 beyond ${CONNECTIONS_PER_MAILBOX} connections per mailbox`,
      delivery:
        "1 or 2 relay processes (run from dist/ with node --single-threaded-gc, as shipped), one private redis-server (appendonly yes, appendfsync always) over TCP, queues paused while the backlog is submitted, clock starts at resume",
      ceilingPerMailbox: CEILING_PER_MAILBOX,
      ingest: `${PLAN.ingest.connections} connections, one reused connection each, ${PLAN.ingest.warmupMs} ms warm-up then ${PLAN.ingest.durationMs} ms measured; mail held (no mailbox configured)`,
    },
    targets: TARGETS,
    delivery,
    deliveryWithoutSluice: withoutSluice,
    deliveryFailures: failures,
    ingest,
    large,
    mailboxes500,
    backlog,
    otherFailures,
  };

  process.stdout.write(formatReport(report));
  for (const f of failures) {
    process.stdout.write(`delivery ${f.relays} relay(s), ${f.mailboxes} mailbox(es) FAILED: ${f.error}\n`);
  }
  for (const f of otherFailures) process.stdout.write(`${f.part} FAILED: ${f.error}\n`);

  const resultsDir = join(HERE, "results");
  mkdirSync(resultsDir, { recursive: true });
  const partial =
    !RUN_ALL || APPENDFSYNC !== "always" || DELIVERY_CONCURRENCY !== undefined || REDIS_STALL_MS > 0;
  const file = join(resultsDir, QUICK || partial ? "latest-partial.json" : "latest.json");
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  log(`wrote ${file} in ${report.durationSeconds} s`);
  if (KEEP) log(`kept ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
