import { connect, createServer, type Server, type Socket } from "node:net";
import { performance } from "node:perf_hooks";

/** One chunk of bytes as it reached the proxy. */
export interface ProxiedChunk {
  /** performance.now() */
  at: number;
  /** "client": on its way to the target; "server": the target's, on its way back. */
  from: "client" | "server";
  /** Which accepted connection (1, 2, ...). */
  connection: number;
  bytes: Buffer;
}

/** What a proxy does with each chunk; by default it passes it on at once. */
export interface ProxyHooks {
  /** Called with every chunk from a client before it is passed on. */
  onClientChunk?: (chunk: ProxiedChunk) => void;
  /** Passes a chunk of the target's on to the client (`deliver`), now or later. */
  forwardServerChunk?: (chunk: ProxiedChunk, deliver: () => void) => void;
}

export interface TcpProxy {
  readonly port: number;
  /** Every chunk in both directions, in the order they reached the proxy. */
  readonly chunks: ProxiedChunk[];
  stop(): Promise<void>;
}

/**
 * A TCP proxy on loopback in front of `targetHost:targetPort` that records the traffic it passes (encrypted
 * traffic too: what it shows then is who wrote when, and how much).
 */
export async function startTcpProxy(
  targetHost: string,
  targetPort: number,
  hooks: ProxyHooks = {},
): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  const chunks: ProxiedChunk[] = [];
  let accepted = 0;
  const server: Server = createServer((client) => {
    const connection = ++accepted;
    const target = connect(targetPort, targetHost);
    sockets.add(client).add(target);
    const record = (from: ProxiedChunk["from"], bytes: Buffer): ProxiedChunk => {
      const chunk = { at: performance.now(), from, connection, bytes };
      chunks.push(chunk);
      return chunk;
    };
    client.on("data", (bytes: Buffer) => {
      const chunk = record("client", bytes);
      hooks.onClientChunk?.(chunk);
      target.write(bytes);
    });
    target.on("data", (bytes: Buffer) => {
      const deliver = () => client.writable && client.write(bytes);
      const chunk = record("server", bytes);
      if (hooks.forwardServerChunk) hooks.forwardServerChunk(chunk, deliver);
      else deliver();
    });
    const close = () => {
      client.destroy();
      target.destroy();
      sockets.delete(client);
      sockets.delete(target);
    };
    client.on("close", close).on("error", close);
    target.on("close", close).on("error", close);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  return {
    port: typeof address === "object" && address ? address.port : 0,
    chunks,
    stop: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
