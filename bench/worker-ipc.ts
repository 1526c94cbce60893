/** What the benchmark and its worker processes (relay-worker.mjs, sink-worker.mjs, bare-client-worker.mjs) say over IPC. */

export interface ProcessStats {
  /** CPU time since the process started, ms (user + system). */
  cpuMs: number;
  /** Resident set size now, bytes. */
  rss: number;
  /** Peak resident set size, bytes. */
  maxRss: number;
  /** How late the event loop ran since the previous stats (sampled every 10 ms). */
  loopDelayMs: { p50: number; p99: number; max: number };
}

export type WorkerMessage =
  | { type: "ready"; port: number }
  /**
   * Stats asked and answered. relay-worker.mjs: `profile` "start" starts a CPU profile first; a file name
   * stops it and writes it there (the benchmark's `--profile <dir>`: the delivery only, not the queueing).
   */
  | { type: "stats"; stats?: ProcessStats; profile?: string }
  /** bare-client-worker.mjs: start sending; and its answer once every message is sent. */
  | { type: "go" }
  | { type: "done" };
