import { X509Certificate } from "node:crypto";
import { AuthError, ConfidentialClientApplication, type Configuration, LogLevel } from "@azure/msal-node";
import type { Logger } from "../logger.js";
import { HttpsNetworkClient } from "./https-network-client.js";
import { classifyTokenError, type TokenRefused, type TokenUnavailable } from "./token-errors.js";

/** One app registration's client-credentials grant for one scope. */
export interface TokenProviderOptions {
  /** Identity platform host, e.g. https://login.microsoftonline.com (no tenant, no path). */
  authority: string;
  tenant: string;
  clientId: string;
  /** A client secret, or a certificate (PEM private key and certificate) uploaded to the app registration. */
  credential: { clientSecret: string } | { certificate: { key: string; cert: string } };
  scope: string;
  /** Extra trusted CA (PEM) for the token endpoint. Default: system CAs only. */
  ca?: string;
  /** ms to wait for the token endpoint. */
  timeoutMs: number;
  /** Where the settings live, for messages: e.g. `mailboxes."a@b".oauth2`. */
  configPath: string;
  logger: Logger;
  /** Renew once this fraction of a token's lifetime has passed. Default 0.75. */
  renewAt?: number;
  /** Longest wait between failed fetches (ms); they back off 1 s, 2 s, 4 s ... up to this. Default 30 000. */
  maxRetryDelayMs?: number;
}

/** Why a token was fetched: "first" / "needed" (a caller waited), "renewal" (in the background), "refused" (upstream said 535). */
export type FetchReason = "first" | "needed" | "renewal" | "refused";

interface CurrentToken {
  token: string;
  expiresAt: number;
  lifetimeMs: number;
}

/**
 * Client-credentials tokens of one app registration and scope, from msal's ConfidentialClientApplication.
 * The token is cached here and renewed in the background at `renewAt` of its lifetime, so callers get it
 * without waiting in the steady state; a fetch happens on a caller's path only when there is no usable token.
 * Failed fetches back off and are shared: callers get the same TokenUnavailable / TokenRefused meanwhile.
 */
export class TokenProvider {
  private readonly app: ConfidentialClientApplication;
  private readonly network: HttpsNetworkClient;
  private readonly logger: Logger;
  private readonly renewAt: number;
  private readonly maxRetryDelayMs: number;
  private current: CurrentToken | undefined;
  private inflight: Promise<string> | undefined;
  private failure: { error: TokenUnavailable | TokenRefused; until: number; count: number } | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** Token requests sent to the endpoint so far (successful or not). */
  fetches = 0;

  constructor(private readonly options: TokenProviderOptions) {
    this.renewAt = options.renewAt ?? 0.75;
    this.maxRetryDelayMs = options.maxRetryDelayMs ?? 30_000;
    this.logger = options.logger.child({ clientId: options.clientId, tenant: options.tenant });
    this.network = new HttpsNetworkClient({ ca: options.ca, timeoutMs: options.timeoutMs });
    this.app = new ConfidentialClientApplication(this.msalConfiguration());
  }

  private msalConfiguration(): Configuration {
    const { authority, tenant, clientId, credential } = this.options;
    const base = `${authority.replace(/\/+$/, "")}/${encodeURIComponent(tenant)}`;
    const host = new URL(authority).host;
    const secret =
      "clientSecret" in credential
        ? { clientSecret: credential.clientSecret }
        : {
            clientCertificate: {
              thumbprintSha256: new X509Certificate(credential.certificate.cert).fingerprint256.replace(
                /:/g,
                "",
              ),
              privateKey: credential.certificate.key,
              x5c: credential.certificate.cert,
            },
          };
    return {
      auth: {
        clientId,
        authority: base,
        ...secret,
        // the endpoints are known: no discovery request ever leaves the relay, only the token request
        knownAuthorities: [host],
        authorityMetadata: JSON.stringify({
          token_endpoint: `${base}/oauth2/v2.0/token`,
          authorization_endpoint: `${base}/oauth2/v2.0/authorize`,
          end_session_endpoint: `${base}/oauth2/v2.0/logout`,
          issuer: `${base}/v2.0`,
          jwks_uri: `${base}/discovery/v2.0/keys`,
        }),
        cloudDiscoveryMetadata: JSON.stringify({
          tenant_discovery_endpoint: `${base}/v2.0/.well-known/openid-configuration`,
          "api-version": "1.1",
          metadata: [{ preferred_network: host, preferred_cache: host, aliases: [host] }],
        }),
      },
      system: {
        networkClient: this.network,
        // retries are ours (backoff shared by every mailbox of the app)
        disableInternalRetries: true,
        loggerOptions: {
          piiLoggingEnabled: false,
          logLevel: LogLevel.Warning,
          loggerCallback: (_level, message, containsPii) => {
            if (!containsPii) this.logger.debug({ msal: message }, "msal");
          },
        },
      },
    };
  }

  /** A usable token: the cached one in the steady state; fetched only when there is none. */
  token(): Promise<string> {
    const current = this.current;
    if (current && this.usable(current)) return Promise.resolve(current.token);
    return this.fetch(this.fetches === 0 ? "first" : "needed", false);
  }

  /** The upstream refused `refused`: a different usable token if there already is one, else one fresh fetch. */
  replace(refused: string): Promise<string> {
    const current = this.current;
    if (current && current.token !== refused && this.usable(current)) return Promise.resolve(current.token);
    if (current?.token === refused) this.current = undefined;
    return this.fetch("refused", true);
  }

  /** Seconds the current token is still valid, or undefined without one (for `sluice doctor`). */
  get expiresInSeconds(): number | undefined {
    return this.current ? Math.round((this.current.expiresAt - Date.now()) / 1000) : undefined;
  }

  private usable(current: CurrentToken): boolean {
    // a token about to expire could die between AUTH and the end of the message
    return current.expiresAt - Date.now() > Math.min(60_000, current.lifetimeMs * 0.1);
  }

  private fetch(reason: FetchReason, ignoreBackoff: boolean): Promise<string> {
    if (this.inflight) return this.inflight;
    const failure = this.failure;
    if (!ignoreBackoff && failure && Date.now() < failure.until) {
      failure.error.retryInMs = failure.until - Date.now();
      return Promise.reject(failure.error);
    }
    const inflight = this.acquire(reason).finally(() => {
      if (this.inflight === inflight) this.inflight = undefined;
    });
    this.inflight = inflight;
    return inflight;
  }

  private async acquire(reason: FetchReason): Promise<string> {
    if (this.closed) throw classifyTokenError(new Error("relay stopping"), this.options, 1_000);
    this.fetches++;
    try {
      const result = await this.app.acquireTokenByClientCredential({
        scopes: [this.options.scope],
        skipCache: true,
      });
      if (!result?.accessToken) throw new Error("the token endpoint's answer has no access_token");
      const now = Date.now();
      const expiresAt = result.expiresOn?.getTime() ?? now + 3600_000;
      const lifetimeMs = Math.max(1_000, expiresAt - now);
      this.current = { token: result.accessToken, expiresAt, lifetimeMs };
      this.failure = undefined;
      this.logger.info(
        { event: "token-fetched", reason, expiresInS: Math.round(lifetimeMs / 1000) },
        "OAuth2 token obtained",
      );
      this.scheduleRenewal(lifetimeMs * this.renewAt);
      return result.accessToken;
    } catch (err) {
      const count = (this.failure?.count ?? 0) + 1;
      const delay = Math.min(this.maxRetryDelayMs, 1_000 * 2 ** (count - 1));
      const cause =
        err instanceof AuthError && err.errorCode === "network_error" ? (this.network.lastError ?? err) : err;
      const error = classifyTokenError(cause, this.options, delay);
      this.failure = { error, until: Date.now() + delay, count };
      const hint = "hint" in error ? error.hint : undefined;
      this.logger[error.name === "TokenRefused" ? "error" : "warn"](
        { event: "token-failed", reason, err: error.message, hint, retryInMs: delay },
        error.name === "TokenRefused"
          ? "OAuth2 token refused by the identity platform"
          : "OAuth2 token endpoint unavailable: mail waits, retrying",
      );
      // keep trying in the background while the current token still works
      if (this.current && this.usable(this.current)) this.scheduleRenewal(delay);
      throw error;
    }
  }

  private scheduleRenewal(inMs: number): void {
    if (this.closed) return;
    clearTimeout(this.renewTimer);
    this.renewTimer = setTimeout(() => {
      this.fetch("renewal", true).catch(() => {});
    }, inMs);
    this.renewTimer.unref();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.renewTimer);
    this.network.close();
  }
}
