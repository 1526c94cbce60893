import { readFileSync } from "node:fs";
import type { OAuth2Config, UpstreamConfig } from "../config/schema.js";
import type { Logger } from "../logger.js";
import { TokenProvider } from "./token-provider.js";

/** A configuration file that cannot be read: says which key points at it. */
export class CredentialFileError extends Error {
  constructor(configPath: string, file: string, cause: Error) {
    super(`cannot read ${configPath} (${file}): ${cause.message}`);
    this.name = "CredentialFileError";
  }
}

function readPem(configPath: string, file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    throw new CredentialFileError(configPath, file, err as Error);
  }
}

/**
 * Token providers shared by app registration: every mailbox of the same authority, tenant, client id and
 * scope uses one provider, so one token (and one renewal) serves them all. Created in createRelay; close() stops
 * every renewal timer and keep-alive connection.
 */
export class TokenProviders {
  private readonly providers = new Map<string, TokenProvider>();

  constructor(private readonly logger: Logger) {}

  /** The provider for a mailbox's `oauth2` settings on its upstream (whose preset gives authority and scope). */
  for(oauth2: OAuth2Config, upstream: UpstreamConfig, configPath: string): TokenProvider {
    const authority = (oauth2.authority ?? upstream.oauth2.authority).replace(/\/+$/, "");
    const scope = oauth2.scope ?? upstream.oauth2.scope;
    const key = JSON.stringify([
      authority.toLowerCase(),
      oauth2.tenant.toLowerCase(),
      oauth2.clientId,
      scope,
    ]);
    let provider = this.providers.get(key);
    if (!provider) {
      const credential = oauth2.certificate
        ? {
            certificate: {
              key: readPem(`${configPath}.certificate.key`, oauth2.certificate.key),
              cert: readPem(`${configPath}.certificate.cert`, oauth2.certificate.cert),
            },
          }
        : { clientSecret: oauth2.clientSecret ?? "" };
      provider = new TokenProvider({
        authority,
        tenant: oauth2.tenant,
        clientId: oauth2.clientId,
        credential,
        scope,
        ca: oauth2.ca ? readPem(`${configPath}.ca`, oauth2.ca) : undefined,
        timeoutMs: oauth2.timeout,
        configPath,
        logger: this.logger,
      });
      this.providers.set(key, provider);
    }
    return provider;
  }

  /** Token requests sent so far by every provider. */
  get fetches(): number {
    let total = 0;
    for (const provider of this.providers.values()) total += provider.fetches;
    return total;
  }

  close(): void {
    for (const provider of this.providers.values()) provider.close();
    this.providers.clear();
  }
}
