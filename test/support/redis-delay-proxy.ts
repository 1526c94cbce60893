import { connect, createServer, type Server, type Socket } from "node:net";
import { performance } from "node:perf_hooks";

export interface RedisDelayProxy {
  /** A redis:// URL that leads to the real Redis through the proxy. */
  url: string;
  /** What the clients of the delayed connections sent, in order, as it reached the proxy. */
  sent: SentChunk[];
  stop(): Promise<void>;
}

export interface SentChunk {
  /** performance.now() */
  at: number;
  /** The bytes as latin1 text (RESP is ASCII but for values). */
  text: string;
}

/**
 * A TCP proxy in front of a real Redis that holds back Redis's replies to the connections that name themselves
 * `connectionName` (ioredis sends CLIENT SETNAME first) by `delayMs`, in order; every other connection passes
 * as it is. Shows what a relay does when one of its connections answers late (a slow link, a busy Redis).
 */
export async function startRedisDelayProxy(
  redisUrl: string,
  connectionName: string,
  delayMs: number,
): Promise<RedisDelayProxy> {
  const target = new URL(redisUrl);
  const sockets = new Set<Socket>();
  const sent: SentChunk[] = [];
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port || 6379), target.hostname);
    sockets.add(client).add(upstream);
    let seen = "";
    let delayed = false;
    client.on("data", (chunk: Buffer) => {
      if (!delayed && seen.length < 4_096) {
        seen += chunk.toString("latin1");
        delayed = seen.includes(connectionName);
      }
      if (delayed) sent.push({ at: performance.now(), text: chunk.toString("latin1") });
      upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => {
      if (!delayed) {
        client.write(chunk);
        return;
      }
      // equal delays fire in the order they were set: replies keep their order
      setTimeout(() => client.writable && client.write(chunk), delayMs);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("close", close).on("error", close);
    upstream.on("close", close).on("error", close);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : 0;
  return {
    url: `redis://127.0.0.1:${port}`,
    sent,
    stop: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
