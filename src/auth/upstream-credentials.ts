import type { Config } from "../config/schema.js";
import type { Classification } from "../outbound/classify-reply.js";
import type { TokenProvider } from "./token-provider.js";
import type { TokenProviders } from "./token-providers.js";

/** What one AUTH uses: a password, or an OAuth2 access token (XOAUTH2). */
export type UpstreamLogin = { user: string; pass: string } | { user: string; accessToken: string };

/** How one mailbox authenticates upstream. Never holds anything that is written to Redis or logs. */
export interface UpstreamCredentials {
  readonly user: string;
  readonly method: "password" | "oauth2";
  /** The login for the next AUTH. OAuth2: the cached token; throws TokenUnavailable or TokenRefused without one. */
  login(): Promise<UpstreamLogin>;
  /** The upstream refused `login` with 535: a replacement worth exactly one more try, or null. */
  afterRefusal(login: UpstreamLogin): Promise<UpstreamLogin | null>;
  /** The reply table's verdict on an authentication failure, with the hint for this kind of credential. */
  explain(verdict: Classification): Classification;
}

export class PasswordCredentials implements UpstreamCredentials {
  readonly method = "password";

  constructor(
    readonly user: string,
    private readonly password: string,
  ) {}

  async login(): Promise<UpstreamLogin> {
    return { user: this.user, pass: this.password };
  }

  async afterRefusal(): Promise<null> {
    return null;
  }

  explain(verdict: Classification): Classification {
    return verdict;
  }
}

/** The steps an app-only sender needs in Exchange Online; each one missing gives `535 5.7.3`. */
export function oauth2SetupHint(mailbox: string, clientId: string): string {
  return (
    `Exchange refused the app's token for ${mailbox}. Check, in this order: ` +
    `1) the app registration ${clientId} has the application permission SMTP.SendAsApp (Office 365 Exchange Online) with admin consent granted; ` +
    `2) Exchange knows the app: New-ServicePrincipal -AppId ${clientId} -ObjectId <object id of the Enterprise application>; ` +
    `3) the app may use the mailbox: Add-MailboxPermission -Identity ${mailbox} -User <service principal id> -AccessRights FullAccess; ` +
    `4) SMTP AUTH is enabled for the mailbox: Set-CASMailbox -Identity ${mailbox} -SmtpClientAuthenticationDisabled $false. ` +
    "Changes can take up to an hour to apply; `sluice doctor --mailbox " +
    mailbox +
    "` checks them. See docs/office365-setup.md"
  );
}

export class OAuth2Credentials implements UpstreamCredentials {
  readonly method = "oauth2";

  constructor(
    readonly user: string,
    private readonly tokens: TokenProvider,
    private readonly clientId: string,
  ) {}

  async login(): Promise<UpstreamLogin> {
    return { user: this.user, accessToken: await this.tokens.token() };
  }

  async afterRefusal(login: UpstreamLogin): Promise<UpstreamLogin | null> {
    if (!("accessToken" in login)) return null;
    return { user: this.user, accessToken: await this.tokens.replace(login.accessToken) };
  }

  explain(verdict: Classification): Classification {
    // 535 5.7.139 (SMTP AUTH disabled) has its own precise hint in the reply table
    if (verdict.category !== "authentication" || /\b5\.7\.139\b/.test(verdict.reply)) return verdict;
    return { ...verdict, hint: oauth2SetupHint(this.user, this.clientId) };
  }
}

/** The credentials of a configured mailbox: its password, or tokens from the provider shared by its app registration. */
export function upstreamCredentials(
  config: Pick<Config, "mailboxes" | "upstream">,
  mailbox: string,
  tokens: TokenProviders,
): UpstreamCredentials {
  const settings = config.mailboxes[mailbox];
  if (!settings) throw new Error(`unknown mailbox ${mailbox}`);
  const user = settings.username ?? mailbox;
  if (!settings.oauth2) return new PasswordCredentials(user, settings.password ?? "");
  const path = `mailboxes.${JSON.stringify(mailbox)}.oauth2`;
  const provider = tokens.for(settings.oauth2, settings.upstream ?? config.upstream, path);
  return new OAuth2Credentials(user, provider, settings.oauth2.clientId);
}
