/** A worker process's answer to { type: "stats" } (ProcessStats in worker-ipc.ts): its CPU time and memory. */
export function processStats() {
  const cpu = process.cpuUsage();
  return {
    cpuMs: (cpu.user + cpu.system) / 1000,
    rss: process.memoryUsage.rss(),
    maxRss: process.resourceUsage().maxRSS * 1024,
  };
}
