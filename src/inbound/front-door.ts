import type { AddressInfo } from "node:net";
import tls from "node:tls";
import {
  SMTPServer,
  type SMTPServerAddress,
  type SMTPServerAuthentication,
  type SMTPServerDataStream,
  type SMTPServerSession,
} from "smtp-server";
import type { ClientConfig, Config, ListenerConfig } from "../config/schema.js";
import { type ClientQuotas, quotaText } from "../limits/client-quotas.js";
import { estimateDrainMs } from "../limits/drain-estimate.js";
import type { Logger } from "../logger.js";
import type { RelayEvents } from "../relay-events.js";
import type { MessageJob } from "../spool/message-job.js";
import { newQueueId, type Spool } from "../spool/spool.js";
import { isForwardableAddress } from "./addresses.js";
import type { ClientPolicy, SessionIdentity } from "./client-policy.js";
import { fromIsAllowed, fromRefusal, readFrom, rewriteFrom } from "./from-policy.js";
import { headerBlockEnd } from "./header-block.js";
import { type InboundCertificate, listenerTlsOptions, loadInboundCertificate } from "./inbound-tls.js";
import type { MailboxChooser, MailboxLoad } from "./mailbox-chooser.js";
import { findMessageId, receivedHeader } from "./received-header.js";
import { SessionGuard } from "./session-guard.js";
import { preferOwnEnhancedStatusCodes, SmtpReply } from "./smtp-reply.js";

export interface FrontDoorOptions {
  config: Readonly<Config>;
  hostname: string;
  policy: ClientPolicy;
  /** Picks the member of a mailbox pool; also reports the queue for the drain estimate. */
  chooser: MailboxChooser;
  quotas: ClientQuotas;
  spool: Spool;
  logger: Logger;
  /** Where sessions, accepted and refused messages are announced (metrics). */
  events?: RelayEvents;
}

/** Where an accepted message goes, with its (possibly rewritten) header block. */
interface Route {
  mailbox: string | null;
  block: Buffer;
  load?: MailboxLoad;
  fromRewritten: boolean;
}

interface Listener {
  config: ListenerConfig;
  server: SMTPServer;
}

/** The header block is buffered up to this size to apply the From policy; the rest streams through. */
const HEADER_LIMIT = 256 * 1024;

const shuttingDown = () => new SmtpReply(421, "4.3.2", "Service shutting down, try again later");
const queueUnavailable = () => new SmtpReply(451, "4.3.0", "Queue temporarily unavailable, try again later");

function identityOf(session: SMTPServerSession): SessionIdentity {
  return {
    username: typeof session.user === "string" ? session.user : undefined,
    remoteAddress: session.remoteAddress,
  };
}

/** Runs an async handler and hands its outcome to smtp-server's callback. */
function settle(work: Promise<void>, callback: (err?: Error | null) => void) {
  work.then(
    () => callback(),
    (err: Error) => callback(err),
  );
}

/** The SMTP front door: one smtp-server per `listen` entry, accepting mail into the spool. */
export class FrontDoor {
  private readonly listeners: Listener[] = [];
  private closing = false;
  private inData = 0;
  private certificate: InboundCertificate | undefined;
  private readonly guard: SessionGuard;
  /** Sessions admitted by the guard, with their start time. */
  private readonly sessionStarts = new Map<string, { address: string; at: number }>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(private readonly options: FrontDoorOptions) {
    preferOwnEnhancedStatusCodes();
    this.guard = new SessionGuard({ authThrottle: options.config.authThrottle });
  }

  async start(): Promise<void> {
    const { config, logger } = this.options;
    if (config.listen.some((listener) => listener.tls !== "none")) {
      this.certificate = await loadInboundCertificate(config, this.options.hostname, logger);
    }
    for (const listener of config.listen) {
      const certificate = listener.tls === "none" ? undefined : this.certificate;
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
        ...(certificate ? listenerTlsOptions(listener, certificate) : {}),
        size: config.maxMessageSize,
        authMethods: ["PLAIN", "LOGIN"],
        authOptional: true,
        allowInsecureAuth: listener.allowInsecureAuth,
        disabledCommands: listener.tls === "starttls" ? [] : ["STARTTLS"],
        hideENHANCEDSTATUSCODES: false,
        disableReverseLookup: true,
        useProxy: listener.proxyProtocol ?? false,
        useXClient: listener.xclient ?? false,
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
        onMailFrom: (address, session, callback) =>
          settle(this.onMailFrom(address, session), counted(callback)),
        onRcptTo: (address, session, callback) => settle(this.onRcptTo(address, session), counted(callback)),
        onData: (stream, session, callback) => {
          this.onData(stream, session).then(
            ({ reply, client, mailbox }) => {
              events?.emit("accepted", { listener: label, client, mailbox });
              callback(null, reply);
            },
            (err: Error) => counted(callback)(err),
          );
        },
      });
      server.on("error", (err) => logger.warn({ err: err.message }, "smtp listener error"));
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
      logger.info(
        {
          host: listener.host,
          port: (server.server.address() as AddressInfo).port,
          tls: listener.tls,
          startTls: listener.tls === "starttls",
          ...(certificate ? { minVersion: listener.minVersion, certificate: certificate.source } : {}),
          ...(listener.proxyProtocol ? { proxyProtocol: listener.proxyProtocol } : {}),
          ...(listener.xclient ? { xclient: listener.xclient } : {}),
        },
        "smtp listener ready",
      );
    }
  }

  /**
   * Reads the certificate again (after it was renewed) and uses it for new TLS sessions; sessions already
   * open keep theirs. When the new files cannot be used the old certificate stays and this throws.
   */
  async reloadTls(): Promise<void> {
    if (!this.certificate) return;
    const { config, hostname, logger } = this.options;
    const next = await loadInboundCertificate(config, hostname, logger);
    const secured = this.listeners.filter((l) => l.config.tls !== "none");
    // check every context first, so a bad key leaves every listener on the old certificate
    for (const l of secured) tls.createSecureContext(listenerTlsOptions(l.config, next));
    for (const l of secured) l.server.updateSecureContext(listenerTlsOptions(l.config, next));
    this.certificate = next;
    logger.info({ cert: next.certFile, source: next.source }, "inbound TLS certificate reloaded");
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
    if (this.closing) return callback(shuttingDown());
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
    const username = auth.username ?? "";
    if (!this.options.policy.authenticate(username, auth.password ?? "")) {
      const delay = this.guard.authFailed(session.remoteAddress);
      this.options.logger.warn(
        { remote: session.remoteAddress, username: auth.username, delayMs: delay },
        "authentication failed",
      );
      setTimeout(() => callback(new SmtpReply(535, "5.7.8", "Authentication credentials invalid")), delay);
      return;
    }
    this.guard.authSucceeded(session.remoteAddress);
    callback(null, { user: username });
  }

  /** The client entry of a session and envelope sender; throws the reply when there is none. */
  private clientOf(session: SMTPServerSession, sender: string): ClientConfig {
    const match = this.options.policy.match(identityOf(session), sender);
    if (match.client) return match.client;
    this.options.logger.info(
      {
        remote: session.remoteAddress,
        username: identityOf(session).username,
        sender,
        reply: match.refusal.message,
      },
      "refused: no client entry matches",
    );
    throw match.refusal;
  }

  private async onMailFrom(address: SMTPServerAddress, session: SMTPServerSession): Promise<void> {
    if (this.closing) throw shuttingDown();
    const client = this.clientOf(session, address.address);
    if (address.address !== "" && !isForwardableAddress(address.address)) {
      throw new SmtpReply(553, "5.1.7", `Bad sender address syntax: ${address.address}`);
    }
    const unknown = this.options.policy.unknownMailbox(client);
    if (unknown) {
      throw new SmtpReply(
        550,
        "5.7.1",
        `Client ${client.name} sends as mailbox ${unknown}, which is not configured: add it under mailboxes`,
      );
    }
    await this.checkQuota(client, 0);
  }

  private async onRcptTo(address: SMTPServerAddress, session: SMTPServerSession): Promise<void> {
    if (!isForwardableAddress(address.address)) {
      throw new SmtpReply(553, "5.1.3", `Bad recipient address syntax: ${address.address}`);
    }
    const client = this.clientOf(session, session.envelope.mailFrom ? session.envelope.mailFrom.address : "");
    const count = session.envelope.rcptTo.length + 1;
    const perMessage = client.maxRecipientsPerMessage;
    if (perMessage !== undefined && count > perMessage) {
      throw new SmtpReply(
        452,
        "4.5.3",
        `Too many recipients: client ${client.name} may send to ${perMessage} recipients per message (maxRecipientsPerMessage); send the rest in another message`,
      );
    }
    await this.checkQuota(client, count);
  }

  /** Refuses early (452 4.7.1) when the client's hourly or daily quota would be exceeded. */
  private async checkQuota(client: ClientConfig, recipients: number): Promise<void> {
    let exceeded: Awaited<ReturnType<ClientQuotas["check"]>>;
    try {
      exceeded = await this.options.quotas.check(client, recipients);
    } catch {
      throw queueUnavailable();
    }
    if (exceeded) {
      this.options.logger.info({ client: client.name, ...exceeded }, "refused: client quota exceeded");
      throw new SmtpReply(452, "4.7.1", quotaText(client.name, exceeded));
    }
  }

  private async onData(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
  ): Promise<{ reply: string; client: string; mailbox: string | null }> {
    this.inData++;
    try {
      return await this.receive(stream, session);
    } finally {
      this.inData--;
    }
  }

  private async receive(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
  ): Promise<{ reply: string; client: string; mailbox: string | null }> {
    const { spool, logger, config, quotas } = this.options;
    const id = newQueueId();
    const envelope = session.envelope;
    const recipients = envelope.rcptTo.map((r) => r.address);
    const sender = envelope.mailFrom ? envelope.mailFrom.address : "";
    const client = this.options.policy.match(identityOf(session), sender).client;
    const writer = spool.openBody(id);
    let failure: Error | undefined;
    let refusal: SmtpReply | undefined;
    let route: Route | undefined;
    const write = async (chunk: Buffer) => {
      if (failure || refusal) return;
      try {
        await writer.write(chunk);
      } catch (err) {
        failure = err as Error;
      }
    };
    // The header block is held back until it is complete, so the From policy can look at (and rewrite) it.
    let head: Buffer = Buffer.alloc(0);
    let headDone = false;
    const finishHead = async (complete: boolean) => {
      headDone = true;
      let end = headerBlockEnd(head);
      if (end < 0 && complete) end = head.length; // headers only, no body
      if (!client) return;
      try {
        const decided = await this.route(client, head, end, recipients.length);
        if (decided instanceof SmtpReply) refusal = decided;
        else route = decided;
      } catch (err) {
        failure = err as Error;
      }
      if (!route) return;
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
      await write(route.block);
      if (end >= 0) await write(head.subarray(end));
    };
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      if (!headDone) {
        const searchFrom = Math.max(0, head.length - 3);
        head = head.length ? Buffer.concat([head, chunk]) : chunk;
        if (headerBlockEnd(head, searchFrom) >= 0 || head.length >= HEADER_LIMIT) await finishHead(false);
        continue;
      }
      if (!stream.sizeExceeded) await write(chunk);
    }
    if (!headDone) await finishHead(true);
    if (stream.sizeExceeded) {
      await writer.abort();
      logger.info({ id, remote: session.remoteAddress }, "refused: message larger than maxMessageSize");
      throw new SmtpReply(552, "5.3.4", `Message too big: the limit is ${config.maxMessageSize} bytes`);
    }
    if (!client) {
      await writer.abort();
      const match = this.options.policy.match(identityOf(session), sender);
      throw match.client ? queueUnavailable() : match.refusal;
    }
    if (refusal) {
      await writer.abort();
      logger.info(
        { id, client: client.name, remote: session.remoteAddress, reply: refusal.message },
        "refused at end of DATA",
      );
      throw refusal;
    }
    const mailbox = route?.mailbox ?? null;
    logger.info(
      {
        event: "received",
        id,
        messageId: findMessageId(route?.block ?? head.subarray(0, HEADER_LIMIT)),
        client: client.name,
        mailbox,
        remote: session.remoteAddress,
        size: writer.size,
        recipients: recipients.length,
      },
      "message received",
    );
    let quotaTaken = false;
    if (!failure && route) {
      try {
        const exceeded = await quotas.take(client, id, Math.max(1, recipients.length));
        if (exceeded) {
          await writer.abort();
          logger.info({ id, client: client.name, ...exceeded }, "refused: client quota exceeded");
          throw new SmtpReply(452, "4.7.1", quotaText(client.name, exceeded));
        }
        quotaTaken = true;
      } catch (err) {
        if (err instanceof SmtpReply) throw err;
        failure = err as Error;
      }
    }
    const job: MessageJob = {
      id,
      client: client.name,
      mailbox,
      mailFrom: sender,
      recipients,
      delivered: [],
      refused: [],
      priority: client.priority,
      size: writer.size,
      messageId: findMessageId(route?.block ?? head.subarray(0, HEADER_LIMIT)),
      remoteAddress: session.remoteAddress,
      receivedAt: Date.now(),
    };
    if (!failure && !route) failure = new Error("no route decided");
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
      if (quotaTaken) await quotas.refund(client, id).catch(() => {});
      logger.error(
        { id, err: failure.message, client: client.name },
        "could not queue message: redis write failed",
      );
      throw queueUnavailable();
    }
    logger.info(
      {
        event: "queued",
        id,
        messageId: job.messageId,
        client: job.client,
        mailbox,
        priority: client.priority,
        size: job.size,
        recipients: recipients.length,
        ...(route?.fromRewritten ? { fromRewritten: true } : {}),
      },
      mailbox ? "message queued" : "message held: no mailbox is configured yet",
    );
    if (route?.load) this.logBacklog(route.load, id);
    return { reply: `2.0.0 Ok: queued as ${id}`, client: client.name, mailbox };
  }

  /**
   * Picks the mailbox (the pool member with the most free budget among those the From policy allows) and
   * applies the From policy to the header block `head[0, end)`; end -1: no complete header block.
   */
  private async route(
    client: ClientConfig,
    head: Buffer,
    end: number,
    recipients: number,
  ): Promise<Route | SmtpReply> {
    const { policy, chooser } = this.options;
    const pool = policy.mailboxesFor(client);
    const complete = end >= 0;
    const block = complete ? head.subarray(0, end) : Buffer.alloc(0);
    if (!pool.length) return { mailbox: null, block, fromRewritten: false };
    if (!complete && client.from !== "keep") {
      return new SmtpReply(
        552,
        "5.3.4",
        `Message header too big: the From policy reads at most ${HEADER_LIMIT / 1024} KB of headers`,
      );
    }
    let candidates = pool;
    const from = client.from === "keep" ? undefined : readFrom(block);
    if (client.from === "reject" && from) {
      candidates = pool.filter((mailbox) => fromIsAllowed(from, policy.fromAddressesOf(mailbox)));
      if (!candidates.length) return fromRefusal(from, pool, client.name);
    }
    const load = await chooser.choose(candidates, Math.max(1, recipients));
    if (client.from === "rewrite" && from && !fromIsAllowed(from, policy.fromAddressesOf(load.mailbox))) {
      return { mailbox: load.mailbox, block: rewriteFrom(block, load.mailbox), load, fromRewritten: true };
    }
    return { mailbox: load.mailbox, block, load, fromRewritten: false };
  }

  /** When a message waits behind others, says how long the mailbox's queue takes at its budget. */
  private logBacklog(load: MailboxLoad, id: string): void {
    const queuedMessages = load.queued + 1;
    const etaMs = estimateDrainMs({ queuedMessages, limits: load.limits, usage: load.usage });
    if (etaMs <= 0) return;
    this.options.logger.info(
      { event: "backlog", id, mailbox: load.mailbox, queued: queuedMessages, etaMs },
      "message queued behind a backlog",
    );
  }
}
