import { type ChildProcess, spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { Redis } from "ioredis";
import type { Logger } from "../logger.js";

/** A private redis-server child process on a unix socket under dataDir, append-only with fsync on every write. */
export interface EmbeddedRedis {
  /** ioredis connection options for the socket. */
  readonly path: string;
  stop(): Promise<void>;
}

export class RedisServerMissingError extends Error {
  constructor() {
    super(
      "redis-server was not found on PATH. Install it (Debian/Ubuntu: apt-get install redis-server; " +
        "RHEL/Fedora: dnf install redis; macOS: brew install redis) or set `redis:` in the config to an external Redis URL.",
    );
    this.name = "RedisServerMissingError";
  }
}

async function ping(path: string, attempts: number): Promise<boolean> {
  for (let i = 0; i < attempts; i++) {
    const client = new Redis({ path, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on("error", () => {});
    try {
      await client.connect();
      await client.ping();
      return true;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    } finally {
      client.disconnect();
    }
  }
  return false;
}

/** Shuts down a redis-server left on the socket by a relay that died without stopping it. */
async function shutdownLeftover(path: string, logger: Logger): Promise<void> {
  if (!(await ping(path, 1))) return;
  logger.warn(
    { socket: path },
    "an embedded redis-server from an earlier run is still running: shutting it down first",
  );
  const client = new Redis({ path, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on("error", () => {});
  await client.call("SHUTDOWN").catch(() => {});
  client.disconnect();
  for (let i = 0; i < 50 && (await ping(path, 1)); i++) await new Promise((r) => setTimeout(r, 100));
}

interface RunningServer {
  child: ChildProcess;
  exited: Promise<number | null>;
}

/** Spawns redis-server and waits until it answers on the socket. */
async function spawnServer(
  command: string,
  args: string[],
  socket: string,
  dir: string,
): Promise<RunningServer> {
  const child: ChildProcess = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (chunk) => {
    stderr += chunk;
  });
  const exited = new Promise<number | null>((resolveExit) => child.once("exit", (code) => resolveExit(code)));
  const spawnError = await new Promise<Error | undefined>((resolveSpawn) => {
    child.once("error", resolveSpawn);
    child.once("spawn", () => resolveSpawn(undefined));
  });
  if (spawnError) {
    if ((spawnError as NodeJS.ErrnoException).code === "ENOENT") throw new RedisServerMissingError();
    throw spawnError;
  }
  const ready = await Promise.race([ping(socket, 100), exited.then(() => false)]);
  if (!ready) {
    child.kill("SIGKILL");
    throw new Error(`embedded redis-server did not start (see ${join(dir, "redis.log")}): ${stderr.trim()}`);
  }
  return { child, exited };
}

/**
 * Starts the embedded redis-server and keeps it running: if it exits on its own (a full disk makes Redis exit
 * rather than acknowledge an unwritten write), it is started again with a growing delay until stop().
 */
export async function startEmbeddedRedis(
  dataDir: string,
  logger: Logger,
  /** The program to run; default redis-server from PATH. */
  command = "redis-server",
): Promise<EmbeddedRedis> {
  const dir = resolve(dataDir, "redis");
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const socket = join(dir, "redis.sock");
  await shutdownLeftover(socket, logger);
  const args = [
    ...["--port", "0", "--unixsocket", socket, "--unixsocketperm", "700", "--dir", dir],
    ...["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction"],
    ...["--daemonize", "no", "--loglevel", "warning", "--logfile", join(dir, "redis.log")],
  ];
  let server = await spawnServer(command, args, socket, dir);
  let stopping = false;
  let restartDelay = 1_000;
  let restartTimer: NodeJS.Timeout | undefined;
  const supervise = (running: RunningServer) => {
    running.exited.then((code) => {
      if (stopping) return;
      logger.error(
        { code, log: join(dir, "redis.log"), retryInMs: restartDelay },
        "embedded redis-server exited (disk full?): submissions get 451 until it is back; restarting it",
      );
      restartTimer = setTimeout(async () => {
        try {
          server = await spawnServer(command, args, socket, dir);
          restartDelay = 1_000;
          logger.info("embedded redis-server restarted");
          supervise(server);
        } catch (err) {
          restartDelay = Math.min(restartDelay * 2, 30_000);
          logger.error({ err: (err as Error).message }, "embedded redis-server could not be restarted");
          supervise({ child: running.child, exited: Promise.resolve(null) });
        }
      }, restartDelay);
    });
  };
  supervise(server);
  logger.info({ socket, dir }, "embedded redis-server started (append-only, fsync always)");
  return {
    path: socket,
    async stop() {
      stopping = true;
      clearTimeout(restartTimer);
      const { child, exited } = server;
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
