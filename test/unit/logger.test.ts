import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";

/** Runs `script` (ESM, with createLogger imported) in a child process whose stdout is a pipe, as under systemd or Docker. */
async function linesFrom(script: string): Promise<{ lines: string[]; code: number | null }> {
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
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    out += chunk;
  });
  const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
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
});
