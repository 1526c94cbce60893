import { type ChildProcess, spawn } from "node:child_process";
import { rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { withoutUndefined } from "./defaults.js";
import { findFreePort } from "./free-port.js";

/** A redis-server process of its own, on 127.0.0.1, with its data in a fresh temporary directory. */
export interface PrivateRedis {
  /** `redis://127.0.0.1:PORT`; stays the same across stop()/start() so clients can reconnect. */
  url: string;
  port: number;
  /** Data directory (the append-only files live in `dir/appendonlydir`). */
  dir: string;
  /** Process id while the server runs, undefined while it is stopped. */
  pid(): number | undefined;
  /** Graceful stop (SIGTERM: redis flushes the append-only file), resolves once the process has exited. */
  stop(): Promise<void>;
  /**
   * Sends a signal (default SIGKILL) and, for a signal that ends the process, waits for the exit.
   * SIGSTOP / SIGCONT / SIGTSTP only pause / resume the server (to simulate a hung Redis): no wait.
   */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts the server again on the same port and dir (data survives when append-only). No-op if running. */
  start(): Promise<void>;
  /** stop(), then removes the data directory. Extra to the original contract: the global teardown uses it. */
  destroy(): Promise<void>;
}

export interface PrivateRedisOptions {
  /** Persist with an append-only file fsync'ed on every write (`--appendfsync always`). Default true. */
  appendOnly?: boolean;
  /** Port to listen on. Default: a free port chosen at start and kept for the life of the instance. */
  port?: number;
  /** How long to wait for the server to answer PING after a (re)start. Default 10 000 ms. */
  startTimeoutMs?: number;
  /** Executable to run. Default "redis-server" from PATH. */
  command?: string;
}

const PAUSING_SIGNALS: ReadonlySet<NodeJS.Signals> = new Set(["SIGSTOP", "SIGCONT", "SIGTSTP"]);
/** How much of the server's output is kept to explain a failed start. */
const OUTPUT_TAIL_BYTES = 4096;
/** How long a graceful stop may take before the process is killed. */
const STOP_TIMEOUT_MS = 10_000;

/**
 * Spawns `redis-server` on 127.0.0.1 with `--save ""`, append-only per `options.appendOnly`, and waits
 * until it answers PING. Call destroy() when done (stop() alone keeps the data dir until the test process
 * exits, when it is removed and a server still running is killed).
 */
export async function startPrivateRedis(options: PrivateRedisOptions = {}): Promise<PrivateRedis> {
  const settings = {
    appendOnly: true,
    startTimeoutMs: 10_000,
    command: "redis-server",
    ...withoutUndefined(options),
  };
  // A port we picked ourselves can be taken by someone else before redis binds it: retry with another one.
  const attempts = options.port === undefined ? 5 : 1;
  let lastError: unknown;
  for (let attempt = 0; attempt < attempts; attempt++) {
    const port = options.port ?? (await findFreePort());
    const dir = await mkdtemp(path.join(os.tmpdir(), "sluice-redis-"));
    const redis = new RedisProcess(settings.command, port, dir, settings.appendOnly, settings.startTimeoutMs);
    try {
      await redis.start();
      return redis;
    } catch (error) {
      lastError = error;
      await redis.destroy();
    }
  }
  throw lastError;
}

class RedisProcess implements PrivateRedis {
  readonly url: string;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private output = "";
  /** A test process that exits without destroy() must not leave the server running nor its files behind. */
  private readonly cleanUpOnExit = () => {
    this.child?.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  };

  constructor(
    private readonly command: string,
    readonly port: number,
    readonly dir: string,
    private readonly appendOnly: boolean,
    private readonly startTimeoutMs: number,
  ) {
    this.url = `redis://127.0.0.1:${port}`;
    process.once("exit", this.cleanUpOnExit);
  }

  pid(): number | undefined {
    return this.child?.pid;
  }

  async start(): Promise<void> {
    if (this.child) return;
    const args = [
      "--port",
      String(this.port),
      "--bind",
      "127.0.0.1",
      "--dir",
      this.dir,
      "--save",
      "",
      "--appendonly",
      this.appendOnly ? "yes" : "no",
      "--appendfsync",
      "always",
      "--daemonize",
      "no",
      "--logfile",
      "",
    ];
    this.output = "";
    const child = spawn(this.command, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    const keep = (chunk: Buffer) => {
      this.output = (this.output + chunk.toString("utf8")).slice(-OUTPUT_TAIL_BYTES);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.exited = new Promise<void>((resolve) => {
      child.once("exit", () => {
        if (this.child === child) this.child = undefined;
        resolve();
      });
      child.once("error", (error) => {
        keep(Buffer.from(String(error)));
        if (this.child === child) this.child = undefined;
        resolve();
      });
    });
    await this.waitUntilReady(child);
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
    await this.exited;
    clearTimeout(timer);
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const child = this.child;
    if (!child) return;
    child.kill(signal);
    if (!PAUSING_SIGNALS.has(signal)) await this.exited;
  }

  async destroy(): Promise<void> {
    // A paused server ignores SIGTERM until resumed.
    this.child?.kill("SIGCONT");
    await this.stop();
    process.removeListener("exit", this.cleanUpOnExit);
    await rm(this.dir, { recursive: true, force: true });
  }

  private async waitUntilReady(child: ChildProcess): Promise<void> {
    const deadline = Date.now() + this.startTimeoutMs;
    while (Date.now() < deadline) {
      if (this.child !== child) {
        throw new Error(`redis-server on port ${this.port} exited during start:\n${this.output.trim()}`);
      }
      if (await answersPong(this.port)) return;
      await sleep(20);
    }
    child.kill("SIGKILL");
    await this.exited;
    throw new Error(
      `redis-server on port ${this.port} did not answer PING within ${this.startTimeoutMs} ms:\n${this.output.trim()}`,
    );
  }
}

/** One PING over a fresh socket; false on any error or a non-PONG reply (e.g. -LOADING). */
function answersPong(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: "127.0.0.1" });
    let reply = "";
    const finish = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => finish(false));
    socket.once("error", () => finish(false));
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      reply += chunk.toString("latin1");
      if (reply.includes("\r\n")) finish(reply.startsWith("+PONG"));
    });
    socket.once("end", () => finish(false));
  });
}
