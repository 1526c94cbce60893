import ipaddr from "ipaddr.js";
import type { ClientConfig } from "../config/schema.js";

export type Network = [ipaddr.IPv4 | ipaddr.IPv6, number];

export function parseNetwork(value: string): Network {
  if (value.includes("/")) return normalizeNetwork(ipaddr.parseCIDR(value));
  const address = ipaddr.process(value);
  return [address, address.kind() === "ipv4" ? 32 : 128];
}

/** `::ffff:10.0.0.0/104` is the IPv4 network 10.0.0.0/8, so it matches IPv4 clients. */
function normalizeNetwork([address, bits]: Network): Network {
  if (address.kind() === "ipv6" && (address as ipaddr.IPv6).isIPv4MappedAddress() && bits >= 96) {
    return [(address as ipaddr.IPv6).toIPv4Address(), bits - 96];
  }
  return [address, bits];
}

/** IPv4-mapped IPv6 addresses (::ffff:10.0.2.7) are treated as the IPv4 address they carry. */
export function normalizeAddress(address: string): ipaddr.IPv4 | ipaddr.IPv6 | undefined {
  try {
    return ipaddr.process(address.replace(/%.*$/, ""));
  } catch {
    return undefined;
  }
}

export function networkContains([range, bits]: Network, address: ipaddr.IPv4 | ipaddr.IPv6): boolean {
  return range.kind() === address.kind() && address.match(range, bits);
}

/** Every address of `inner` is in `outer`. */
function networkCovers(outer: Network, inner: Network): boolean {
  return inner[1] >= outer[1] && networkContains(outer, inner[0]);
}

/** `pattern` is an address or `*@domain` (both lower case, as the schema stores them). */
export function senderMatches(pattern: string, sender: string): boolean {
  const address = sender.toLowerCase();
  if (pattern.startsWith("*@")) return address.endsWith(pattern.slice(1)) && address.indexOf("@") > 0;
  return address === pattern;
}

/** Every sender `inner` matches, `outer` matches too. */
function senderCovers(outer: string, inner: string): boolean {
  if (outer === inner) return true;
  return outer.startsWith("*@") && !inner.startsWith("*@") && senderMatches(outer, inner);
}

/**
 * Entries that can never match because an earlier one matches every session and sender they would:
 * the same username (or none), networks that contain all of theirs (or none given), senders that cover
 * all of theirs (or none given). Returns warnings in config terms.
 */
export function shadowedClients(clients: readonly ClientConfig[]): string[] {
  const warnings: string[] = [];
  clients.forEach((later, j) => {
    for (let i = 0; i < j; i++) {
      const earlier = clients[i] as ClientConfig;
      if (covers(earlier, later)) {
        warnings.push(
          `clients[${j}] (${later.name}) can never match: clients[${i}] (${earlier.name}) comes first and matches every session it would; move it up or narrow the earlier entry`,
        );
        return;
      }
    }
  });
  return warnings;
}

function covers(earlier: ClientConfig, later: ClientConfig): boolean {
  if (earlier.username !== later.username) return false;
  if (earlier.networks) {
    if (!later.networks) return false;
    const outer = earlier.networks.map(parseNetwork);
    if (!later.networks.map(parseNetwork).every((inner) => outer.some((o) => networkCovers(o, inner)))) {
      return false;
    }
  }
  if (earlier.senders) {
    if (!later.senders) return false;
    const outer = earlier.senders;
    if (!later.senders.every((inner) => outer.some((o) => senderCovers(o, inner)))) return false;
  }
  return true;
}
