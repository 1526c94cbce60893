/**
 * Key names of the cluster-wide limits, one place. The mailbox sits in a `{hash tag}` so that all keys of
 * one mailbox land in the same Redis Cluster slot, as a Lua script touching several of them requires.
 */
export function limitKeys(prefix: string, mailbox: string) {
  const base = `${prefix}:limits:{${mailbox}}`;
  return {
    /** ZSET lease id -> expiry (ms, Redis clock). */
    leases: `${base}:leases`,
    /** HASH `level`, `changedAt`: the effective connection limit after a 432, and when it last changed. */
    concurrency: `${base}:concurrency`,
    /**
     * ZSET take id -> time of the take (ms, Redis clock), one entry per message (batch) taken in the last day:
     * those of the last minute are the message window, all of them the recipient window. (Until 2026-11-26 the
     * message window had a ZSET of its own, `:messages`, with the same entries; it expires a minute after its
     * last write.)
     */
    takes: `${base}:recipients`,
    /** HASH take id -> recipients of that take. */
    recipientCosts: `${base}:recipients:cost`,
    /** STRING: sum of recipientCosts over the entries still in `takes`. */
    recipientTotal: `${base}:recipients:total`,
  };
}
