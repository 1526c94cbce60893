import { readFileSync } from "node:fs";
import { monitorEventLoopDelay } from "node:perf_hooks";

/**
 * How late the event loop ran timers since the last stats(), sampled every 10 ms (every 1 ms cost the ingest
 * benchmark's relay a measurable share of its throughput).
 */
const RESOLUTION_MS = 10;
const loopDelay = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
loopDelay.enable();

/**
 * The histogram records the whole interval between two timer runs (10.1 ms p50 in an idle process), so the
 * delay is what exceeds the resolution.
 */
const lateMs = (ns) => Math.max(0, Math.round((ns / 1e6 - RESOLUTION_MS) * 100) / 100);

/**
 * The process's peak RSS, bytes: VmHWM, the high-water mark of its own memory since it started. Not getrusage's
 * maxRSS, which Linux carries over from the parent through fork and exec: a relay spawned by a bench process
 * that held 600 MB of delivered messages reported 655 MB that it never used.
 */
function peakRss() {
  try {
    const kB = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
    if (kB) return Number(kB) * 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS * 1024;
}

/**
 * A worker process's answer to { type: "stats" } (ProcessStats in worker-ipc.ts): its CPU time and memory, and
 * its event loop's delay since the previous answer (then the histogram starts again).
 */
export function processStats() {
  const cpu = process.cpuUsage();
  const stats = {
    cpuMs: (cpu.user + cpu.system) / 1000,
    rss: process.memoryUsage.rss(),
    maxRss: peakRss(),
    loopDelayMs: {
      p50: lateMs(loopDelay.percentile(50)),
      p99: lateMs(loopDelay.percentile(99)),
      max: lateMs(loopDelay.max),
    },
  };
  loopDelay.reset();
  return stats;
}
