import { type ProxiedChunk, startTcpProxy } from "./tcp-proxy.js";

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
  const sent: SentChunk[] = [];
  /** What each connection sent first (up to 4 KB), until it names itself; and the ones that did. */
  const seen = new Map<number, string>();
  const delayed = new Set<number>();
  const proxy = await startTcpProxy(target.hostname, Number(target.port || 6379), {
    onClientChunk: ({ connection, at, bytes }: ProxiedChunk) => {
      const before = seen.get(connection) ?? "";
      if (!delayed.has(connection) && before.length < 4_096) {
        const text = before + bytes.toString("latin1");
        seen.set(connection, text);
        if (text.includes(connectionName)) delayed.add(connection);
      }
      if (delayed.has(connection)) sent.push({ at, text: bytes.toString("latin1") });
    },
    // equal delays fire in the order they were set: replies keep their order
    forwardServerChunk: ({ connection }, deliver) => {
      if (delayed.has(connection)) setTimeout(deliver, delayMs);
      else deliver();
    },
  });
  return { url: `redis://127.0.0.1:${proxy.port}`, sent, stop: () => proxy.stop() };
}
