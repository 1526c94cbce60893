import { stringify } from "yaml";
import { unlimitedAsWord } from "../limits/unlimited.js";
import type { Config } from "./schema.js";

const SECRET_KEYS = new Set([
  "password",
  "pass",
  "sentinelPassword",
  "clientSecret",
  "client_secret",
  "client_assertion",
  "privateKey",
  "token",
  "accessToken",
  "access_token",
]);
export const MASK = "********";

/** A copy of the configuration with every secret replaced by a mask, for printing and logging. */
export function maskSecrets(value: unknown, key?: string): unknown {
  if (key && SECRET_KEYS.has(key) && value !== undefined) return MASK;
  if (typeof value === "string" && /^rediss?:\/\//.test(value)) return maskUrlPassword(value);
  if (Array.isArray(value)) return value.map((item) => maskSecrets(item));
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, maskSecrets(v, k)]));
  }
  return value;
}

function maskUrlPassword(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = MASK;
    return parsed.toString();
  } catch {
    return url;
  }
}

/** The effective configuration as YAML, secrets masked. */
export function describeConfig(config: Config): string {
  return stringify(maskSecrets(config), unlimitedAsWord);
}
