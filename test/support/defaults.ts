/**
 * Drops the keys whose value is undefined, so `{ ...defaults, ...withoutUndefined(options) }` keeps a
 * default when a caller passes `{ option: undefined }` explicitly.
 */
export function withoutUndefined<T extends object>(options: T): T {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)) as T;
}
