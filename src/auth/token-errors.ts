import { ServerError } from "@azure/msal-node";

/**
 * No token right now: the token endpoint is down, slow, or answered with a server error. The mailbox's mail
 * waits (no attempt spent) and is retried; it never fails because of this.
 */
export class TokenUnavailable extends Error {
  constructor(
    message: string,
    /** When a new fetch will be tried (ms from now). */
    public retryInMs: number,
  ) {
    super(message);
    this.name = "TokenUnavailable";
  }
}

/**
 * The identity platform refused the app registration's request (wrong secret or certificate, unknown app or
 * tenant, bad scope): a configuration problem. The mailbox is paused with `hint`, its mail kept.
 */
export class TokenRefused extends Error {
  constructor(
    message: string,
    readonly hint: string,
    public retryInMs: number,
  ) {
    super(message);
    this.name = "TokenRefused";
  }
}

/** OAuth2 error codes that mean the request itself is wrong (RFC 6749 5.2), not that the endpoint is unwell. */
const CONFIGURATION_ERRORS = new Set([
  "invalid_client",
  "unauthorized_client",
  "invalid_request",
  "invalid_scope",
  "invalid_grant",
  "unsupported_grant_type",
]);

export interface TokenErrorContext {
  tenant: string;
  clientId: string;
  scope: string;
  /** Where the setting lives, e.g. `mailboxes."a@b".oauth2`. */
  configPath: string;
}

/** The first line of the identity platform's error_description (e.g. `AADSTS7000215: Invalid client secret provided...`). */
function describe(err: ServerError): string {
  const text = err.errorMessage || err.message || "";
  // msal's message: "Error(s): 7000215 - Timestamp: ... - Description: AADSTS7000215: ... Trace ID: ..."
  const aadsts = /AADSTS\d+:.*?(?=\s*(?:\r?\n|Trace ID:| - Correlation ID|$))/s.exec(text)?.[0];
  return [err.errorCode, aadsts ?? text.split(/\r?\n/)[0]?.trim()].filter(Boolean).join(": ");
}

function hintFor(err: ServerError, context: TokenErrorContext): string {
  const { tenant, clientId, scope, configPath } = context;
  const text = `${err.errorMessage ?? ""} ${err.subError ?? ""}`;
  if (
    /AADSTS7000215|AADSTS7000222|AADSTS700027|AADSTS700023/.test(text) ||
    err.errorCode === "invalid_client"
  ) {
    return `the identity platform refused the app's credentials: set ${configPath}.clientSecret to the secret's Value (not its ID) from Entra admin center > App registrations > ${clientId} > Certificates & secrets, create a new one if it expired, or check that ${configPath}.certificate is the certificate uploaded there`;
  }
  if (/AADSTS700016/.test(text) || err.errorCode === "unauthorized_client") {
    return `application ${clientId} is not known in tenant ${tenant}: check ${configPath}.clientId and ${configPath}.tenant, and that the app registration exists in that tenant`;
  }
  if (/AADSTS90002|AADSTS90023/.test(text)) {
    return `tenant ${tenant} was not found: check ${configPath}.tenant (the directory id or a verified domain such as contoso.onmicrosoft.com) and ${configPath}.authority for national clouds`;
  }
  if (err.errorCode === "invalid_scope" || /AADSTS70011|AADSTS1002012/.test(text)) {
    return `scope ${scope} was refused: use the upstream preset's scope (remove ${configPath}.scope) and grant the app SMTP.SendAsApp with admin consent`;
  }
  return `the identity platform refused the token request: check ${configPath} (tenant, clientId, clientSecret or certificate) against the app registration`;
}

/** Sorts a failed token fetch into "the mail waits" (TokenUnavailable) or "the configuration is wrong" (TokenRefused). */
export function classifyTokenError(
  err: unknown,
  context: TokenErrorContext,
  retryInMs: number,
): TokenUnavailable | TokenRefused {
  if (err instanceof ServerError && CONFIGURATION_ERRORS.has(err.errorCode)) {
    return new TokenRefused(`token request refused: ${describe(err)}`, hintFor(err, context), retryInMs);
  }
  const reason = err instanceof ServerError ? describe(err) : (err as Error)?.message || String(err);
  return new TokenUnavailable(`no OAuth2 token: ${reason}`, retryInMs);
}
