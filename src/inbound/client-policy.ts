import { createHash, timingSafeEqual } from "node:crypto";
import ipaddr from "ipaddr.js";
import type { ClientConfig, Config } from "../config/schema.js";

type Network = [ipaddr.IPv4 | ipaddr.IPv6, number];

function parseNetwork(value: string): Network {
  if (value.includes("/")) return ipaddr.parseCIDR(value);
  const address = ipaddr.parse(value);
  return [address, address.kind() === "ipv4" ? 32 : 128];
}

/** IPv4-mapped IPv6 addresses (::ffff:10.0.2.7) are treated as the IPv4 address they carry. */
export function normalizeAddress(address: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  try {
    return ipaddr.process(address.replace(/%.*$/, ""));
  } catch {
    return undefined;
  }
}

function sameSecret(given: string, expected: string): boolean {
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

/** Who may submit, and as which mailbox their mail goes out. */
export class ClientPolicy {
  private readonly networks: { client: ClientConfig; networks: Network[] }[];
  private readonly onlyMailbox: string | null;

  constructor(private readonly config: Pick<Config, "clients" | "mailboxes">) {
    this.networks = config.clients
      .filter((client) => client.networks?.length)
      .map((client) => ({ client, networks: (client.networks ?? []).map(parseNetwork) }));
    const mailboxes = Object.keys(config.mailboxes);
    this.onlyMailbox = mailboxes.length === 1 ? (mailboxes[0] as string) : null;
  }

  /** The first client whose networks contain the address (IPv4, IPv6, IPv4-mapped IPv6). */
  byAddress(remoteAddress: string): ClientConfig | undefined {
    const address = normalizeAddress(remoteAddress);
    if (!address) return undefined;
    for (const { client, networks } of this.networks) {
      for (const [range, bits] of networks) {
        if (range.kind() === address.kind() && address.match(range, bits)) return client;
      }
    }
    return undefined;
  }

  byName(name: string): ClientConfig | undefined {
    return this.config.clients.find((client) => client.name === name);
  }

  /** The client with this username and password, compared in constant time; undefined when they do not match. */
  authenticate(username: string, password: string): ClientConfig | undefined {
    const client = this.config.clients.find((c) => c.username !== undefined && c.username === username);
    // compare even when the user is unknown, so timing does not tell which usernames exist
    const ok = sameSecret(password, client?.password ?? "\0no such user");
    return client && ok ? client : undefined;
  }

  /** The mailbox a client's mail is sent as, or null when none is configured yet (mail is held). */
  mailboxFor(client: ClientConfig): string | null {
    return client.mailbox ?? this.onlyMailbox;
  }
}
