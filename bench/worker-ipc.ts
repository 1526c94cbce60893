/** What the benchmark and its worker processes (relay-worker.mjs, sink-worker.mjs) say over IPC. */

export interface ProcessStats {
  /** CPU time since the process started, ms (user + system). */
  cpuMs: number;
  /** Resident set size now, bytes. */
  rss: number;
  /** Peak resident set size, bytes. */
  maxRss: number;
}

export type WorkerMessage = { type: "ready"; port: number } | { type: "stats"; stats?: ProcessStats };
