import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { parseConfig } from "../../src/config/load.js";
import type { Config } from "../../src/config/schema.js";
import { createRelay, type Relay } from "../../src/main.js";

export interface TestLogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

export interface TestRelay extends Relay {
  port: number;
  config: Readonly<Config>;
  /** Every log line the relay wrote, parsed. */
  logs: TestLogLine[];
  /** The same lines as written (JSON.parse keeps one of two equal keys: these show both). */
  lines: string[];
}

/** Writes text to a new temp file and returns its path (for config keys that take files, like upstream.ca). */
export function tempFile(name: string, text: string): string {
  const path = join(mkdtempSync(join(tmpdir(), "sluice-file-")), name);
  writeFileSync(path, text);
  return path;
}

/** A unique Redis key prefix, so relays of different tests never see each other's queues. */
export function uniquePrefix(): string {
  return `t${randomBytes(4).toString("hex")}`;
}

/**
 * Builds a relay from a raw config object (validated like a config file) with test-friendly defaults: one
 * listener on 127.0.0.1 and a free port, a unique Redis prefix, a temp dataDir, short retry delays.
 */
export async function startTestRelay(raw: Record<string, unknown>): Promise<TestRelay> {
  const logs: TestLogLine[] = [];
  const lines: string[] = [];
  const logger = pino(
    { level: "debug" },
    {
      write(line: string) {
        lines.push(line);
        logs.push(JSON.parse(line) as TestLogLine);
      },
    },
  );
  const { config } = parseConfig(
    {
      listen: [{ port: 0, host: "127.0.0.1", maxClientsPerAddress: 1_000 }],
      redisPrefix: uniquePrefix(),
      dataDir: mkdtempSync(join(tmpdir(), "sluice-data-")),
      retry: { firstDelay: 200, factor: 2, maxDelay: 1_000 },
      shutdownTimeout: 5_000,
      ...raw,
    },
    process.env,
    "test",
  );
  const relay = await createRelay(config, { logger });
  return Object.assign(relay, { port: relay.addresses[0]?.port ?? 0, config, logs, lines });
}

/** Resolves when `check` returns true, polling; rejects after timeoutMs. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 20_000,
  what = "condition",
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
