import type net from "node:net";
import type tls from "node:tls";
import { SMTPServer, type SMTPServerOptions } from "smtp-server";
import { SMTPConnection, type SMTPConnectionOptions } from "smtp-server/lib/smtp-connection.js";
import { EXCHANGE_REPLIES, hasEnhancedCode } from "./exchange-replies.js";

/**
 * smtp-server, adjusted where its own replies differ from Exchange Online:
 * - AUTH on a connection without TLS gets `538 5.7.11 ...` (smtp-server: "538 Error: Must issue a STARTTLS
 *   command first", and nothing at all when STARTTLS is disabled), unless `allowInsecureAuth`;
 * - every single-line reply smtp-server writes itself carries an enhanced status code, as Exchange's do
 *   ("235 2.7.0 Authentication successful", "250 2.1.0 Sender OK", "421 4.4.2 Timeout ...");
 *   replies whose text already starts with one (all of the fake's own) are left as they are;
 * - QUIT is reported to `hooks.onQuit` before the 221, so a connection stops counting against the
 *   per-mailbox limit the moment the client says goodbye, not when the TCP close arrives later;
 * - the greeting goes out at once (smtp-server waits 100 ms for clients that talk too early).
 * Relies on smtp-server's SMTPConnection class (public in its type declarations): handler_AUTH,
 * handler_QUIT, send, init, _setListeners, connectionReady.
 */
export interface ExchangeLikeHooks {
  /** Accept AUTH without TLS. */
  allowInsecureAuth: boolean;
  onConnection(connection: ExchangeLikeConnection): void;
  onQuit(connection: ExchangeLikeConnection): void;
}

export class ExchangeLikeServer extends SMTPServer {
  constructor(
    options: SMTPServerOptions,
    private readonly hooks: ExchangeLikeHooks,
  ) {
    super(options);
  }

  /** Same as SMTPServer.connect, with ExchangeLikeConnection in place of SMTPConnection. */
  override connect(socket: net.Socket | tls.TLSSocket, socketOptions?: SMTPConnectionOptions | null): void {
    const connection = new ExchangeLikeConnection(this, socket, socketOptions, this.hooks);
    this.connections.add(connection);
    connection.on("error", (err: Error) => this._onError(err));
    connection.on("connect", (data) => this._onClientConnect(data));
    this.hooks.onConnection(connection);
    connection.init();
  }
}

/** Enhanced status codes for smtp-server's own replies, by the context smtp-server gives or by code. */
const CONTEXT_TEXT: Record<string, string> = {
  MAIL_FROM_OK: "2.1.0 Sender OK",
  RCPT_TO_OK: "2.1.5 Recipient OK",
  TOO_MANY_RECIPIENTS: EXCHANGE_REPLIES.tooManyRecipients.message,
  MESSAGE_TOO_BIG: EXCHANGE_REPLIES.messageTooBig.message,
};
const TEXT_BY_REPLY: Record<string, string> = {
  "220 Ready to start TLS": "2.0.0 SMTP server ready",
  "221 Bye": "2.0.0 Service closing transmission channel",
  "235 Authentication successful": "2.7.0 Authentication successful",
  "250 Flushed": "2.0.0 Resetting",
  "250 OK": "2.0.0 OK",
};
const ENHANCED_BY_CODE: Record<number, string> = {
  421: "4.4.2",
  451: "4.3.0",
  452: "4.5.3",
  454: "4.7.0",
  500: "5.5.2",
  501: "5.5.4",
  502: "5.5.1",
  503: "5.5.1",
  504: "5.5.4",
  530: "5.7.0",
  535: "5.7.3",
  538: "5.7.11",
  550: "5.0.0",
  552: "5.3.4",
  554: "5.6.0",
};

export class ExchangeLikeConnection extends SMTPConnection {
  /** While true, send() writes the text exactly as given (used for scripted replies). */
  verbatim = false;

  constructor(
    server: ExchangeLikeServer,
    socket: net.Socket | tls.TLSSocket,
    options: SMTPConnectionOptions | null | undefined,
    private readonly hooks: ExchangeLikeHooks,
  ) {
    super(server, socket, options);
  }

  /**
   * Greets at once: smtp-server holds every greeting 100 ms to catch clients that talk before it, which Exchange
   * Online is not known to do (and checks its maxClients, which the fake does not set).
   */
  override init(): void {
    this._setListeners(() => this.connectionReady());
  }

  /** Destroys the socket on top (the TLS socket after STARTTLS), like a server that drops the line. */
  drop(): void {
    this._socket.destroy();
  }

  override handler_AUTH(command: Buffer, callback: () => void): void {
    if (!this.secure && !this.hooks.allowInsecureAuth) {
      const reply = EXCHANGE_REPLIES.encryptionRequired;
      this.send(reply.code, reply.message);
      callback();
      return;
    }
    super.handler_AUTH(command, callback);
  }

  override handler_QUIT(command: Buffer, callback: () => void): void {
    this.hooks.onQuit(this);
    super.handler_QUIT(command, callback);
  }

  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    if (this.verbatim || typeof data !== "string" || context === false || (code >= 300 && code < 400)) {
      super.send(code, data, false);
      return;
    }
    super.send(code, withEnhancedCode(code, data, context), false);
  }
}

function withEnhancedCode(code: number, text: string, context: string | undefined): string {
  if (hasEnhancedCode(text)) return text;
  const byContext = context === undefined ? undefined : CONTEXT_TEXT[context];
  if (byContext !== undefined) return byContext;
  const byReply = TEXT_BY_REPLY[`${code} ${text}`];
  if (byReply !== undefined) return byReply;
  const enhanced = ENHANCED_BY_CODE[code] ?? (code >= 400 ? `${Math.floor(code / 100)}.0.0` : undefined);
  return enhanced === undefined ? text : `${enhanced} ${text.replace(/^Error: /, "")}`;
}
