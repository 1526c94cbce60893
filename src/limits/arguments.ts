/** Fails fast when a limit, duration or count is not a whole number above zero, naming it. */
export function requirePositiveInteger(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(`${name} must be a positive whole number, got ${String(value)}`);
  }
}

/** Fails fast on an empty mailbox or take/lease id, naming it. */
export function requireNonEmpty(name: string, value: string): void {
  if (typeof value !== "string" || value.length === 0) {
    throw new TypeError(`${name} must be a non-empty string`);
  }
}
