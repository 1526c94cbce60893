import { spawn } from "node:child_process";
import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../src/logger.js";

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

describe("secrets in log lines", () => {
  /** One line logged through createLogger, parsed. */
  function logged(fields: Record<string, unknown>): Record<string, unknown> {
    let line = "";
    const destination = new Writable({
      write(chunk: Buffer, _encoding, done) {
        line += chunk.toString();
        done();
      },
    });
    createLogger({ destination }).info(fields, "a line");
    return JSON.parse(line) as Record<string, unknown>;
  }

  it("censors a secret at the top level of a line", () => {
    const line = logged({
      id: "Q1",
      password: "hunter2",
      token: "eyJ0",
      clientSecret: "s3cret",
      credentials: { a: 1 },
    });
    expect(line).toMatchObject({
      id: "Q1",
      password: "[secret]",
      token: "[secret]",
      clientSecret: "[secret]",
    });
    expect(line.credentials).toBe("[secret]");
  });

  it("censors a secret inside a settings object or a login logged by mistake, and keeps the rest of it", () => {
    const line = logged({
      upstream: { host: "smtp.office365.com", password: "mailbox-pass" },
      auth: { user: "scanner", pass: "scan-pass", credentials: { user: "scanner", pass: "x" } },
      mailbox: { oauth2: { clientSecret: "app-secret", tenant: "contoso" }, accessToken: "eyJ1" },
      config: { privateKey: "-----BEGIN PRIVATE KEY-----" },
    });
    const text = JSON.stringify(line);
    for (const secret of ["mailbox-pass", "scan-pass", "app-secret", "eyJ1", "BEGIN PRIVATE KEY"]) {
      expect(text).not.toContain(secret);
    }
    expect(line).toMatchObject({
      upstream: { host: "smtp.office365.com", password: "[secret]" },
      auth: { user: "scanner", pass: "[secret]", credentials: "[secret]" },
      mailbox: { oauth2: { clientSecret: "[secret]", tenant: "contoso" }, accessToken: "[secret]" },
    });
  });
});
