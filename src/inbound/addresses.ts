const ATOM = "[\\p{L}\\p{N}#$&'*+/=?^_`{|}~-]+";
const LABEL = "[\\p{L}\\p{N}](?:[\\p{L}\\p{N}-]{0,61}[\\p{L}\\p{N}])?";
const ADDRESS = new RegExp(`^${ATOM}(?:\\.${ATOM})*@${LABEL}(?:\\.${LABEL})+$`, "u");

/**
 * A mailbox address a submission relay forwards: dot-atom local part and a domain name with at least one dot.
 * Quoted local parts, source routes, IP literals and `%`/`!` routing tricks are refused on purpose.
 */
export function isForwardableAddress(address: string): boolean {
  return address.length <= 254 && ADDRESS.test(address);
}
