import { randomUUID } from "node:crypto";
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import type { TLSSocket } from "node:tls";
import SMTPConnection from "nodemailer/lib/smtp-connection";
import XOAuth2 from "nodemailer/lib/xoauth2";
import { TokenRefused } from "../auth/token-errors.js";
import type { UpstreamCredentials, UpstreamLogin } from "../auth/upstream-credentials.js";
import { AUTH_HINT_BASE, classifyReply, replyError } from "../outbound/classify-reply.js";
import {
  type UpstreamConfig,
  type UpstreamError,
  upstreamTlsOptions,
} from "../outbound/upstream-connection.js";

export type StepName =
  | "resolve"
  | "connect"
  | "starttls"
  | "token"
  | "auth"
  | "mail-from"
  | "rset"
  | "send-test"
  | "quit";

export interface DoctorStep {
  step: StepName;
  ok: boolean;
  /** What happened: the reply, the TLS version and certificate, the addresses. Never a secret. */
  detail: string;
  /** For a failure: what to do about it. */
  hint?: string;
}

export interface ProbeOptions {
  mailbox: string;
  upstream: UpstreamConfig;
  credentials: UpstreamCredentials;
  /** EHLO name. */
  clientName: string;
  /** Send one short test message to this address after the checks. Default: send nothing. */
  sendTest?: string;
}

const CONNECTION_CODES = new Set([
  "ECONNECTION",
  "ETIMEDOUT",
  "ESOCKET",
  "ECONNREFUSED",
  "ECONNRESET",
  "EDNS",
]);

/** nodemailer's private command channel: the only way to send MAIL FROM without a message (no public API). */
interface CommandChannel {
  _sendCommand(command: string): void;
  _responseActions: ((reply: string) => void)[];
  _socket?: TLSSocket;
}

function command(connection: SMTPConnection, line: string): Promise<string> {
  const channel = connection as unknown as CommandChannel;
  return new Promise((resolve) => {
    channel._responseActions.push(resolve);
    channel._sendCommand(line);
  });
}

function describeCertificate(socket: TLSSocket | undefined): string {
  if (!socket || typeof socket.getPeerCertificate !== "function") return "no TLS socket";
  const cert = socket.getPeerCertificate();
  const subject = cert?.subject?.CN ?? "?";
  const issuer = cert?.issuer?.CN ?? cert?.issuer?.O ?? "?";
  const expires = cert?.valid_to ? new Date(cert.valid_to) : undefined;
  const days = expires ? Math.floor((expires.getTime() - Date.now()) / 86_400_000) : undefined;
  return `${socket.getProtocol() ?? "TLS"}, certificate CN=${subject} issued by ${issuer}${
    expires ? `, expires ${expires.toISOString().slice(0, 10)} (${days} days)` : ""
  }`;
}

function hintFor(err: UpstreamError, credentials: UpstreamCredentials): string | undefined {
  // the table's hints speak of queued mail; here only the fix matters
  return credentials
    .explain(classifyReply(err))
    .hint?.replace(`${AUTH_HINT_BASE}. `, "")
    .replaceAll("<mailbox>", credentials.user);
}

function authOf(login: UpstreamLogin) {
  return "accessToken" in login
    ? {
        user: login.user,
        method: "XOAUTH2",
        oauth2: new XOAuth2({ user: login.user, accessToken: login.accessToken }),
      }
    : { user: login.user, pass: login.pass };
}

/**
 * Walks one mailbox through what a delivery does, one step at a time, and stops at the first failure:
 * resolve, connect, STARTTLS, token (OAuth2), AUTH, MAIL FROM, RSET, (a test message when asked), QUIT.
 * Sends no mail unless `sendTest` is given.
 */
export async function probeMailbox(options: ProbeOptions): Promise<DoctorStep[]> {
  const { upstream, credentials, mailbox } = options;
  const steps: DoctorStep[] = [];
  const pass = (step: StepName, detail: string) => steps.push({ step, ok: true, detail });
  const fail = (step: StepName, detail: string, hint?: string) => {
    steps.push({ step, ok: false, detail, ...(hint ? { hint } : {}) });
    return steps;
  };

  // resolve
  if (isIP(upstream.host)) pass("resolve", `${upstream.host} is an address`);
  else {
    try {
      const addresses = await lookup(upstream.host, { all: true });
      pass("resolve", `${upstream.host} -> ${addresses.map((a) => a.address).join(", ")}`);
    } catch (err) {
      return fail(
        "resolve",
        `${upstream.host}: ${(err as Error).message}`,
        "the name does not resolve: check upstream.host and this machine's DNS",
      );
    }
  }

  // connect (+ STARTTLS, which nodemailer does as part of connecting)
  const serverLines: string[] = [];
  const transcript = {
    debug: (entry: { tnx?: string }, message: string) => {
      if (entry?.tnx === "server") serverLines.push(String(message));
    },
    info: () => {},
  };
  const connection = new SMTPConnection({
    host: upstream.host,
    port: upstream.port,
    secure: upstream.tls === "implicit",
    requireTLS: upstream.tls === "starttls",
    ignoreTLS: upstream.tls === "none",
    name: options.clientName,
    tls: upstreamTlsOptions(upstream),
    connectionTimeout: upstream.connectionTimeout,
    greetingTimeout: upstream.connectionTimeout,
    socketTimeout: upstream.socketTimeout,
    logger: transcript as unknown as SMTPConnection.Options["logger"],
    debug: true,
  });
  connection.on("error", () => {});
  const closed = new Promise<void>((resolve) => connection.once("end", () => resolve()));
  try {
    const connectError = await new Promise<UpstreamError | undefined>((resolve) => {
      connection.once("error", (err) => resolve(err as UpstreamError));
      connection.connect(() => resolve(undefined));
    });
    const target = `${upstream.host}:${upstream.port}`;
    if (connectError && serverLines.length === 0) {
      const network = CONNECTION_CODES.has(connectError.code ?? "")
        ? ""
        : ` (${connectError.code ?? "error"})`;
      return fail(
        "connect",
        `${target}: ${connectError.message}${network}`,
        `no SMTP greeting from ${target}: check upstream.host and upstream.port (Exchange Online: smtp.office365.com:587) and that this machine may open TCP ${upstream.port} outbound`,
      );
    }
    pass("connect", `${target}: ${serverLines[0] ?? "connected"}`);
    if (connectError) {
      const reply = connectError.response ?? "";
      const certificate = /certificate|self.signed|altnames|unable to verify/i.test(connectError.message);
      return fail(
        "starttls",
        reply || connectError.message,
        /^421[ -]4\.7\.66/.test(reply)
          ? hintFor(connectError, credentials)
          : certificate
            ? `the upstream's certificate is not trusted for ${upstream.host}: check upstream.host (it must be the name on the certificate), or add the issuing CA with upstream.ca`
            : `the upstream did not upgrade to TLS (STARTTLS not offered or refused): sluice never sends credentials in clear text; check upstream.host and upstream.port (Exchange Online: smtp.office365.com:587)`,
      );
    }
    const socket = (connection as unknown as CommandChannel)._socket;
    if (upstream.tls === "none")
      pass("starttls", "not used (upstream.tls: none): credentials travel in clear text");
    else pass("starttls", describeCertificate(socket));

    // token
    let login: UpstreamLogin;
    try {
      login = await credentials.login();
      if (credentials.method === "oauth2") pass("token", "access token obtained from the identity platform");
    } catch (err) {
      return fail(
        "token",
        (err as Error).message,
        err instanceof TokenRefused
          ? err.hint
          : "the token endpoint did not answer: check that this machine reaches the authority over HTTPS (proxy, firewall), or oauth2.authority / oauth2.ca",
      );
    }

    // auth
    const authError = await new Promise<UpstreamError | undefined>((resolve) => {
      connection.login(authOf(login), (err) => resolve(err ? (err as UpstreamError) : undefined));
    });
    if (authError)
      return fail("auth", authError.response ?? authError.message, hintFor(authError, credentials));
    pass("auth", `${serverLines.at(-1) ?? "authenticated"} (${credentials.method})`);

    // mail-from
    const mailReply = await command(connection, `MAIL FROM:<${mailbox}>`);
    if (!mailReply.startsWith("2")) {
      return fail("mail-from", mailReply, hintFor(replyError(mailReply), credentials));
    }
    pass("mail-from", mailReply);

    // rset
    const rsetError = await new Promise<UpstreamError | undefined>((resolve) => {
      connection.reset((err) => resolve(err ? (err as UpstreamError) : undefined));
    });
    if (rsetError) return fail("rset", rsetError.response ?? rsetError.message);
    pass("rset", serverLines.at(-1) ?? "250");

    // send-test
    if (options.sendTest) {
      const message = [
        `From: <${mailbox}>`,
        `To: <${options.sendTest}>`,
        `Subject: sluice doctor test from ${mailbox}`,
        `Date: ${new Date().toUTCString()}`,
        `Message-ID: <${randomUUID()}@${options.clientName}>`,
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        `This message was sent by \`sluice doctor --send-test\` to check that ${mailbox} can send through ${upstream.host}.`,
        "",
      ].join("\r\n");
      const sent = await new Promise<{ err?: UpstreamError; response?: string }>((resolve) => {
        connection.send({ from: mailbox, to: [options.sendTest as string] }, message, (err, info) =>
          resolve(err ? { err: err as UpstreamError } : { response: info.response }),
        );
      });
      if (sent.err)
        return fail("send-test", sent.err.response ?? sent.err.message, hintFor(sent.err, credentials));
      pass("send-test", `${options.sendTest}: ${sent.response}`);
    }

    // quit
    connection.quit();
    const quitTimer = new Promise<"timeout">((resolve) =>
      setTimeout(() => resolve("timeout"), 5_000).unref(),
    );
    const quit = await Promise.race([closed.then(() => "closed" as const), quitTimer]);
    pass(
      "quit",
      quit === "closed" ? (serverLines.at(-1) ?? "closed") : "no answer to QUIT; connection closed",
    );
    return steps;
  } finally {
    connection.close();
  }
}
