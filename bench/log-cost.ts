/**
 * CPU per log line at a steady rate, stdout to a file (as under the bench, systemd or Docker): the relay's
 * logger (createLogger: lines gathered into 4 KB writes) against one asynchronous write per line, and
 * against the same loop logging nothing. Prints numbers, asserts nothing.
 * `npx tsx bench/log-cost.ts` (about 70 s: 3 modes x 2 rounds x 22 s at 1,000 lines a second).
 */
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, rmSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import pino from "pino";
import { createLogger, REDACTED_PATHS } from "../src/logger.js";

const LINES = 20_000;
/** Lines logged per 1 ms timer tick: 1,000 lines a second, a relay delivering 1,000 messages a second. */
const PER_TICK = 1;
const MODES = ["relay logger", "a write per line", "no logging"] as const;
type Mode = (typeof MODES)[number];

function loggerFor(mode: Mode): pino.Logger | undefined {
  if (mode === "relay logger") return createLogger({ level: "info" });
  if (mode === "a write per line") {
    return pino(
      { level: "info", redact: { paths: REDACTED_PATHS, censor: "[secret]" } },
      pino.destination({ dest: 1, sync: false }),
    );
  }
  return undefined;
}

/** In the child: logs LINES delivered lines, PER_TICK a millisecond; reports CPU µs per line on stderr. */
async function child(mode: Mode): Promise<void> {
  const logger = loggerFor(mode)?.child({ mailbox: "scanner@contoso.com" });
  let n = 0;
  const start = process.cpuUsage();
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      for (let i = 0; i < PER_TICK && n < LINES; i++, n++) {
        logger?.info(
          {
            id: `Q${n}`,
            messageId: "<20261126.1234@printer.contoso.local>",
            client: "printers",
            attempt: 1,
            event: "delivered",
            reply: "250 2.0.0 OK <a1b2c3@PR3P192MB0001.EURP192.PROD.OUTLOOK.COM> [Hostname=PR3P192MB0001]",
            delivered: 1,
            refused: 0,
          },
          "message delivered",
        );
      }
      if (n < LINES) return;
      clearInterval(timer);
      resolve();
    }, 1);
  });
  const used = process.cpuUsage(start);
  process.stderr.write(JSON.stringify({ user: used.user / LINES, system: used.system / LINES }));
}

function main(): void {
  const dir = mkdtempSync(join(os.tmpdir(), "sluice-log-cost-"));
  const rows: Record<Mode, { user: number; system: number }[]> = {
    "relay logger": [],
    "a write per line": [],
    "no logging": [],
  };
  try {
    for (let round = 0; round < 2; round++) {
      for (const mode of MODES) {
        const out = openSync(join(dir, "log"), "w");
        const run = spawnSync(
          process.execPath,
          ["--single-threaded-gc", "--import", "tsx", import.meta.filename, "--child", mode],
          { stdio: ["ignore", out, "pipe"], encoding: "utf8" },
        );
        closeSync(out);
        rows[mode].push(JSON.parse(run.stderr));
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const base = rows["no logging"];
  console.log(`CPU per log line, ${LINES} lines at ${PER_TICK * 1000}/s, stdout to a file (2 rounds)`);
  for (const mode of MODES) {
    const cells = rows[mode].map((r, i) => {
      const total = r.user + r.system;
      const less =
        mode === "no logging"
          ? ""
          : `, ${(total - ((base[i]?.user ?? 0) + (base[i]?.system ?? 0))).toFixed(1)} beyond the loop`;
      return `${total.toFixed(1)} us (user ${r.user.toFixed(1)}, sys ${r.system.toFixed(1)}${less})`;
    });
    console.log(`${mode.padEnd(17)} ${cells.join("  |  ")}`);
  }
}

if (process.argv[2] === "--child") await child(process.argv[3] as Mode);
else main();
