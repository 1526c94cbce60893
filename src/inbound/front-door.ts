import { readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import {
  SMTPServer,
  type SMTPServerAddress,
  type SMTPServerAuthentication,
  type SMTPServerDataStream,
  type SMTPServerSession,
} from "smtp-server";
import type { Config, ListenerConfig } from "../config/schema.js";
import type { Logger } from "../logger.js";
import type { RelayEvents } from "../relay-events.js";
import type { MessageJob } from "../spool/message-job.js";
import { newQueueId, type Spool } from "../spool/spool.js";
import { isForwardableAddress } from "./addresses.js";
import type { ClientPolicy } from "./client-policy.js";
import { findMessageId, receivedHeader } from "./received-header.js";
import { SessionGuard } from "./session-guard.js";
import { preferOwnEnhancedStatusCodes, SmtpReply } from "./smtp-reply.js";

export interface FrontDoorOptions {
  config: Readonly<Config>;
  hostname: string;
  policy: ClientPolicy;
  spool: Spool;
  logger: Logger;
  /** Where sessions, accepted and refused messages are announced (metrics). */
  events?: RelayEvents;
}

interface Listener {
  config: ListenerConfig;
  server: SMTPServer;
}

const HEAD_BYTES = 64 * 1024;

/** The SMTP front door: one smtp-server per `listen` entry, accepting mail into the spool. */
export class FrontDoor {
  private readonly listeners: Listener[] = [];
  private closing = false;
  private inData = 0;
  private readonly guard: SessionGuard;
  /** Sessions admitted by the guard, with their start time. */
  private readonly sessionStarts = new Map<string, { address: string; at: number }>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(private readonly options: FrontDoorOptions) {
    preferOwnEnhancedStatusCodes();
    this.guard = new SessionGuard({ authThrottle: options.config.authThrottle });
  }

  async start(): Promise<void> {
    const { config } = this.options;
    const tls = config.tls
      ? { key: readFileSync(config.tls.key), cert: readFileSync(config.tls.cert) }
      : undefined;
    for (const listener of config.listen) {
      if (listener.tls === "implicit" && !tls) {
        throw new Error(`listen ${listener.host}:${listener.port}: tls: implicit needs tls.cert and tls.key`);
      }
      const offerStartTls = listener.tls === "starttls" && tls !== undefined;
      const { events } = this.options;
      // the bound address, known once listening (port 0 in the config means any free port)
      let label = `${listener.host}:${listener.port}`;
      const counted = <A extends unknown[]>(callback: (err?: Error | null, ...rest: A) => void) =>
        ((err?: Error | null, ...rest: A) => {
          const code = (err as { responseCode?: number } | null | undefined)?.responseCode;
          if (code && code >= 400) events?.emit("refused", { listener: label, code });
          callback(err, ...rest);
        }) as typeof callback;
      const server = new SMTPServer({
        name: this.options.hostname,
        banner: "sluice ready",
        secure: listener.tls === "implicit",
        ...(tls ?? {}),
        size: config.maxMessageSize,
        authMethods: ["PLAIN", "LOGIN"],
        authOptional: true,
        allowInsecureAuth: listener.allowInsecureAuth,
        disabledCommands: offerStartTls || listener.tls === "implicit" ? [] : ["STARTTLS"],
        hideENHANCEDSTATUSCODES: false,
        disableReverseLookup: true,
        closeTimeout: Math.min(config.shutdownTimeout, 5_000),
        logger: false,
        maxClients: listener.maxClients,
        socketTimeout: listener.socketTimeout,
        onConnect: (session, callback) => {
          events?.emit("connection", { listener: label });
          this.onConnect(listener, session, counted(callback));
        },
        onClose: (session) => this.onClose(session),
        onAuth: (auth, session, callback) => this.onAuth(listener, auth, session, counted(callback)),
        onMailFrom: (address, session, callback) => this.onMailFrom(address, session, counted(callback)),
        onRcptTo: (address, _session, callback) => this.onRcptTo(address, counted(callback)),
        onData: (stream, session, callback) => {
          this.onData(stream, session).then(
            (reply) => {
              const client = this.clientOf(session);
              events?.emit("accepted", {
                listener: label,
                client: client?.name ?? "",
                mailbox: client ? this.options.policy.mailboxFor(client) : null,
              });
              callback(null, reply);
            },
            (err: Error) => counted(callback)(err),
          );
        },
      });
      server.on("error", (err) => this.options.logger.warn({ err: err.message }, "smtp listener error"));
      await new Promise<void>((resolve, reject) => {
        server.server.once("error", reject);
        server.listen(listener.port, listener.host, () => {
          server.server.off("error", reject);
          resolve();
        });
      });
      this.listeners.push({ config: listener, server });
      this.sweeper ??= setInterval(() => this.closeOverlongSessions(), 1_000).unref();
      label = `${listener.host}:${(server.server.address() as AddressInfo).port}`;
      this.options.logger.info(
        {
          host: listener.host,
          port: (server.server.address() as AddressInfo).port,
          tls: listener.tls,
          startTls: offerStartTls,
        },
        "smtp listener ready",
      );
    }
  }

  /** Bound addresses, in `listen` order (port 0 in the config becomes the real port). */
  addresses(): { host: string; port: number }[] {
    return this.listeners.map((l) => {
      const address = l.server.server.address() as AddressInfo;
      return { host: address.address, port: address.port };
    });
  }

  /** New sessions get 421 at once; messages in DATA finish (until the deadline); then the listeners close. */
  async stop(deadlineMs: number): Promise<void> {
    this.closing = true;
    clearInterval(this.sweeper);
    const until = Date.now() + deadlineMs;
    while (this.inData > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 25));
    await Promise.all(
      this.listeners.map((l) => new Promise<void>((resolve) => l.server.close(() => resolve()))),
    );
    this.listeners.length = 0;
  }

  private onConnect(
    listener: ListenerConfig,
    session: SMTPServerSession,
    callback: (err?: Error | null) => void,
  ) {
    if (this.closing) return callback(new SmtpReply(421, "4.3.2", "Service shutting down, try again later"));
    const refusal = this.guard.admit(session.remoteAddress, listener.maxClientsPerAddress);
    if (refusal) {
      this.options.logger.warn(
        { remote: session.remoteAddress },
        "refused: too many sessions from one address",
      );
      return callback(refusal);
    }
    this.sessionStarts.set(session.id, { address: session.remoteAddress, at: Date.now() });
    callback();
  }

  private onClose(session: SMTPServerSession) {
    const started = this.sessionStarts.get(session.id);
    if (!started) return;
    this.sessionStarts.delete(session.id);
    this.guard.leave(started.address);
  }

  /** Idle sessions time out in smtp-server; this also ends sessions that trickle data to stay alive. */
  private closeOverlongSessions() {
    const now = Date.now();
    for (const { config, server } of this.listeners) {
      for (const connection of server.connections) {
        const started = this.sessionStarts.get(connection.id);
        if (started && now - started.at > config.maxSessionTime) {
          this.options.logger.info(
            { remote: started.address },
            "closing a session open longer than maxSessionTime",
          );
          connection.send(421, "4.4.2 Session too long, closing connection");
          connection.close();
        }
      }
    }
  }

  private onAuth(
    listener: ListenerConfig,
    auth: SMTPServerAuthentication,
    session: SMTPServerSession,
    callback: (err: Error | null | undefined, response?: { user: string }) => void,
  ) {
    if (!session.secure && !listener.allowInsecureAuth) {
      return callback(
        new SmtpReply(
          538,
          "5.7.11",
          "Encryption required: use STARTTLS, or allowInsecureAuth on this listener",
        ),
      );
    }
    const blocked = this.guard.authBlocked(session.remoteAddress);
    if (blocked) return callback(blocked);
    const client = this.options.policy.authenticate(auth.username ?? "", auth.password ?? "");
    if (!client) {
      const delay = this.guard.authFailed(session.remoteAddress);
      this.options.logger.warn(
        { remote: session.remoteAddress, username: auth.username, delayMs: delay },
        "authentication failed",
      );
      setTimeout(() => callback(new SmtpReply(535, "5.7.8", "Authentication credentials invalid")), delay);
      return;
    }
    this.guard.authSucceeded(session.remoteAddress);
    callback(null, { user: client.name });
  }

  private clientOf(session: SMTPServerSession) {
    const { policy } = this.options;
    return typeof session.user === "string"
      ? policy.byName(session.user)
      : policy.byAddress(session.remoteAddress);
  }

  private onMailFrom(
    address: SMTPServerAddress,
    session: SMTPServerSession,
    callback: (err?: Error | null) => void,
  ) {
    if (this.closing) return callback(new SmtpReply(421, "4.3.2", "Service shutting down, try again later"));
    const client = this.clientOf(session);
    if (!client) {
      this.options.logger.info(
        { remote: session.remoteAddress },
        "refused: address not in any client network and no AUTH",
      );
      return callback(new SmtpReply(530, "5.7.0", "Authentication required"));
    }
    if (address.address !== "" && !isForwardableAddress(address.address)) {
      return callback(new SmtpReply(553, "5.1.7", `Bad sender address syntax: ${address.address}`));
    }
    callback();
  }

  private onRcptTo(address: SMTPServerAddress, callback: (err?: Error | null) => void) {
    if (!isForwardableAddress(address.address)) {
      return callback(new SmtpReply(553, "5.1.3", `Bad recipient address syntax: ${address.address}`));
    }
    callback();
  }

  private async onData(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    this.inData++;
    try {
      return await this.receive(stream, session);
    } finally {
      this.inData--;
    }
  }

  private async receive(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    const { spool, logger, policy, config } = this.options;
    const client = this.clientOf(session);
    const id = newQueueId();
    const envelope = session.envelope;
    const recipients = envelope.rcptTo.map((r) => r.address);
    const writer = spool.openBody(id);
    let failure: Error | undefined;
    const write = async (chunk: Buffer) => {
      if (failure) return;
      try {
        await writer.write(chunk);
      } catch (err) {
        failure = err as Error;
      }
    };
    await write(
      receivedHeader({
        id,
        hostname: this.options.hostname,
        helo: session.hostNameAppearsAs,
        clientHostname: session.clientHostname,
        remoteAddress: session.remoteAddress,
        tls: session.secure,
        authenticated: typeof session.user === "string",
        recipients,
        date: new Date(),
      }),
    );
    let head = Buffer.alloc(0);
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      if (head.length < HEAD_BYTES) head = Buffer.concat([head, chunk.subarray(0, HEAD_BYTES - head.length)]);
      if (!stream.sizeExceeded) await write(chunk);
    }
    if (stream.sizeExceeded) {
      await writer.abort();
      logger.info({ id, remote: session.remoteAddress }, "refused: message larger than maxMessageSize");
      throw new SmtpReply(552, "5.3.4", `Message too big: the limit is ${config.maxMessageSize} bytes`);
    }
    if (!client) throw new SmtpReply(530, "5.7.0", "Authentication required");
    const mailbox = policy.mailboxFor(client);
    logger.info(
      {
        event: "received",
        id,
        messageId: findMessageId(head),
        client: client.name,
        mailbox,
        remote: session.remoteAddress,
        size: writer.size,
        recipients: recipients.length,
      },
      "message received",
    );
    const job: MessageJob = {
      id,
      client: client.name,
      mailbox,
      mailFrom: envelope.mailFrom ? envelope.mailFrom.address : "",
      recipients,
      delivered: [],
      refused: [],
      size: writer.size,
      messageId: findMessageId(head),
      remoteAddress: session.remoteAddress,
      receivedAt: Date.now(),
    };
    if (!failure) {
      try {
        await writer.flush();
        await spool.commit(job);
      } catch (err) {
        failure = err as Error;
      }
    }
    if (failure) {
      await writer.abort();
      logger.error(
        { id, err: failure.message, client: client.name },
        "could not queue message: redis write failed",
      );
      throw new SmtpReply(451, "4.3.0", "Queue temporarily unavailable, try again later");
    }
    logger.info(
      {
        event: "queued",
        id,
        messageId: job.messageId,
        client: job.client,
        mailbox,
        size: job.size,
        recipients: recipients.length,
      },
      mailbox ? "message queued" : "message held: no mailbox is configured yet",
    );
    return `2.0.0 Ok: queued as ${id}`;
  }
}
