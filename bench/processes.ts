/** Worker processes of the benchmark (relays, the sink) and CPU counters of any process from /proc. */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ProcessStats, WorkerMessage } from "./worker-ipc.js";

const CLOCK_TICKS_PER_SECOND = 100;

export interface Worker {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly port: number;
  readonly logFile: string;
  /** Its CPU time and memory; `profile`: see WorkerMessage (relay-worker.mjs only). */
  stats(profile?: string): Promise<ProcessStats>;
  /** SIGTERM, and SIGKILL after timeoutMs; resolves with the exit code. */
  stop(timeoutMs?: number): Promise<number | null>;
}

/** Spawns `node <script> ...args` with stdout/stderr into logFile; resolves once it says ready. */
export async function startWorker(script: string, args: string[], logFile: string): Promise<Worker> {
  const log = openSync(logFile, "a");
  // one GC thread, as sluice ships (npm start, the Dockerfile, examples/sluice.service), for the bare client and
  // the sink too so that they stay comparable; e.g. BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" adds to it
  const nodeArgs = [
    "--single-threaded-gc",
    ...(process.env.BENCH_NODE_ARGS ?? "").split(/\s+/).filter(Boolean),
  ];
  const child = spawn(process.execPath, [...nodeArgs, script, ...args], {
    stdio: ["ignore", log, log, "ipc"],
    env: { ...process.env, FORCE_COLOR: "0" },
  });
  closeSync(log);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const pending: ((stats: ProcessStats) => void)[] = [];
  let readyPort: ((port: number) => void) | undefined;
  child.on("message", (message: WorkerMessage) => {
    if (message.type === "ready") readyPort?.(message.port);
    else if (message.type === "stats" && message.stats) pending.shift()?.(message.stats);
  });
  const port = await Promise.race([
    new Promise<number>((resolve) => {
      readyPort = resolve;
    }),
    exited.then((code) => {
      throw new Error(`${script} exited with ${code} before it was ready: see ${logFile}`);
    }),
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`${script} not ready within 60 s: see ${logFile}`)), 60_000).unref(),
    ),
  ]).catch((err: Error) => {
    child.kill("SIGKILL");
    throw err;
  });
  const pid = child.pid as number;
  return {
    child,
    pid,
    port,
    logFile,
    stats: (profile?: string) =>
      new Promise<ProcessStats>((resolve, reject) => {
        if (!child.connected) return reject(new Error(`${script}: IPC channel closed`));
        pending.push(resolve);
        child.send({ type: "stats", ...(profile ? { profile } : {}) } satisfies WorkerMessage);
      }),
    async stop(timeoutMs = 15_000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** CPU time (user + system) of a process from /proc/<pid>/stat, ms; NaN when unreadable. */
export function procCpuMs(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // fields[0] is field 3 (state): utime is field 14, stime field 15
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return Number.NaN;
  }
}

/** Resident set size of a process from /proc/<pid>/status, bytes; NaN when unreadable. */
export function procRss(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) * 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** The pid of a direct child of `pid` whose command name is `comm` (e.g. the embedded redis-server). */
export function childPid(pid: number, comm: string): number | undefined {
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      const children = readFileSync(join(`/proc/${pid}/task`, task, "children"), "utf8").trim();
      for (const child of children.split(/\s+/).filter(Boolean).map(Number)) {
        if (readFileSync(`/proc/${child}/comm`, "utf8").trim() === comm) return child;
      }
    }
  } catch {
    // the process is gone
  }
  return undefined;
}

/** CPU time all processes of the machine spent (user, nice, system, irq, softirq, steal), ms; NaN if unreadable. */
export function machineCpuMs(): number {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0] ?? "";
    const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
    const busy = [user, nice, system, irq, softirq, steal].reduce<number>((sum, v) => sum + (v ?? 0), 0);
    return (busy * 1000) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return Number.NaN;
  }
}
