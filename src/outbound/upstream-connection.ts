import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { createSecureContext, rootCertificates } from "node:tls";
import SMTPConnection from "nodemailer/lib/smtp-connection";
import XOAuth2 from "nodemailer/lib/xoauth2";
import type { UpstreamCredentials, UpstreamLogin } from "../auth/upstream-credentials.js";
import type { UpstreamConfig } from "../config/schema.js";
import { enhancedCodeOf } from "./classify-reply.js";

export type { UpstreamConfig };

export interface SendResult {
  accepted: string[];
  /** Recipients refused at RCPT, with the reply the upstream gave each. */
  rejected: { recipient: string; responseCode?: number; response: string }[];
  response: string;
}

/** nodemailer's SMTP error shape: classify on these fields, never on message text. */
export interface UpstreamError extends Error {
  /** nodemailer's: ECONNECTION, ETIMEDOUT, EENVELOPE, ...; EWITHDRAWN: SendHooks.mayWrite said no. */
  code?: string;
  responseCode?: number;
  response?: string;
  command?: string;
  /**
   * The session ended while this message, not yet written, waited behind an earlier one for its turn: it was
   * never sent, and the failure was the earlier message's.
   */
  behindAnother?: boolean;
}

/**
 * Sending the next message before this one's reply (PIPELINING, RFC 2920 3.1): once `onWritten` is called, the
 * connection may take the next message, whose envelope then goes out at once and is answered right after this
 * message's reply.
 */
export interface SendHooks {
  /**
   * The message, its end of data included, has been written, and the upstream announced PIPELINING (without
   * it, a client must wait for each reply: not called; nor with `upstream.pipelining: false`).
   */
  onWritten?: () => void;
  /**
   * Asked when the upstream has accepted the envelope, before a byte of the message is written (for a
   * pipelined message, that can be the earlier message's reply time later). false withdraws it: the session is
   * dropped (the only way to end DATA without delivering) and send() fails with code EWITHDRAWN.
   */
  mayWrite?: () => boolean;
  /**
   * The message failed (a reply, or the session's end), called at once, before send() rejects: a message sent
   * behind this one has its 354 handled in the same turn of the event loop, and its mayWrite must already know
   * what this reply means (a mailbox whose quota is spent, a connection over the limit).
   */
  onFailed?: (err: UpstreamError) => void;
}

export type UpstreamTlsOptions = ReturnType<typeof upstreamTlsOptions>;

/**
 * TLS settings for upstream: system CAs plus `upstream.ca`, TLS 1.2 or newer, host name verified. Build them once
 * per upstream and share them between its connections: the secure context parses the whole CA list
 * (milliseconds of CPU), which per connection was most of what 500 mailboxes cost.
 */
export function upstreamTlsOptions(upstream: UpstreamConfig) {
  const ca = upstream.ca ? [...rootCertificates, readFileSync(upstream.ca, "utf8")] : undefined;
  const secureContext = createSecureContext({ minVersion: "TLSv1.2", ...(ca ? { ca } : {}) });
  // SNI carries host names only; an IP address is checked against the certificate's IP SANs
  const servername = isIP(upstream.host) ? {} : { servername: upstream.host };
  return { minVersion: "TLSv1.2" as const, rejectUnauthorized: true, secureContext, ...servername };
}

/** A connection error as nodemailer reports one (code ECONNECTION), for sends it no longer answers. */
const connectionLost = (message: string): UpstreamError =>
  Object.assign(new Error(message), { code: "ECONNECTION", command: "CONN" });

/**
 * One authenticated upstream SMTP session, reusable for many messages (RSET after a failed one). With PIPELINING,
 * a message's envelope may go out as soon as the message before it has been written, behind its end of data
 * (RFC 2920 3.1): the two are in flight at once, and a reply answers the oldest.
 */
export class UpstreamConnection {
  private readonly connection: SMTPConnection;
  /** No new message may start: closed, closing, or the server ended the session. */
  private closed = false;
  /** A MAIL FROM was sent and the transaction did not reach its end of data: RSET before the next one. */
  private transactionOpen = false;
  /** Sends waiting for a reply, each with how to fail it should the session end first. */
  private readonly inFlight = new Set<(err: UpstreamError) => void>();
  /** QUIT: asked for by close(), sent once the messages in flight have their replies. */
  private quit: "none" | "asked" | "sent" = "none";
  /** The server or the network ended the session. */
  private sessionEnded = false;
  /** Resolves once the session has ended (the socket is gone). */
  readonly ended: Promise<void>;
  messagesSent = 0;
  readonly openedAt = Date.now();
  private lastReplyAt = this.openedAt;

  /** upstream.pipelining: the next message may go out behind this one's end of data. */
  private readonly pipelining: boolean;

  constructor(
    upstream: UpstreamConfig,
    tls: UpstreamTlsOptions,
    private readonly credentials: UpstreamLogin,
    clientName: string,
  ) {
    this.pipelining = upstream.pipelining;
    this.connection = new SMTPConnection({
      host: upstream.host,
      port: upstream.port,
      secure: upstream.tls === "implicit",
      requireTLS: upstream.tls === "starttls",
      ignoreTLS: upstream.tls === "none",
      name: clientName,
      tls,
      connectionTimeout: upstream.connectionTimeout,
      greetingTimeout: upstream.connectionTimeout,
      socketTimeout: upstream.socketTimeout,
    });
    // nodemailer fails only the newest send when the session breaks: the one before it, written and waiting for
    // its reply, is failed here with the same error
    this.connection.on("error", (err: UpstreamError) => this.failInFlight(err));
    this.ended = new Promise((resolve) => {
      this.connection.once("end", () => {
        this.closed = true;
        this.sessionEnded = true;
        this.failInFlight(connectionLost("Connection closed before the reply"));
        resolve();
      });
    });
  }

  get usable(): boolean {
    return !this.closed;
  }

  /** A message written on it waits for its reply. */
  get awaitingReply(): boolean {
    return this.inFlight.size > 0;
  }

  /** Called whenever a message's reply (or failure) leaves no message in flight. */
  onIdle?: () => void;

  /**
   * Since when the connection has had nothing to do (ms, the local clock): its last reply, or Infinity while a
   * message written on it still waits for its reply.
   */
  get idleSince(): number {
    return this.awaitingReply ? Number.POSITIVE_INFINITY : this.lastReplyAt;
  }

  private failInFlight(err: UpstreamError): void {
    for (const fail of [...this.inFlight]) fail(err);
  }

  /** Connects, upgrades to TLS as configured, and authenticates. */
  async open(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.connection.once("error", reject);
      this.connection.connect(() => {
        this.connection.off("error", reject);
        resolve();
      });
    });
    const login = this.credentials;
    const auth =
      "accessToken" in login
        ? {
            user: login.user,
            method: "XOAUTH2",
            // a fixed token: nodemailer must not try to renew it itself (openUpstream refetches once)
            oauth2: new XOAuth2({ user: login.user, accessToken: login.accessToken }),
          }
        : { user: login.user, pass: login.pass };
    await new Promise<void>((resolve, reject) => {
      this.connection.login(auth, (err) => (err ? reject(err) : resolve()));
    });
  }

  /**
   * Sends one message; recipients refused at RCPT are reported, not thrown (unless all are refused). See
   * SendHooks for sending the next message on the connection before this one's reply.
   */
  async send(from: string, recipients: string[], body: Buffer, hooks: SendHooks = {}): Promise<SendResult> {
    // a transaction that reached its end of data ends with the reply to it, whatever it is (RFC 5321 4.1.1.4):
    // RSET only after one that failed part-way (as nodemailer's own pool does)
    if (this.transactionOpen) {
      await new Promise<void>((resolve, reject) =>
        this.connection.reset((err) => (err ? reject(err) : resolve())),
      );
    }
    if (this.closed) throw connectionLost("Connection closed before the message was sent");
    // pipelined behind a message still waiting for its reply: should the session end before this one is
    // written, that is the earlier message's doing
    const behindAnother = this.inFlight.size > 0;
    let written = false;
    this.messagesSent++;
    this.transactionOpen = true;
    return new Promise<SendResult>((resolve, reject) => {
      const fail = (err: UpstreamError) => {
        this.settled(fail);
        hooks.onFailed?.(err);
        reject(
          behindAnother && !written && err.code === "ECONNECTION"
            ? Object.assign(connectionLost(`not sent: ${err.message}`), {
                response: err.response,
                behindAnother: true,
              })
            : err,
        );
      };
      this.inFlight.add(fail);
      const envelope = {
        from,
        to: recipients,
        size: body.length,
        // a connection closed meanwhile (condemned by the reply to the message before) takes no more messages
        mayWrite: () => !this.closed && (hooks.mayWrite?.() ?? true),
        // only a server that announced PIPELINING takes the next envelope before this message's reply
        onWritten: (announced: boolean) => {
          written = true;
          this.transactionOpen = false;
          if (announced && this.pipelining) hooks.onWritten?.();
        },
      };
      this.connection.send(envelope, body, (err, info) => {
        if (!this.inFlight.has(fail)) return;
        if (err) return fail(err);
        this.settled(fail);
        const rejectedErrors = (info.rejectedErrors ?? []) as UpstreamError[];
        resolve({
          accepted: info.accepted.map(String),
          rejected: info.rejected.map((recipient, i) => {
            const error =
              rejectedErrors.find((e) => (e as { recipient?: string }).recipient === recipient) ??
              rejectedErrors[i];
            return {
              recipient: String(recipient),
              responseCode: error?.responseCode,
              response: error?.response ?? "",
            };
          }),
          response: info.response,
        });
      });
    });
  }

  /** A send has its reply (or its failure): with none left in flight, tells onIdle and sends a QUIT asked for. */
  private settled(send: (err: UpstreamError) => void): void {
    this.inFlight.delete(send);
    this.lastReplyAt = Date.now();
    if (this.inFlight.size > 0) return;
    this.onIdle?.();
    this.quitIfAsked();
  }

  private quitIfAsked(): void {
    if (this.quit !== "asked" || this.inFlight.size > 0) return;
    this.quit = "sent";
    try {
      this.connection.quit();
    } catch {
      this.connection.close();
    }
    setTimeout(() => this.connection.close(), 1_000).unref();
  }

  /**
   * QUIT and close, once the messages in flight have their replies (cutting one off would leave it unknown
   * whether it was delivered); never throws. `ended` resolves when the session is gone.
   */
  close(): void {
    this.closed = true;
    if (this.sessionEnded || this.quit !== "none") return;
    this.quit = "asked";
    this.quitIfAsked();
  }
}

/**
 * Opens an authenticated connection for a mailbox. When the upstream refuses the login with 535 (not
 * 5.7.139, SMTP AUTH disabled) and the credentials have a replacement (a fresh OAuth2 token), tries once more
 * on a new connection; the second refusal is the caller's to classify.
 */
export async function openUpstream(
  upstream: UpstreamConfig,
  tls: UpstreamTlsOptions,
  credentials: UpstreamCredentials,
  clientName: string,
): Promise<UpstreamConnection> {
  const attempt = async (login: UpstreamLogin) => {
    const connection = new UpstreamConnection(upstream, tls, login, clientName);
    try {
      await connection.open();
      return connection;
    } catch (err) {
      connection.close();
      throw err;
    }
  };
  const first = await credentials.login();
  try {
    return await attempt(first);
  } catch (err) {
    const error = err as UpstreamError;
    if (error.responseCode !== 535 || enhancedCodeOf(error.response) === "5.7.139") throw err;
    const second = await credentials.afterRefusal(first);
    if (!second) throw err;
    return attempt(second);
  }
}
