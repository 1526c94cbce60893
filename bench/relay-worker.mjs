/**
 * One relay as its own OS process, run from the build (dist/) with node --single-threaded-gc, as it ships:
 * `node bench/relay-worker.mjs <config.json>` (the benchmark spawns it with an IPC channel).
 * The JSON is a raw config, validated like a config file. Logs go to stdout (pino JSON, level info or
 * SLUICE_LOG_LEVEL). Sends { type: "ready", port } once listening, answers { type: "stats" } with its CPU
 * time and memory (see worker-ipc.ts; it can also take a CPU profile between two of them), and stops cleanly on
 * SIGTERM.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { parseConfig } from "../dist/config/load.js";
import { createRelay } from "../dist/main.js";
import { processStats } from "./worker-stats.mjs";

const file = process.argv[2];
if (!file || !process.send) {
  console.error("usage: node bench/relay-worker.mjs <config.json> (spawned with an IPC channel)");
  process.exit(2);
}

const { config } = parseConfig(JSON.parse(readFileSync(file, "utf8")), process.env, file);
const relay = await createRelay(config);

/** A CPU profile of part of the run (the benchmark's --profile), or none. */
let profiler;

async function profile(instruction) {
  if (instruction === "start") {
    profiler = new Session();
    profiler.connect();
    await profiler.post("Profiler.enable");
    await profiler.post("Profiler.start");
    // where the memory goes: a sample every 32 KB allocated, short-lived objects included
    await profiler.post("HeapProfiler.startSampling", {
      samplingInterval: 32 * 1024,
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
  } else if (instruction && profiler) {
    const { profile: taken } = await profiler.post("Profiler.stop");
    writeFileSync(instruction, JSON.stringify(taken));
    const { profile: allocations } = await profiler.post("HeapProfiler.stopSampling");
    writeFileSync(instruction.replace(/\.cpuprofile$/, ".heapprofile"), JSON.stringify(allocations));
    profiler.disconnect();
    profiler = undefined;
  }
}

process.on("message", (message) => {
  if (message?.type !== "stats") return;
  // the stats are sent whatever became of the profile: the benchmark waits for them
  profile(message.profile)
    .catch((err) => console.error(err))
    .then(() => process.send?.({ type: "stats", stats: processStats() }));
});
process.once("SIGTERM", () => {
  relay.stop().then(
    () => process.exit(0),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
});
process.send({ type: "ready", port: relay.addresses[0]?.port ?? 0 });
