import type { Logger } from "../logger.js";
import type { UpstreamConnection } from "./upstream-connection.js";

export interface ConnectionPoolOptions {
  /** Most connections open at once for this mailbox in this process. */
  maxConnections: number;
  /** Close a connection after it has been idle this long (ms). */
  idleTimeout: number;
  /** Close a connection after it has sent this many messages. */
  maxMessagesPerConnection: number;
  /** Opens a new authenticated connection. */
  open(): Promise<UpstreamConnection>;
  logger: Logger;
}

interface Idle {
  connection: UpstreamConnection;
  timer: NodeJS.Timeout;
}

/** Upstream connections of one mailbox: one TLS handshake and one AUTH serve many messages. */
export class ConnectionPool {
  private readonly idle: Idle[] = [];
  private openCount = 0;
  private closed = false;

  constructor(private readonly options: ConnectionPoolOptions) {}

  get size(): number {
    return this.openCount;
  }

  /** An idle connection, or a new one when fewer than maxConnections are open. Throws the upstream's error. */
  async acquire(): Promise<UpstreamConnection> {
    while (this.idle.length) {
      const { connection, timer } = this.idle.pop() as Idle;
      clearTimeout(timer);
      if (connection.usable) return connection;
      this.openCount--;
    }
    if (this.openCount >= this.options.maxConnections) {
      throw new Error(`no free upstream connection (${this.openCount} open)`);
    }
    this.openCount++;
    try {
      return await this.options.open();
    } catch (err) {
      this.openCount--;
      throw err;
    }
  }

  /** Gives a connection back: kept for reuse when it is healthy, closed otherwise. */
  release(connection: UpstreamConnection, healthy: boolean): void {
    const reuse =
      healthy &&
      !this.closed &&
      connection.usable &&
      connection.messagesSent < this.options.maxMessagesPerConnection;
    if (!reuse) {
      connection.close();
      this.openCount--;
      return;
    }
    const timer = setTimeout(() => {
      const index = this.idle.findIndex((i) => i.connection === connection);
      if (index !== -1) this.idle.splice(index, 1);
      connection.close();
      this.openCount--;
    }, this.options.idleTimeout);
    timer.unref();
    this.idle.push({ connection, timer });
  }

  /** Closes idle connections; those in use close when released. */
  close(): void {
    this.closed = true;
    for (const { connection, timer } of this.idle.splice(0)) {
      clearTimeout(timer);
      connection.close();
      this.openCount--;
    }
  }
}
