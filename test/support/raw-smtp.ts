import net from "node:net";
import tls from "node:tls";

/** One complete (possibly multi-line) SMTP reply. */
export interface SmtpReply {
  /** Reply code of the last line; 0 when a line did not start with three digits. */
  code: number;
  /** Text of each line after "NNN-" / "NNN ". */
  lines: string[];
  /** lines joined with "\n". */
  text: string;
}

export interface RawSmtpOptions {
  port: number;
  /** Default "127.0.0.1". */
  host?: string;
  /** TLS from the first byte. Default false. */
  secure?: boolean;
  /** CA (PEM) to verify the server with on secure / startTls. Without it the certificate is not checked. */
  ca?: string;
  /** SNI / name to verify. Default: none (the certificate is checked against the host IP). */
  servername?: string;
  /** Local address to connect from (e.g. "127.0.0.2" to look like another client). Default: any. */
  localAddress?: string;
  /** How long read() / command() wait for a reply, in ms. Default 10 000. */
  timeoutMs?: number;
}

/** A line-level SMTP client over a real socket, for exact replies and hostile input. */
export interface RawSmtp {
  /** The server's greeting (the first reply). */
  greeting(): Promise<SmtpReply>;
  /** Writes `line` + CRLF and resolves with the next reply. */
  command(line: string): Promise<SmtpReply>;
  /** Resolves with the next reply not yet read. */
  read(): Promise<SmtpReply>;
  /** Writes bytes as they are (no CRLF added). */
  write(data: Buffer | string): void;
  /** Upgrades to TLS; call after "STARTTLS" got its 220. */
  startTls(options?: { ca?: string; servername?: string }): Promise<void>;
  /** Resolves when the server has closed the connection. */
  readonly closed: Promise<void>;
  readonly isClosed: boolean;
  /** Closes our side (FIN) and resolves once the socket is closed (destroyed after 1 s). */
  close(): Promise<void>;
}

const REPLY_LINE = /^(\d{3})([ -]?)(.*)$/;

/** Connects to `host:port` and starts reading replies; the greeting is the first one. */
export async function openRawSmtp(options: RawSmtpOptions): Promise<RawSmtp> {
  const client = new RawSmtpClient(options);
  await client.connect();
  return client;
}

/**
 * Opens a connection, reads the greeting, sends each command and reads its reply, then closes.
 * Resolves with [greeting, ...one reply per command].
 */
export async function smtpDialogue(options: RawSmtpOptions, ...commands: string[]): Promise<SmtpReply[]> {
  const client = await openRawSmtp(options);
  try {
    const replies = [await client.greeting()];
    for (const command of commands) replies.push(await client.command(command));
    return replies;
  } finally {
    await client.close();
  }
}

class RawSmtpClient implements RawSmtp {
  readonly closed: Promise<void>;
  isClosed = false;
  private socket!: net.Socket;
  private buffer = "";
  private pendingLines: string[] = [];
  private readonly replies: SmtpReply[] = [];
  private readonly waiters: { resolve(reply: SmtpReply): void; reject(error: Error): void }[] = [];
  private firstReply: Promise<SmtpReply> | undefined;
  private markClosed!: () => void;
  private readonly onData = (chunk: Buffer) => this.receive(chunk);

  constructor(private readonly options: RawSmtpOptions) {
    this.closed = new Promise((resolve) => {
      this.markClosed = resolve;
    });
  }

  async connect(): Promise<void> {
    const { port, host = "127.0.0.1", secure = false, localAddress } = this.options;
    const plain = net.connect({ port, host, localAddress });
    await new Promise<void>((resolve, reject) => {
      plain.once("connect", () => {
        plain.removeListener("error", reject);
        resolve();
      });
      plain.once("error", reject);
    });
    this.attach(secure ? await this.handshake(plain, this.options) : plain);
    this.firstReply = this.read();
    this.firstReply.catch(() => undefined); // awaited (or not) through greeting()
  }

  greeting(): Promise<SmtpReply> {
    if (!this.firstReply) throw new Error("raw SMTP: not connected");
    return this.firstReply;
  }

  async command(line: string): Promise<SmtpReply> {
    if (this.firstReply) await this.firstReply.catch(() => undefined);
    this.write(`${line}\r\n`);
    return this.read();
  }

  read(): Promise<SmtpReply> {
    const ready = this.replies.shift();
    if (ready) return Promise.resolve(ready);
    if (this.isClosed) return Promise.reject(this.closedError());
    const timeoutMs = this.options.timeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (reply: SmtpReply) => {
          clearTimeout(timer);
          resolve(reply);
        },
        reject: (error: Error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(
          new Error(
            `raw SMTP: no complete reply within ${timeoutMs} ms; partial: ${JSON.stringify(this.buffer)}`,
          ),
        );
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  write(data: Buffer | string): void {
    this.socket.write(data);
  }

  async startTls(options: { ca?: string; servername?: string } = {}): Promise<void> {
    const plain = this.socket;
    plain.removeListener("data", this.onData);
    const secure = await this.handshake(plain, { ...this.options, ...options });
    this.buffer = "";
    this.attach(secure);
  }

  /** TLS over a connected socket; verifies the certificate only when a CA is given. */
  private async handshake(
    plain: net.Socket,
    options: { host?: string; ca?: string; servername?: string },
  ): Promise<tls.TLSSocket> {
    const { host = "127.0.0.1", ca, servername } = options;
    const secure = tls.connect({ socket: plain, host, ca, servername, rejectUnauthorized: ca !== undefined });
    await new Promise<void>((resolve, reject) => {
      secure.once("secureConnect", () => {
        secure.removeListener("error", reject);
        resolve();
      });
      secure.once("error", reject);
    });
    return secure;
  }

  async close(): Promise<void> {
    if (!this.isClosed) {
      this.socket.end();
      const timer = setTimeout(() => this.socket.destroy(), 1000);
      await this.closed;
      clearTimeout(timer);
    }
  }

  private attach(socket: net.Socket): void {
    this.socket = socket;
    socket.on("data", this.onData);
    socket.on("error", () => undefined); // surfaces as a closed connection
    socket.once("close", () => {
      if (this.socket !== socket) return;
      this.isClosed = true;
      for (const waiter of this.waiters.splice(0)) waiter.reject(this.closedError());
      this.markClosed();
    });
  }

  private receive(chunk: Buffer): void {
    this.buffer += chunk.toString("latin1");
    for (let end = this.buffer.indexOf("\n"); end >= 0; end = this.buffer.indexOf("\n")) {
      const line = this.buffer.slice(0, end).replace(/\r$/, "");
      this.buffer = this.buffer.slice(end + 1);
      this.pendingLines.push(line);
      const match = REPLY_LINE.exec(line);
      if (match && match[2] === "-") continue;
      const lines = this.pendingLines.map((text) => REPLY_LINE.exec(text)?.[3] ?? text);
      this.pendingLines = [];
      this.deliver({ code: match ? Number(match[1]) : 0, lines, text: lines.join("\n") });
    }
  }

  private deliver(reply: SmtpReply): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve(reply);
    else this.replies.push(reply);
  }

  private closedError(): Error {
    return new Error(
      `raw SMTP: connection closed by the server${this.buffer ? `; partial: ${this.buffer}` : ""}`,
    );
  }
}
