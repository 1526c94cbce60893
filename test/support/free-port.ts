import net from "node:net";

/**
 * Asks the kernel for a TCP port that is free right now on `host` (default "127.0.0.1"), by listening on
 * port 0 and closing again. Another process may take the port before the caller binds it: callers that
 * spawn a server on it should retry with a new port when the bind fails.
 */
export async function findFreePort(host = "127.0.0.1"): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ port: 0, host, exclusive: true }, () => resolve());
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") {
    throw new Error(`findFreePort: could not read the port of a listener on ${host}`);
  }
  return address.port;
}
