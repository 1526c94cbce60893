import { createPublicKey, randomBytes, randomUUID, verify, X509Certificate } from "node:crypto";
import https from "node:https";
import type net from "node:net";
import type { AddressInfo } from "node:net";

/** An app registration the fake identity platform knows. */
export interface FakeApp {
  /** The client secret it accepts. */
  secret?: string;
  /** A certificate (PEM) whose key signs client assertions (RS256 / PS256). */
  certificate?: string;
}

export interface TokenEndpointOptions {
  /** Server key and certificate (PEM), e.g. from TestPki.issue(["127.0.0.1", "localhost"]). */
  tls: { key: string; cert: string };
  /** Client id -> credentials. */
  apps: Record<string, FakeApp>;
  /** Lifetime of issued tokens, seconds. Default 3600. Change later with setLifetime(). */
  lifetimeSeconds?: number;
}

/** How the endpoint misbehaves: "down" refuses connections, "slow" answers after slowMs, "error" says 503. */
export type TokenEndpointMode = "up" | "down" | "slow" | "error";

export interface IssuedToken {
  token: string;
  clientId: string;
  tenant: string;
  scope: string;
  expiresAt: number;
  revoked: boolean;
}

export interface TokenEndpoint {
  /** https://127.0.0.1:PORT: give it as oauth2.authority. */
  readonly url: string;
  readonly port: number;
  /** Tokens issued so far, oldest first. */
  readonly issued: IssuedToken[];
  /** Token requests received (answered or refused). */
  readonly requests: number;
  /** Request bodies received (form fields), for assertions; they carry secrets, never log them. */
  readonly requestBodies: URLSearchParams[];
  setLifetime(seconds: number): void;
  /** "down" closes the listener (ECONNREFUSED); "slow" waits slowMs before answering. Await it. */
  setMode(mode: TokenEndpointMode, slowMs?: number): Promise<void>;
  /** Revokes the given token, or every token issued so far. */
  revoke(token?: string): void;
  /** For the fake upstream's `oauth2` option: a token this endpoint issued, not expired, not revoked. */
  validateToken(user: string, token: string): boolean;
  stop(): Promise<void>;
}

/**
 * A local stand-in for the Microsoft identity platform v2 token endpoint, over HTTPS with the test CA:
 * `POST /{tenant}/oauth2/v2.0/token` with the client-credentials grant (client_secret, or a client_assertion
 * JWT signed by the app's certificate) answers `{ token_type: "Bearer", expires_in, ext_expires_in,
 * access_token }`, and errors the way Entra ID does (`{ error, error_description, error_codes, ... }`).
 */
export async function startTokenEndpoint(options: TokenEndpointOptions): Promise<TokenEndpoint> {
  const endpoint = new FakeIdentityPlatform(options);
  await endpoint.listen();
  return endpoint;
}

class FakeIdentityPlatform implements TokenEndpoint {
  readonly issued: IssuedToken[] = [];
  readonly requestBodies: URLSearchParams[] = [];
  requests = 0;
  private lifetimeSeconds: number;
  private mode: TokenEndpointMode = "up";
  private slowMs = 0;
  private listenPort = 0;
  private readonly server: https.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly options: TokenEndpointOptions) {
    this.lifetimeSeconds = options.lifetimeSeconds ?? 3600;
    this.server = https.createServer({ key: options.tls.key, cert: options.tls.cert }, (req, res) =>
      this.handle(req, res),
    );
    this.server.on("connection", (socket: net.Socket) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
    });
  }

  get port(): number {
    return this.listenPort;
  }

  get url(): string {
    return `https://127.0.0.1:${this.listenPort}`;
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen({ port: this.listenPort, host: "127.0.0.1" }, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
    this.listenPort = (this.server.address() as AddressInfo).port;
  }

  setLifetime(seconds: number): void {
    this.lifetimeSeconds = seconds;
  }

  async setMode(mode: TokenEndpointMode, slowMs = 0): Promise<void> {
    const wasDown = this.mode === "down";
    this.mode = mode;
    this.slowMs = slowMs;
    if (mode === "down" && !wasDown) {
      this.server.close();
      for (const socket of this.sockets) socket.destroy();
      await new Promise((resolve) => setImmediate(resolve));
    } else if (mode !== "down" && wasDown) {
      await this.listen();
    }
  }

  revoke(token?: string): void {
    for (const issued of this.issued)
      if (token === undefined || issued.token === token) issued.revoked = true;
  }

  validateToken(_user: string, token: string): boolean {
    const issued = this.issued.find((t) => t.token === token);
    return issued !== undefined && !issued.revoked && issued.expiresAt > Date.now();
  }

  private handle(req: import("node:http").IncomingMessage, res: import("node:http").ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const answer = () => this.answer(req.method ?? "", req.url ?? "", Buffer.concat(chunks).toString());
      const send = () => {
        const { status, body } = answer();
        res.writeHead(status, { "content-type": "application/json; charset=utf-8" });
        res.end(JSON.stringify(body));
      };
      if (this.mode === "slow") {
        const timer = setTimeout(() => {
          this.timers.delete(timer);
          send();
        }, this.slowMs);
        this.timers.add(timer);
      } else send();
    });
  }

  private answer(method: string, url: string, text: string): { status: number; body: unknown } {
    const match = /^\/([^/]+)\/oauth2\/v2\.0\/token(\?.*)?$/.exec(url);
    if (method !== "POST" || !match) {
      return { status: 404, body: aadError("invalid_request", 900561, `no such endpoint: ${method} ${url}`) };
    }
    this.requests++;
    const tenant = decodeURIComponent(match[1] ?? "");
    const form = new URLSearchParams(text);
    this.requestBodies.push(form);
    if (this.mode === "error") {
      return {
        status: 503,
        body: aadError("temporarily_unavailable", 90033, "AADSTS90033: A transient error has occurred."),
      };
    }
    if (form.get("grant_type") !== "client_credentials") {
      return {
        status: 400,
        body: aadError("unsupported_grant_type", 70003, "AADSTS70003: unsupported grant"),
      };
    }
    const clientId = form.get("client_id") ?? "";
    const app = this.options.apps[clientId];
    if (!app) {
      return {
        status: 400,
        body: aadError(
          "unauthorized_client",
          700016,
          `AADSTS700016: Application with identifier '${clientId}' was not found in the directory '${tenant}'.`,
        ),
      };
    }
    const scope = form.get("scope") ?? "";
    const resourceScope = scope.split(" ").find((s) => s.endsWith("/.default"));
    if (!resourceScope) {
      return {
        status: 400,
        body: aadError("invalid_scope", 1002012, "AADSTS1002012: The provided value for scope is not valid."),
      };
    }
    if (!this.authenticated(app, form, tenant)) {
      return {
        status: 401,
        body: aadError(
          "invalid_client",
          7000215,
          `AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '${clientId}'.`,
        ),
      };
    }
    const token = `fake-at.${randomBytes(24).toString("base64url")}`;
    const lifetime = this.lifetimeSeconds;
    this.issued.push({
      token,
      clientId,
      tenant,
      scope: resourceScope,
      expiresAt: Date.now() + lifetime * 1000,
      revoked: false,
    });
    return {
      status: 200,
      body: { token_type: "Bearer", expires_in: lifetime, ext_expires_in: lifetime, access_token: token },
    };
  }

  private authenticated(app: FakeApp, form: URLSearchParams, tenant: string): boolean {
    const secret = form.get("client_secret");
    if (secret !== null) return app.secret !== undefined && secret === app.secret;
    const assertion = form.get("client_assertion");
    if (
      assertion === null ||
      !app.certificate ||
      form.get("client_assertion_type") !== "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    ) {
      return false;
    }
    return verifyAssertion(assertion, app.certificate, form.get("client_id") ?? "", tenant, this.url);
  }

  async stop(): Promise<void> {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    if (this.mode !== "down") this.server.close();
    this.mode = "down";
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => setImmediate(resolve));
  }
}

function aadError(error: string, code: number, description: string) {
  return {
    error,
    error_description: `${description}\r\nTrace ID: ${randomUUID()}\r\nCorrelation ID: ${randomUUID()}\r\nTimestamp: ${new Date().toISOString()}`,
    error_codes: [code],
    timestamp: new Date().toISOString(),
    trace_id: randomUUID(),
    correlation_id: randomUUID(),
  };
}

/** Checks a client assertion (RFC 7523) the way Entra ID does: signature by the app's certificate, iss/sub, aud, exp. */
function verifyAssertion(
  jwt: string,
  certificatePem: string,
  clientId: string,
  tenant: string,
  base: string,
) {
  const [headerPart, payloadPart, signaturePart] = jwt.split(".");
  if (!headerPart || !payloadPart || !signaturePart) return false;
  const header = JSON.parse(Buffer.from(headerPart, "base64url").toString()) as { alg?: string };
  const payload = JSON.parse(Buffer.from(payloadPart, "base64url").toString()) as Record<string, unknown>;
  const key = createPublicKey(
    new X509Certificate(certificatePem).publicKey.export({ type: "spki", format: "pem" }),
  );
  const data = Buffer.from(`${headerPart}.${payloadPart}`);
  const signature = Buffer.from(signaturePart, "base64url");
  let valid = false;
  if (header.alg === "RS256") valid = verify("sha256", data, key, signature);
  else if (header.alg === "PS256") {
    valid = verify(
      "sha256",
      data,
      { key, padding: 6 /* RSA_PKCS1_PSS_PADDING */, saltLength: 32 },
      signature,
    );
  }
  const audience = String(payload.aud ?? "");
  return (
    valid &&
    payload.iss === clientId &&
    payload.sub === clientId &&
    audience.startsWith(`${base}/${tenant}`) &&
    typeof payload.exp === "number" &&
    payload.exp * 1000 > Date.now()
  );
}
