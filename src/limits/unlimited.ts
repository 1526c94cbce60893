/**
 * A message or recipient budget that is switched off: `unlimited` in the configuration, Infinity in the
 * code (so "free = limit - used" and "limit - 1" need no special case), the word again wherever a limit
 * is printed or sent as JSON (where Infinity would become null), and 0 in the budget's Lua scripts.
 */
export const UNLIMITED = Number.POSITIVE_INFINITY;
export const UNLIMITED_WORD = "unlimited";

/** A limit for people: the number, or `unlimited`. */
export function formatLimit(limit: number): string {
  return limit === UNLIMITED ? UNLIMITED_WORD : String(limit);
}

/** JSON.stringify / YAML stringify replacer: an unlimited budget as the configuration's word, not null. */
export function unlimitedAsWord(_key: string, value: unknown): unknown {
  return value === UNLIMITED ? UNLIMITED_WORD : value;
}
