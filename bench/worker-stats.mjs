import { monitorEventLoopDelay } from "node:perf_hooks";

/**
 * How late the event loop ran timers since the last stats(), sampled every 10 ms (every 1 ms cost the ingest
 * benchmark's relay a measurable share of its throughput).
 */
const loopDelay = monitorEventLoopDelay({ resolution: 10 });
loopDelay.enable();

/**
 * A worker process's answer to { type: "stats" } (ProcessStats in worker-ipc.ts): its CPU time and memory, and
 * its event loop's delay since the previous answer (then the histogram starts again).
 */
export function processStats() {
  const cpu = process.cpuUsage();
  const ms = (ns) => Math.round(ns / 1e4) / 100;
  const stats = {
    cpuMs: (cpu.user + cpu.system) / 1000,
    rss: process.memoryUsage.rss(),
    maxRss: process.resourceUsage().maxRSS * 1024,
    loopDelayMs: {
      p50: ms(loopDelay.percentile(50)),
      p99: ms(loopDelay.percentile(99)),
      max: ms(loopDelay.max),
    },
  };
  loopDelay.reset();
  return stats;
}
