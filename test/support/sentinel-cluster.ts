import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { findFreePort } from "./free-port.js";
import { waitFor } from "./relay.js";

interface ServerProcess {
  port: number;
  args: string[];
  child?: ChildProcess;
}

/** A real primary, one replica and three sentinels (redis-server --sentinel), all on loopback. */
export interface SentinelCluster {
  name: string;
  /** host:port of each sentinel, for the relay's `redis.sentinels`. */
  sentinels: string[];
  primaryPort(): Promise<number>;
  /** kill -9 the current primary. */
  killPrimary(): Promise<number>;
  /** Starts a killed server again on its port (it rejoins as a replica). */
  restart(port: number): Promise<void>;
  stop(): Promise<void>;
}

const NAME = "mymaster";

async function ping(port: number): Promise<boolean> {
  const client = new Redis({
    port,
    host: "127.0.0.1",
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  client.on("error", () => {});
  try {
    await client.connect();
    return (await client.ping()) === "PONG";
  } catch {
    return false;
  } finally {
    client.disconnect();
  }
}

async function run(server: ServerProcess): Promise<void> {
  server.child = spawn("redis-server", server.args, { stdio: "ignore" });
  await waitFor(() => ping(server.port), 10_000, `redis on ${server.port}`);
}

export async function startSentinelCluster(): Promise<SentinelCluster> {
  const root = mkdtempSync(join(tmpdir(), "sluice-sentinel-"));
  const dataArgs = (dir: string) => [
    "--dir",
    dir,
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--save",
    "",
    // a master with no replica in sync refuses writes: a killed primary restarted before every sentinel has
    // switched comes back as a master for a moment, and what a relay recorded on it then was discarded when the
    // sentinels made it a replica (deliveries recorded there were sent again: docs/deployment.md)
    "--min-replicas-to-write",
    "1",
    "--min-replicas-max-lag",
    "10",
  ];
  const primaryPort = await findFreePort();
  const replicaPort = await findFreePort();
  const servers = new Map<number, ServerProcess>();
  const primaryDir = mkdtempSync(join(root, "a-"));
  const replicaDir = mkdtempSync(join(root, "b-"));
  servers.set(primaryPort, {
    port: primaryPort,
    args: ["--port", String(primaryPort), "--bind", "127.0.0.1", ...dataArgs(primaryDir)],
  });
  servers.set(replicaPort, {
    port: replicaPort,
    args: [
      "--port",
      String(replicaPort),
      "--bind",
      "127.0.0.1",
      ...dataArgs(replicaDir),
      "--replicaof",
      "127.0.0.1",
      String(primaryPort),
    ],
  });
  for (const server of servers.values()) await run(server);
  const sentinelPorts: number[] = [];
  const sentinels: ServerProcess[] = [];
  for (let i = 0; i < 3; i++) {
    const port = await findFreePort();
    const conf = join(root, `sentinel-${i}.conf`);
    writeFileSync(
      conf,
      [
        `port ${port}`,
        "bind 127.0.0.1",
        `dir ${root}`,
        `sentinel monitor ${NAME} 127.0.0.1 ${primaryPort} 2`,
        `sentinel down-after-milliseconds ${NAME} 1000`,
        `sentinel failover-timeout ${NAME} 5000`,
        `sentinel parallel-syncs ${NAME} 1`,
        "",
      ].join("\n"),
    );
    const sentinel = { port, args: [conf, "--sentinel"] };
    await run(sentinel);
    sentinels.push(sentinel);
    sentinelPorts.push(port);
  }
  const sentinelClient = new Redis({ port: sentinelPorts[0], host: "127.0.0.1" });
  const primary = async () => {
    const [, port] = (await sentinelClient.call("SENTINEL", "get-master-addr-by-name", NAME)) as [
      string,
      string,
    ];
    return Number(port);
  };
  // ready when the replica is in sync and every sentinel knows it
  await waitFor(
    async () => {
      const info = await new Redis({ port: replicaPort, host: "127.0.0.1" })
        .info("replication")
        .catch(() => "");
      const replicas = (await sentinelClient.call("SENTINEL", "replicas", NAME)) as unknown[];
      return info.includes("master_link_status:up") && replicas.length === 1;
    },
    30_000,
    "replica in sync and seen by the sentinels",
  );
  return {
    name: NAME,
    sentinels: sentinelPorts.map((p) => `127.0.0.1:${p}`),
    primaryPort: primary,
    async killPrimary() {
      const port = await primary();
      const server = servers.get(port);
      server?.child?.kill("SIGKILL");
      await waitFor(async () => !(await ping(port)), 5_000, "primary dead");
      return port;
    },
    async restart(port) {
      const server = servers.get(port);
      if (server) await run(server);
    },
    async stop() {
      sentinelClient.disconnect();
      for (const s of [...sentinels, ...servers.values()]) s.child?.kill("SIGKILL");
    },
  };
}
