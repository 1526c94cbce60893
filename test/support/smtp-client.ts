import type { NodemailerError } from "nodemailer/lib/errors";
import SMTPConnection from "nodemailer/lib/smtp-connection";
import XOAuth2 from "nodemailer/lib/xoauth2";

export { type BuildMessageOptions, buildMessage } from "./build-message.js";
export { openRawSmtp, type RawSmtp, type RawSmtpOptions, type SmtpReply, smtpDialogue } from "./raw-smtp.js";

/** Where and how to connect and log in. */
export interface SubmissionOptions {
  port: number;
  /** Default "127.0.0.1". */
  host?: string;
  /** TLS from the first byte. Default false. */
  secure?: boolean;
  /** true: require STARTTLS (fail without it); false: never STARTTLS; default: STARTTLS when offered. */
  startTls?: boolean;
  /** CA (PEM) the server certificate must chain to. Default: the system CAs. */
  ca?: string;
  /** Check the server certificate. Default true. */
  rejectUnauthorized?: boolean;
  /** Name to check the certificate against (and SNI). Default: the host. */
  servername?: string;
  /** Default: no AUTH. method default: PLAIN (XOAUTH2 via `accessToken`). */
  auth?: { user: string; pass?: string; method?: "PLAIN" | "LOGIN" | "XOAUTH2"; accessToken?: string };
  localAddress?: string;
  /** Connection, greeting and idle timeout in ms. Default 30 000. */
  timeoutMs?: number;
}

export interface SubmitOptions extends SubmissionOptions {
  from: string;
  to: string[];
  raw: Buffer | string;
}

/** Outcome of an SMTP exchange; SMTP rejections and connection failures are results, not exceptions. */
export interface SubmitResult {
  ok: boolean;
  /** SMTP reply code (250 on success); undefined when there was no reply (e.g. connection refused). */
  code?: number;
  /** The server's reply line, or the error message when there was no reply. */
  response: string;
  /** Command that failed, e.g. "CONN", "AUTH PLAIN", "MAIL FROM", "RCPT TO", "DATA". */
  stage?: string;
  /** nodemailer's error code (ECONNECTION, EAUTH, EENVELOPE, EMESSAGE, ETLS, ESOCKET, ...). */
  errorCode?: string;
  /** Recipients the server accepted / rejected. */
  accepted?: string[];
  rejected?: string[];
}

/** A logged-in connection for several messages (connection reuse). */
export interface SubmissionSession {
  send(envelope: { from: string; to: string[] }, raw: Buffer | string): Promise<SubmitResult>;
  /** RSET. */
  reset(): Promise<SubmitResult>;
  /** QUIT and close; resolves once closed. */
  close(): Promise<void>;
}

/** Thrown by openSubmission when connecting or AUTH fails; `result` says how. */
export class SubmissionFailed extends Error {
  constructor(readonly result: SubmitResult) {
    super(`SMTP submission failed at ${result.stage ?? "?"}: ${result.response}`);
    this.name = "SubmissionFailed";
  }
}

/**
 * Sends one message over a fresh connection (nodemailer's SMTPConnection) and closes it. Never throws
 * for SMTP or network failures: the result carries the code, the reply and the failing command.
 */
export async function submit(options: SubmitOptions): Promise<SubmitResult> {
  let session: SubmissionSession;
  try {
    session = await openSubmission(options);
  } catch (error) {
    if (error instanceof SubmissionFailed) return error.result;
    throw error;
  }
  try {
    return await session.send({ from: options.from, to: options.to }, options.raw);
  } finally {
    await session.close();
  }
}

/** Connects (STARTTLS as asked) and logs in; throws SubmissionFailed when either fails. */
export async function openSubmission(options: SubmissionOptions): Promise<SubmissionSession> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const commands = new CommandTracker();
  const connection = new SMTPConnection({
    port: options.port,
    host: options.host ?? "127.0.0.1",
    secure: options.secure ?? false,
    requireTLS: options.startTls === true,
    ignoreTLS: options.startTls === false,
    tls: {
      ...(options.ca === undefined ? {} : { ca: options.ca }),
      ...(options.servername === undefined ? {} : { servername: options.servername }),
      rejectUnauthorized: options.rejectUnauthorized ?? true,
    },
    ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress }),
    name: "sluice-test-client",
    connectionTimeout: timeoutMs,
    greetingTimeout: timeoutMs,
    socketTimeout: timeoutMs,
    logger: commands.logger,
    transactionLog: true,
  });
  const step = <T>(run: (done: (error: NodemailerError | null, value?: T) => void) => void) =>
    runStep(connection, run);

  const connected = await step<void>((done) => connection.connect((error) => done(error ?? null)));
  if (!connected.ok) {
    connection.close();
    throw new SubmissionFailed(toResult(connected.error, "CONN"));
  }
  const { auth } = options;
  if (auth) {
    const method = auth.method ?? (auth.accessToken === undefined ? "PLAIN" : "XOAUTH2");
    const credentials =
      method === "XOAUTH2"
        ? {
            user: auth.user,
            method,
            oauth2: new XOAuth2({ user: auth.user, accessToken: auth.accessToken ?? "" }),
          }
        : { user: auth.user, pass: auth.pass ?? "", method };
    const loggedIn = await step<boolean>((done) => connection.login(credentials, (error) => done(error)));
    if (!loggedIn.ok) {
      connection.close();
      throw new SubmissionFailed(toResult(loggedIn.error, commands.last ?? `AUTH ${method}`));
    }
  }
  return {
    async send(envelope, raw) {
      const sent = await step<SMTPConnection.SentMessageInfo>((done) =>
        connection.send(envelope, raw, (error, info) => done(error, info)),
      );
      if (!sent.ok) return toResult(sent.error, commands.last ?? "DATA");
      const info = sent.value;
      return {
        ok: true,
        code: replyCode(info?.response),
        response: info?.response ?? "",
        stage: "DATA",
        accepted: info?.accepted ?? [],
        rejected: info?.rejected ?? [],
      };
    },
    async reset() {
      const reset = await step<boolean>((done) => connection.reset((error) => done(error)));
      if (!reset.ok) return toResult(reset.error, commands.last ?? "RSET");
      const response = typeof connection.lastServerResponse === "string" ? connection.lastServerResponse : "";
      return { ok: true, code: replyCode(response), response, stage: "RSET" };
    },
    async close() {
      if (connection.destroyed) return;
      const ended = new Promise<void>((resolve) => connection.once("end", () => resolve()));
      connection.quit();
      await ended;
    },
  };
}

type StepOutcome<T> = { ok: true; value: T | undefined } | { ok: false; error: NodemailerError };

/** Runs one callback-style step, settling on its callback or on a connection error / close, whichever first. */
function runStep<T>(
  connection: SMTPConnection,
  run: (done: (error: NodemailerError | null, value?: T) => void) => void,
): Promise<StepOutcome<T>> {
  return new Promise((resolve) => {
    let settled = false;
    const finish = (outcome: StepOutcome<T>) => {
      if (settled) return;
      settled = true;
      connection.removeListener("error", onError);
      connection.removeListener("end", onEnd);
      resolve(outcome);
    };
    const onError = (error: NodemailerError) => finish({ ok: false, error });
    const onEnd = () => {
      const error: NodemailerError = Object.assign(new Error("Connection closed by the server"), {
        code: "ECONNECTION",
      });
      // An error emitted just before "end" carries the reply: let it win.
      setImmediate(() => finish({ ok: false, error }));
    };
    connection.on("error", onError);
    connection.once("end", onEnd);
    run((error, value) => finish(error ? { ok: false, error } : { ok: true, value }));
  });
}

/**
 * `stage` is nodemailer's failing command, or, when nodemailer only says "CONN" (the connection broke),
 * `currentStage`: the last command sent, so a drop after MAIL FROM reads as stage "MAIL FROM".
 */
function toResult(error: NodemailerError, currentStage: string): SubmitResult {
  const command = error.command === undefined || error.command === "CONN" ? undefined : error.command;
  const result: SubmitResult = {
    ok: false,
    response: error.response ?? error.message,
    stage: command ?? currentStage,
  };
  const code = error.responseCode ?? replyCode(error.response);
  if (code !== undefined) result.code = code;
  if (error.code !== undefined) result.errorCode = error.code;
  if (error.rejected !== undefined) result.rejected = error.rejected;
  return result;
}

function replyCode(response: string | undefined): number | undefined {
  const match = /^(\d{3})/.exec(response ?? "");
  return match ? Number(match[1]) : undefined;
}

/**
 * Follows nodemailer's transaction log to know which command a broken connection interrupted: the oldest
 * command still waiting for its reply (PIPELINING sends MAIL, RCPT and DATA at once), else the last one.
 * Names match nodemailer's err.command ("MAIL FROM", "AUTH PLAIN", ...).
 */
class CommandTracker {
  private readonly unanswered: string[] = [];
  private lastSent: string | undefined;
  readonly logger = {
    debug: (entry: { tnx?: string } | undefined, line?: string) => {
      if (typeof line !== "string") return;
      if (entry?.tnx === "client") {
        // AUTH continuation lines (base64, "/* secured */") belong to the AUTH command before them.
        this.lastSent = commandName(line) ?? this.lastSent;
        if (this.lastSent !== undefined) this.unanswered.push(this.lastSent);
      } else if (entry?.tnx === "server") {
        this.unanswered.shift(); // the greeting and the reply after DATA's 354 find nothing to shift
      }
    },
    trace: () => undefined,
    info: () => undefined,
    warn: () => undefined,
    error: () => undefined,
    fatal: () => undefined,
  };

  get last(): string | undefined {
    return this.unanswered[0] ?? this.lastSent;
  }
}

const VERBS = new Set([
  "EHLO",
  "HELO",
  "LHLO",
  "STARTTLS",
  "AUTH",
  "MAIL",
  "RCPT",
  "DATA",
  "BDAT",
  "RSET",
  "QUIT",
  "NOOP",
]);

function commandName(line: string): string | undefined {
  const words = line.toUpperCase().split(/[\s:]+/);
  const [verb = "", second = ""] = words;
  if (!VERBS.has(verb)) return undefined;
  if (verb === "MAIL" || verb === "RCPT" || verb === "AUTH") return `${verb} ${second}`;
  return verb;
}
