import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import net from "node:net";
import type {
  SMTPServerAddress,
  SMTPServerAuthentication,
  SMTPServerAuthenticationResponse,
  SMTPServerDataStream,
  SMTPServerOptions,
  SMTPServerSession,
} from "smtp-server";
import { withoutUndefined } from "./defaults.js";
import { type ExchangeLikeConnection, ExchangeLikeServer } from "./exchange-like-server.js";
import { EXCHANGE_REPLIES, replyError } from "./exchange-replies.js";
import { type Fault, FaultScript, type FaultStage, type TransactionInfo } from "./fault-script.js";

export type { Fault, FaultStage, TransactionInfo } from "./fault-script.js";

export interface FakeUpstreamOptions {
  /** Key and certificate (PEM). When given, STARTTLS is offered (see offerStartTls). Default: no TLS at all. */
  tls?: { key: string; cert: string };
  /** Offer STARTTLS. Default true when `tls` is given; with false the STARTTLS command is unknown. */
  offerStartTls?: boolean;
  /** TLS from the first byte (like port 465; Exchange Online has no such port). Needs `tls`. Default false. */
  implicitTls?: boolean;
  /**
   * Accept AUTH on a connection without TLS. Default: true when `tls` is not given (a fake without
   * certificates could never authenticate otherwise), false when it is (Exchange: `538 5.7.11`).
   */
  allowInsecureAuth?: boolean;
  /** Mailbox address -> password for AUTH PLAIN / LOGIN. Addresses compare case-insensitively. */
  users: Record<string, string>;
  /** Authenticated connections a mailbox may have open before new ones get 432 4.3.2. Default 3. */
  maxConnectionsPerUser?: number;
  /** Delay before answering end-of-DATA, in ms. Default 0 (benchmarks use 50). */
  replyDelayMs?: number;
  /** Idle time after which the server says 421 and closes, in ms. Default 60 000 (smtp-server's). */
  socketTimeoutMs?: number;
  /** When given, AUTH XOAUTH2 is offered; a token is accepted when validateToken returns true. */
  oauth2?: { validateToken(user: string, token: string): boolean };
  /** Mailboxes with SMTP AUTH disabled: any AUTH as them gets `535 5.7.139`. Default none. */
  smtpAuthDisabled?: string[];
  /** SIZE limit; larger messages get `552 5.3.4`. Default 35 MiB (Exchange Online's default). */
  maxMessageBytes?: number;
  /** TCP port to listen on. Default: a free one (0). Give a stopped fake's port to replace it. */
  port?: number;
  /** Recipients per message; more get `452 4.5.3 Too many recipients`. Default 500 (Exchange's default). */
  maxRecipients?: number;
  /** Announce PIPELINING in the EHLO reply, as Exchange Online does. Default true. */
  pipelining?: boolean;
  /** Host name in the greeting and EHLO reply. Default "fake-upstream.outlook.test". */
  name?: string;
  /**
   * Bytes of each accepted message kept in `raw`, from its start. Default: all. The benchmark keeps the head
   * (it reads the Received header): the whole of every message (600 MB at 50 mailboxes) kept this process's
   * garbage collector busy, and its pauses held up every connection, whoever the client.
   */
  keepBytes?: number;
}

/** A message the fake accepted (250 after DATA). */
export interface ReceivedMessage {
  /** The authenticated mailbox, spelled as in `options.users` (or as sent, for XOAUTH2-only users). */
  user: string;
  mailFrom: string;
  rcptTo: string[];
  raw: Buffer;
  connectionId: string;
  tls: boolean;
  /** When the client finished sending the message (before replyDelayMs). */
  dataEndedAt: number;
  /** When the fake answered 250. */
  receivedAt: number;
  /**
   * The same transaction in performance.now() milliseconds (sub-millisecond, the bench's clock): MAIL FROM
   * read, 354 sent (DATA started), end of DATA read, 250 sent.
   */
  timing: { mailFrom: number; dataStart: number; dataEnd: number; replied: number };
}

/** How refuseConnections() turns new connections away. */
export type RefuseMode = "refuse" | "reset";

export interface FakeUpstream {
  readonly host: "127.0.0.1";
  readonly port: number;
  /** Every accepted message, oldest first. */
  readonly messages: ReceivedMessage[];
  /**
   * Emits "message" (ReceivedMessage), "auth" ({ user, connectionId, overLimit }), "reject"
   * ({ user, connectionId, code, message }) for every 4xx/5xx the fake itself decided at MAIL/RCPT/DATA,
   * and "close" (connectionId).
   */
  readonly events: EventEmitter;
  /** Failed AUTH attempts (all users). */
  readonly authFailures: number;
  /** Scripted faults not yet fired. */
  readonly faultsLeft: number;
  /** Errors smtp-server reported (socket errors, failed TLS handshakes), for diagnosis. */
  readonly serverErrors: Error[];
  /** Queue faults; each fires once, on the next transaction that reaches its stage and matches. */
  script(...faults: Fault[]): void;
  /**
   * on=true: new TCP connections are turned away, open ones keep working. Mode "refuse" (default) stops
   * listening, so clients get ECONNREFUSED; mode "reset" accepts and immediately resets (ECONNRESET).
   * on=false listens again on the same port. Await it before connecting.
   */
  refuseConnections(on: boolean, mode?: RefuseMode): Promise<void>;
  /**
   * Turns SMTP AUTH off or on for `user`, as an Exchange admin does (`Set-CASMailbox
   * -SmtpClientAuthenticationDisabled`): while off, every AUTH as `user` gets `535 5.7.139`.
   */
  smtpAuth(user: string, enabled: boolean): void;
  /** Authenticated connections of `user` open right now. */
  openConnections(user: string): number;
  /** Most authenticated connections of `user` open at the same time since start/reset(). */
  maxConcurrent(user: string): number;
  /** `432 4.3.2` replies sent to `user`'s connections. */
  count432(user: string): number;
  /** Successful authentications of `user` (= authenticated connections, one AUTH per connection). */
  authCount(user: string): number;
  /** TCP connections that reached the SMTP greeting stage, all users and unauthenticated ones. */
  connectionCount(): number;
  /** Resolves with `messages` once at least n are recorded; rejects after timeoutMs (default 30 000). */
  waitForMessages(n: number, timeoutMs?: number): Promise<ReceivedMessage[]>;
  /** Forgets messages, counters (max concurrent restarts from what is open now) and the fault script. */
  reset(): void;
  /** Stops listening, destroys every connection, resolves once all sockets are closed. Idempotent. */
  stop(): Promise<void>;
}

interface ConnectionState {
  connection: ExchangeLikeConnection;
  user?: string;
  /** Authenticated while the mailbox was at its limit: every message gets 432. */
  overLimit: boolean;
  /** Counted in the mailbox's open connections. */
  counted: boolean;
  /** performance.now() when the current transaction's MAIL FROM was read. */
  mailFromAt?: number;
}

interface UserStats {
  open: number;
  max: number;
  auths: number;
  count432: number;
}

const DEFAULT_MAX_MESSAGE_BYTES = 35 * 1024 * 1024;
/** How long stop() waits for connections to close after destroying them, before destroying raw sockets. */
const STOP_GRACE_MS = 1000;

/**
 * Starts a fake Exchange Online client-submission server on 127.0.0.1 and a free port: AUTH only with
 * TLS, MAIL FROM must be the authenticated mailbox, at most `maxConnectionsPerUser` authenticated
 * connections per mailbox (more get 432 4.3.2 at end of DATA), and scripted faults. Always stop() it.
 */
export async function startFakeUpstream(options: FakeUpstreamOptions): Promise<FakeUpstream> {
  const upstream = new FakeExchange(options);
  await upstream.listen(options.port ?? 0);
  return upstream;
}

class FakeExchange implements FakeUpstream {
  readonly host = "127.0.0.1" as const;
  readonly messages: ReceivedMessage[] = [];
  readonly events = new EventEmitter();
  readonly serverErrors: Error[] = [];
  authFailures = 0;
  private listenPort = 0;
  private listener: net.Server | undefined;
  private refuseMode: RefuseMode | undefined;
  private stopped: Promise<void> | undefined;
  private totalConnections = 0;
  private readonly settings: Required<Omit<FakeUpstreamOptions, "tls" | "oauth2">> &
    Pick<FakeUpstreamOptions, "tls" | "oauth2">;
  private readonly mailboxes = new Map<string, { name: string; password: string }>();
  private readonly connections = new Map<string, ConnectionState>();
  private readonly stats = new Map<string, UserStats>();
  private readonly rawSockets = new Set<net.Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly faults = new FaultScript();
  private readonly smtp: ExchangeLikeServer;

  constructor(options: FakeUpstreamOptions) {
    this.settings = {
      offerStartTls: options.tls !== undefined,
      implicitTls: false,
      allowInsecureAuth: options.tls === undefined,
      maxConnectionsPerUser: 3,
      replyDelayMs: 0,
      socketTimeoutMs: 60_000,
      maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
      maxRecipients: 500,
      smtpAuthDisabled: [],
      name: "fake-upstream.outlook.test",
      pipelining: true,
      port: 0,
      keepBytes: Number.POSITIVE_INFINITY,
      ...withoutUndefined(options),
    };
    const { tls, offerStartTls, implicitTls } = this.settings;
    if ((offerStartTls || implicitTls) && tls === undefined) {
      throw new Error("startFakeUpstream: offerStartTls / implicitTls need options.tls ({ key, cert })");
    }
    for (const [address, password] of Object.entries(options.users)) {
      this.mailboxes.set(address.toLowerCase(), { name: address, password });
    }
    this.smtp = new ExchangeLikeServer(this.serverOptions(), {
      allowInsecureAuth: this.settings.allowInsecureAuth,
      onConnection: (connection) => this.onConnection(connection),
      onQuit: (connection) => this.release(connection.id),
    });
    this.smtp.on("error", (error: Error) => this.serverErrors.push(error));
  }

  get port(): number {
    return this.listenPort;
  }

  get faultsLeft(): number {
    return this.faults.size;
  }

  async listen(port = this.listenPort): Promise<void> {
    this.listenPort = port;
    const listener = net.createServer((socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      listener.once("error", reject);
      listener.listen({ port: this.listenPort, host: this.host }, () => {
        listener.removeListener("error", reject);
        resolve();
      });
    });
    const address = listener.address();
    if (address === null || typeof address === "string") throw new Error("fake upstream: no TCP address");
    this.listenPort = address.port;
    this.listener = listener;
  }

  script(...faults: Fault[]): void {
    this.faults.add(...faults);
  }

  async refuseConnections(on: boolean, mode: RefuseMode = "refuse"): Promise<void> {
    if (this.stopped) throw new Error("fake upstream: refuseConnections() after stop()");
    this.refuseMode = on ? mode : undefined;
    if (on && mode === "refuse") {
      await this.closeListener();
    } else if (!this.listener) {
      await this.listen();
    }
  }

  openConnections(user: string): number {
    return this.statsOf(user).open;
  }

  maxConcurrent(user: string): number {
    return this.statsOf(user).max;
  }

  count432(user: string): number {
    return this.statsOf(user).count432;
  }

  smtpAuth(user: string, enabled: boolean): void {
    const others = this.settings.smtpAuthDisabled.filter((u) => u.toLowerCase() !== user.toLowerCase());
    this.settings.smtpAuthDisabled = enabled ? others : [...others, user];
  }

  authCount(user: string): number {
    return this.statsOf(user).auths;
  }

  connectionCount(): number {
    return this.totalConnections;
  }

  waitForMessages(n: number, timeoutMs = 30_000): Promise<ReceivedMessage[]> {
    if (this.messages.length >= n) return Promise.resolve(this.messages);
    return new Promise((resolve, reject) => {
      const onMessage = () => {
        if (this.messages.length < n) return;
        cleanup();
        resolve(this.messages);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`fake upstream: ${this.messages.length} of ${n} messages after ${timeoutMs} ms`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.events.removeListener("message", onMessage);
      };
      this.events.on("message", onMessage);
    });
  }

  reset(): void {
    this.messages.length = 0;
    this.faults.clear();
    this.authFailures = 0;
    this.totalConnections = 0;
    for (const stats of this.stats.values()) {
      stats.max = stats.open;
      stats.auths = 0;
      stats.count432 = 0;
    }
  }

  stop(): Promise<void> {
    this.stopped ??= this.shutdown();
    return this.stopped;
  }

  private async shutdown(): Promise<void> {
    this.refuseMode = "refuse";
    await this.closeListener();
    await new Promise<void>((resolve) => this.smtp.close(() => resolve()));
    for (const state of this.connections.values()) state.connection.drop();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    // A raw socket under a destroyed TLS socket is destroyed without always emitting "close": poll.
    const deadline = Date.now() + STOP_GRACE_MS;
    while (Date.now() < deadline && (this.connections.size > 0 || this.openRawSockets() > 0)) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    for (const socket of this.rawSockets) socket.destroy();
    this.rawSockets.clear();
  }

  private openRawSockets(): number {
    for (const socket of this.rawSockets) if (socket.destroyed) this.rawSockets.delete(socket);
    return this.rawSockets.size;
  }

  private serverOptions(): SMTPServerOptions {
    const { tls, offerStartTls, implicitTls, oauth2 } = this.settings;
    return {
      name: this.settings.name,
      banner: "Microsoft ESMTP MAIL Service ready (sluice fake upstream)",
      heloResponse: "%s Hello %s",
      logger: false,
      disableReverseLookup: true,
      secure: implicitTls,
      ...(tls ? { key: tls.key, cert: tls.cert } : {}),
      disabledCommands: offerStartTls && !implicitTls ? [] : ["STARTTLS"],
      // Advertised, but the codes themselves are written by ExchangeLikeConnection / the fake.
      hideENHANCEDSTATUSCODES: false,
      hidePIPELINING: !this.settings.pipelining,
      authMethods: ["PLAIN", "LOGIN", ...(oauth2 ? ["XOAUTH2"] : [])],
      allowInsecureAuth: this.settings.allowInsecureAuth,
      authRequiredMessage: EXCHANGE_REPLIES.authRequired.message,
      size: this.settings.maxMessageBytes,
      maxRecipients: this.settings.maxRecipients,
      socketTimeout: this.settings.socketTimeoutMs,
      closeTimeout: STOP_GRACE_MS,
      onAuth: (auth, session, callback) => this.onAuth(auth, session, callback),
      onMailFrom: (address, session, callback) => this.onMailFrom(address, session, callback),
      onRcptTo: (address, session, callback) => this.onRcptTo(address, session, callback),
      onData: (stream, session, callback) => this.onData(stream, session, callback),
      onClose: (session) => this.onClose(session),
    };
  }

  private accept(socket: net.Socket): void {
    socket.on("error", () => undefined); // smtp-server reports errors of sockets it owns
    if (this.refuseMode !== undefined) {
      socket.resetAndDestroy();
      return;
    }
    this.openRawSockets(); // forget the closed ones
    this.rawSockets.add(socket);
    socket.once("close", () => this.rawSockets.delete(socket));
    // Hand the socket to smtp-server exactly as its own listener would.
    this.smtp.server.emit("connection", socket);
  }

  private async closeListener(): Promise<void> {
    const listener = this.listener;
    if (!listener) return;
    this.listener = undefined;
    // close() stops accepting at once; its callback would wait for every open connection, so not awaited.
    listener.close();
    await new Promise((resolve) => setImmediate(resolve));
  }

  private onConnection(connection: ExchangeLikeConnection): void {
    this.totalConnections++;
    this.connections.set(connection.id, { connection, overLimit: false, counted: false });
  }

  private onAuth(
    auth: SMTPServerAuthentication,
    session: SMTPServerSession,
    callback: (err: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void,
  ): void {
    const login = (auth.username ?? "").toLowerCase();
    if (this.settings.smtpAuthDisabled.some((address) => address.toLowerCase() === login)) {
      this.authFailures++;
      callback(replyError(EXCHANGE_REPLIES.smtpAuthDisabled));
      return;
    }
    const mailbox = this.mailboxes.get(login);
    const accepted =
      auth.method === "XOAUTH2"
        ? this.settings.oauth2?.validateToken(auth.username ?? "", auth.accessToken ?? "") === true
        : mailbox !== undefined && mailbox.password === auth.password;
    const state = this.connections.get(session.id);
    if (!accepted || !state) {
      this.authFailures++;
      callback(replyError(EXCHANGE_REPLIES.authFailed));
      return;
    }
    const user = mailbox?.name ?? auth.username ?? login;
    const stats = this.statsOf(user);
    state.user = user;
    state.overLimit = stats.open >= this.settings.maxConnectionsPerUser;
    state.counted = true;
    stats.open++;
    stats.max = Math.max(stats.max, stats.open);
    stats.auths++;
    this.events.emit("auth", { user, connectionId: session.id, overLimit: state.overLimit });
    callback(null, { user });
  }

  private onMailFrom(
    address: SMTPServerAddress,
    session: SMTPServerSession,
    callback: (err?: Error | null) => void,
  ): void {
    const state = this.connections.get(session.id);
    if (state) state.mailFromAt = performance.now();
    const tx = { mailFrom: address.address, rcptTo: [], user: String(session.user) };
    this.runStage("mail", tx, session, callback);
  }

  private onRcptTo(
    address: SMTPServerAddress,
    session: SMTPServerSession,
    callback: (err?: Error | null) => void,
  ): void {
    const tx = {
      ...this.transaction(session),
      rcptTo: [...session.envelope.rcptTo.map((rcpt) => rcpt.address), address.address],
    };
    this.runStage("rcpt", tx, session, callback, address.address);
  }

  private onData(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    callback: (err?: Error | null, message?: string) => void,
  ): void {
    const dataStart = performance.now();
    const mailFrom = this.connections.get(session.id)?.mailFromAt ?? dataStart;
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on("data", (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
    });
    stream.on("error", () => undefined); // the client went away mid-message: nothing to answer
    stream.on("end", () => {
      const dataEndedAt = Date.now();
      const dataEnd = performance.now();
      const tx = this.transaction(session);
      if (stream.sizeExceeded) {
        this.reject(tx, session, EXCHANGE_REPLIES.messageTooBig, callback);
        return;
      }
      this.delay(this.settings.replyDelayMs, () => {
        const state = this.connections.get(session.id);
        if (state?.overLimit) {
          this.statsOf(tx.user).count432++;
          this.reject(tx, session, EXCHANGE_REPLIES.concurrentConnections, callback);
          return;
        }
        this.runStage("data", tx, session, (error) => {
          if (error) {
            callback(error);
            return;
          }
          if (tx.mailFrom.toLowerCase() !== tx.user.toLowerCase()) {
            this.reject(tx, session, EXCHANGE_REPLIES.sendAsDenied, callback);
            return;
          }
          const message: ReceivedMessage = {
            ...tx,
            raw: Buffer.concat(chunks, Math.min(size, this.settings.keepBytes)),
            connectionId: session.id,
            tls: session.secure,
            dataEndedAt,
            receivedAt: Date.now(),
            timing: { mailFrom, dataStart, dataEnd, replied: performance.now() },
          };
          this.messages.push(message);
          this.events.emit("message", message);
          callback(null, `2.0.0 OK <${randomUUID()}@${this.settings.name}> [Hostname=${this.settings.name}]`);
        });
      });
    });
  }

  private onClose(session: SMTPServerSession): void {
    this.release(session.id);
    this.connections.delete(session.id);
    this.events.emit("close", session.id);
  }

  /** Stops counting a connection against its mailbox (on QUIT or close, whichever comes first). */
  private release(connectionId: string): void {
    const state = this.connections.get(connectionId);
    if (!state?.counted || state.user === undefined) return;
    state.counted = false;
    this.statsOf(state.user).open--;
  }

  /** Applies the first matching scripted fault of `stage` (delay, then drop or reply), else accepts. */
  private runStage(
    stage: FaultStage,
    tx: TransactionInfo,
    session: SMTPServerSession,
    callback: (err?: Error | null) => void,
    rcpt?: string,
  ): void {
    const fault = this.faults.take(stage, tx, rcpt);
    if (!fault) {
      callback();
      return;
    }
    this.delay(fault.delayMs ?? 0, () => {
      const state = this.connections.get(session.id);
      if (fault.drop) {
        state?.connection.drop();
        return;
      }
      if (!fault.reply) {
        callback();
        return;
      }
      const reply = fault.reply;
      this.events.emit("reject", { user: tx.user, connectionId: session.id, ...reply });
      // Scripted text goes out exactly as written, with or without an enhanced status code.
      if (state) state.connection.verbatim = true;
      try {
        callback(replyError(reply));
      } finally {
        if (state) state.connection.verbatim = false;
      }
    });
  }

  private reject(
    tx: TransactionInfo,
    session: SMTPServerSession,
    reply: { code: number; message: string },
    callback: (err?: Error | null) => void,
  ): void {
    this.events.emit("reject", { user: tx.user, connectionId: session.id, ...reply });
    callback(replyError(reply));
  }

  private transaction(session: SMTPServerSession): TransactionInfo {
    const mailFrom = session.envelope.mailFrom;
    return {
      mailFrom: mailFrom ? mailFrom.address : "",
      rcptTo: session.envelope.rcptTo.map((rcpt) => rcpt.address),
      user: String(session.user),
    };
  }

  private delay(ms: number, then: () => void): void {
    if (ms <= 0) {
      then();
      return;
    }
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      then();
    }, ms);
    this.timers.add(timer);
  }

  private statsOf(user: string): UserStats {
    const key = user.toLowerCase();
    let stats = this.stats.get(key);
    if (!stats) {
      stats = { open: 0, max: 0, auths: 0, count432: 0 };
      this.stats.set(key, stats);
    }
    return stats;
  }
}
