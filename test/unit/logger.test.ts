import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";

/**
 * Runs `script` (ESM, with createLogger imported) in a child process whose stdout is a pipe, as under systemd or
 * Docker. With `killWhen`, the child is killed with SIGKILL (no exit handler runs) once the output passes it,
 * or after 5 s.
 */
async function linesFrom(
  script: string,
  killWhen?: (out: string) => boolean,
): Promise<{ lines: string[]; code: number | null }> {
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "--input-type=module",
      "-e",
      `import { createLogger } from "./src/logger.ts"; const logger = createLogger(); ${script}`,
    ],
    { stdio: ["ignore", "pipe", "ignore"] },
  );
  let out = "";
  const kill = () => child.kill("SIGKILL");
  const timer = killWhen ? setTimeout(kill, 5_000) : undefined;
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    out += chunk;
    if (killWhen?.(out)) kill();
  });
  const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
  clearTimeout(timer);
  return { lines: out.split("\n").filter(Boolean), code };
}

describe("the relay's log (stdout, written asynchronously)", () => {
  it("keeps every line logged just before process.exit()", async () => {
    const { lines, code } = await linesFrom(
      `for (let i = 0; i < 20000; i++) logger.info({ event: "delivered", i }, "message delivered"); process.exit(3);`,
    );
    expect(code).toBe(3);
    expect(lines).toHaveLength(20000);
    expect(JSON.parse(lines.at(-1) as string)).toMatchObject({ i: 19999, msg: "message delivered" });
  });

  it("keeps every line logged before an uncaught error ends the process", async () => {
    const { lines, code } = await linesFrom(
      `for (let i = 0; i < 20000; i++) logger.info({ i }, "line"); setImmediate(() => { throw new Error("boom"); });`,
    );
    expect(code).toBe(1);
    expect(lines).toHaveLength(20000);
  });

  it("writes a lone line while a quiet relay runs, without waiting for more lines or for the exit", async () => {
    const { lines } = await linesFrom(
      `logger.error({ event: "paused" }, "mailbox paused: upstream authentication failed"); setInterval(() => {}, 1_000);`,
      (out) => out.includes("\n"),
    );
    // killed with SIGKILL: only a line written while the process ran is here
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0] as string)).toMatchObject({ event: "paused" });
  });
});
