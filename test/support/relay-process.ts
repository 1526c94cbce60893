import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitFor } from "./relay.js";

const cli = join(import.meta.dirname, "../../src/cli.ts");

/** `sluice start` running as its own OS process. */
export interface RelayProcess {
  child: ChildProcess;
  /** stdout and stderr lines so far. */
  output: string[];
  exited: Promise<number | null>;
  /** The first SMTP listener's port, read from the "smtp listener ready" log line. */
  port(): Promise<number>;
  /** SIGTERM and wait for the exit code. */
  stop(): Promise<number | null>;
}

/** Writes a config object to a temp file (JSON is YAML) and returns the path. */
export function writeConfigFile(config: Record<string, unknown>): string {
  const file = join(mkdtempSync(join(tmpdir(), "sluice-cfg-")), "sluice.yaml");
  writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

/** Starts `node --import tsx src/cli.ts start --config FILE` with extra environment variables. */
export function startRelayProcess(configFile: string, env: Record<string, string> = {}): RelayProcess {
  const child = spawn("node", ["--import", "tsx", cli, "start", "--config", configFile], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const output: string[] = [];
  child.stdout?.on("data", (d) => output.push(...String(d).split("\n").filter(Boolean)));
  child.stderr?.on("data", (d) => output.push(String(d)));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return {
    child,
    output,
    exited,
    async port() {
      const ready = () => output.find((l) => l.includes("smtp listener ready"));
      await waitFor(() => ready() !== undefined || child.exitCode !== null, 30_000, "relay listening");
      const line = ready();
      if (!line) throw new Error(`relay exited before listening:\n${output.join("\n")}`);
      return (JSON.parse(line) as { port: number }).port;
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
}

/**
 * The first of `relays` to log a delivery from now on: one that holds an upstream connection (to kill a process
 * in the middle of its deliveries, not one that has none).
 */
export async function nextToDeliver(relays: RelayProcess[], timeoutMs = 30_000): Promise<RelayProcess> {
  const seen = relays.map((r) => r.output.length);
  const delivered = (r: RelayProcess, i: number) =>
    r.output.slice(seen[i]).some((line) => line.includes('"event":"delivered"'));
  await waitFor(() => relays.some(delivered), timeoutMs, "a delivery logged");
  return relays.find(delivered) as RelayProcess;
}
