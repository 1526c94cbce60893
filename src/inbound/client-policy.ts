import { createHash, timingSafeEqual } from "node:crypto";
import type { ClientConfig, Config } from "../config/schema.js";
import {
  type Network,
  networkContains,
  normalizeAddress,
  parseNetwork,
  senderMatches,
} from "./client-matching.js";
import { SmtpReply } from "./smtp-reply.js";

export { normalizeAddress } from "./client-matching.js";

function sameSecret(given: string, expected: string): boolean {
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

/** Who is submitting: the AUTH user name (if any) and the address the connection comes from. */
export interface SessionIdentity {
  username?: string | undefined;
  remoteAddress: string;
}

export type ClientMatch = { client: ClientConfig } | { client?: undefined; refusal: SmtpReply };

interface Entry {
  client: ClientConfig;
  networks: Network[] | undefined;
}

/**
 * Who may submit, and as which mailbox their mail goes out. An entry matches when everything it gives
 * matches: `username` (only sessions that authenticated as that user; entries without one only match
 * sessions that did not authenticate), `networks` (the remote address), `senders` (the envelope sender).
 * The first matching entry wins.
 */
export class ClientPolicy {
  private readonly entries: Entry[];
  private readonly onlyMailbox: string | null;

  constructor(private readonly config: Pick<Config, "clients" | "mailboxes">) {
    this.entries = config.clients.map((client) => ({
      client,
      networks: client.networks?.map(parseNetwork),
    }));
    const mailboxes = Object.keys(config.mailboxes);
    this.onlyMailbox = mailboxes.length === 1 ? (mailboxes[0] as string) : null;
  }

  /** The first entry matching the session and envelope sender, or the reply that says why none does. */
  match(identity: SessionIdentity, sender: string): ClientMatch {
    let identityMatched: ClientConfig | undefined;
    for (const entry of this.entries) {
      if (!this.identityMatches(entry, identity)) continue;
      identityMatched ??= entry.client;
      const { senders } = entry.client;
      if (!senders || (sender !== "" && senders.some((pattern) => senderMatches(pattern, sender)))) {
        return { client: entry.client };
      }
    }
    const shown = sender === "" ? "<> (null sender)" : sender;
    if (identity.username !== undefined) {
      return {
        refusal: new SmtpReply(
          550,
          "5.7.1",
          `Sender ${shown} not allowed for user ${identity.username}: add it to senders of a clients entry with username ${identity.username}`,
        ),
      };
    }
    if (identityMatched) {
      return {
        refusal: new SmtpReply(
          550,
          "5.7.1",
          `Sender ${shown} not allowed from ${identity.remoteAddress}: add it to senders of a clients entry for this network`,
        ),
      };
    }
    return { refusal: new SmtpReply(530, "5.7.0", "Authentication required") };
  }

  private identityMatches(entry: Entry, identity: SessionIdentity): boolean {
    if (entry.client.username !== identity.username) return false;
    if (!entry.networks) return true;
    const address = normalizeAddress(identity.remoteAddress);
    return address !== undefined && entry.networks.some((network) => networkContains(network, address));
  }

  byName(name: string): ClientConfig | undefined {
    return this.config.clients.find((client) => client.name === name);
  }

  /** Whether the username is known and the password is its password, compared in constant time. */
  authenticate(username: string, password: string): boolean {
    const client = this.config.clients.find((c) => c.username !== undefined && c.username === username);
    // compare even when the user is unknown, so timing does not tell which usernames exist
    const ok = sameSecret(password, client?.password ?? "\0no such user");
    return client !== undefined && ok;
  }

  /** The mailboxes a client's mail may go out as (one, or a pool); empty while none is configured (held). */
  mailboxesFor(client: ClientConfig): string[] {
    if (client.mailboxes) return [...client.mailboxes];
    const mailbox = client.mailbox ?? this.onlyMailbox;
    return mailbox ? [mailbox] : [];
  }

  /** A mailbox name the client uses that is not configured (possible only when the config was not validated). */
  unknownMailbox(client: ClientConfig): string | undefined {
    return this.mailboxesFor(client).find((mailbox) => !(mailbox in this.config.mailboxes));
  }

  /** The mailbox a client's mail is sent as when it has a single one (held mail: null). */
  mailboxFor(client: ClientConfig): string | null {
    return this.mailboxesFor(client)[0] ?? null;
  }

  /** The From addresses a mailbox may use: itself and its aliases. */
  fromAddressesOf(mailbox: string): string[] {
    return [mailbox, ...(this.config.mailboxes[mailbox]?.aliases ?? [])];
  }
}
