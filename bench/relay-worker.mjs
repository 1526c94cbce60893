/**
 * One relay as its own OS process, run from the build (dist/) with plain node, as it ships:
 * `node bench/relay-worker.mjs <config.json>` (the benchmark spawns it with an IPC channel).
 * The JSON is a raw config, validated like a config file. Logs go to stdout (pino JSON, level info or
 * SLUICE_LOG_LEVEL). Sends { type: "ready", port } once listening, answers { type: "stats" } with its CPU
 * time and memory (see worker-ipc.ts), and stops cleanly on SIGTERM.
 */
import { readFileSync } from "node:fs";
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

process.on("message", (message) => {
  if (message?.type === "stats") process.send?.({ type: "stats", stats: processStats() });
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
