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
  code?: string;
  responseCode?: number;
  response?: string;
  command?: string;
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

/** One authenticated upstream SMTP session, reusable for many messages (RSET after a failed one). */
export class UpstreamConnection {
  private readonly connection: SMTPConnection;
  private closed = false;
  /** A MAIL FROM was sent and the transaction did not end in 250: RSET before the next one. */
  private transactionOpen = false;
  messagesSent = 0;
  readonly openedAt = Date.now();

  constructor(
    upstream: UpstreamConfig,
    tls: UpstreamTlsOptions,
    private readonly credentials: UpstreamLogin,
    clientName: string,
  ) {
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
    this.connection.on("error", () => {});
    this.connection.once("end", () => {
      this.closed = true;
    });
  }

  get usable(): boolean {
    return !this.closed;
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

  /** Sends one message; recipients refused at RCPT are reported, not thrown (unless all are refused). */
  async send(from: string, recipients: string[], body: Buffer): Promise<SendResult> {
    // a transaction that ended in 250 leaves the session ready for the next MAIL FROM (RFC 5321 4.1.1.4):
    // RSET only after one that failed part-way (as nodemailer's own pool does)
    if (this.transactionOpen) {
      await new Promise<void>((resolve, reject) =>
        this.connection.reset((err) => (err ? reject(err) : resolve())),
      );
    }
    this.messagesSent++;
    this.transactionOpen = true;
    return new Promise<SendResult>((resolve, reject) => {
      this.connection.send({ from, to: recipients, size: body.length }, body, (err, info) => {
        if (err) return reject(err);
        this.transactionOpen = false;
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

  /** QUIT and close; never throws. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.connection.quit();
    } catch {
      this.connection.close();
    }
    setTimeout(() => this.connection.close(), 1_000).unref();
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
