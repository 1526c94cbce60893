import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { parseDocument } from "yaml";
import type { z } from "zod";
import { shadowedClients } from "../inbound/client-matching.js";
import { type Config, configSchema } from "./schema.js";

/** A configuration that cannot be used; `problems` are `path: what is wrong` lines. */
export class ConfigError extends Error {
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(`invalid configuration (${source}):\n${problems.map((p) => `  ${p}`).join("\n")}`);
    this.name = "ConfigError";
  }
}

export interface LoadedConfig {
  config: Readonly<Config>;
  /** The file read, or "built-in defaults". */
  source: string;
  /** Things that work but are probably not what the operator meant. */
  warnings: string[];
}

export const DEFAULTS_SOURCE = "built-in defaults";
const LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"];

/** `--config`, else `SLUICE_CONFIG`, else `./sluice.yaml` if it exists; undefined means built-in defaults. */
export function findConfigFile(explicit: string | undefined, env: NodeJS.ProcessEnv, cwd = process.cwd()) {
  if (explicit) return resolve(cwd, explicit);
  if (env.SLUICE_CONFIG) return resolve(cwd, env.SLUICE_CONFIG);
  const local = resolve(cwd, "sluice.yaml");
  return existsSync(local) ? local : undefined;
}

/** Formats a config path the way operators write it: `mailboxes."a@b".password`, `clients[0].mailbox`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const segment of path) {
    if (typeof segment === "number") out += `[${segment}]`;
    else {
      const name = String(segment);
      const plain = /^[A-Za-z_][A-Za-z0-9_]*$/.test(name);
      out += `${out ? "." : ""}${plain ? name : JSON.stringify(name)}`;
    }
  }
  return out || "(top level)";
}

/** Replaces `${NAME}` in every string of the tree with the environment variable NAME. */
export function interpolateEnv(
  value: unknown,
  env: NodeJS.ProcessEnv,
  problems: string[],
  path: PropertyKey[] = [],
): unknown {
  if (typeof value === "string") {
    return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_match, name: string) => {
      const found = env[name];
      if (found === undefined) {
        problems.push(`${formatPath(path)}: environment variable ${name} is not set`);
        return "";
      }
      return found;
    });
  }
  if (Array.isArray(value)) return value.map((item, i) => interpolateEnv(item, env, problems, [...path, i]));
  if (value && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).map(([key, item]) => [key, interpolateEnv(item, env, problems, [...path, key])]),
    );
  }
  return value;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.code === "invalid_type" && issue.input === undefined) return "required";
  if (issue.code === "unrecognized_keys")
    return `unknown key${issue.keys.length > 1 ? "s" : ""} ${issue.keys.join(", ")}`;
  return issue.message;
}

/** The configuration used when there is no file: loopback may submit, mailbox from SLUICE_MAILBOX/SLUICE_PASSWORD. */
export function defaultRawConfig(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const mailbox = env.SLUICE_MAILBOX;
  return {
    mailboxes: mailbox ? { [mailbox]: { password: env.SLUICE_PASSWORD ?? "" } } : {},
    // zero configuration sends as the one mailbox: From is rewritten to it rather than refused
    clients: [{ name: "loopback", networks: LOOPBACK_NETWORKS, from: "rewrite" }],
  };
}

/** Validates a raw (already parsed) configuration object. Throws ConfigError listing every problem. */
export function parseConfig(raw: unknown, env: NodeJS.ProcessEnv, source: string): LoadedConfig {
  const problems: string[] = [];
  const interpolated = interpolateEnv(raw ?? {}, env, problems);
  const result = configSchema.safeParse(interpolated, { reportInput: true });
  if (!result.success) {
    for (const issue of result.error.issues)
      problems.push(`${formatPath(issue.path)}: ${describeIssue(issue)}`);
  }
  if (problems.length || !result.success) throw new ConfigError(source, problems);
  return { config: deepFreeze(result.data), source, warnings: warningsFor(result.data) };
}

/** Reads and validates the configuration from the file found by findConfigFile, or the built-in defaults. */
export function loadConfig(
  options: { file?: string; env?: NodeJS.ProcessEnv; cwd?: string } = {},
): LoadedConfig {
  const env = options.env ?? process.env;
  const file = findConfigFile(options.file, env, options.cwd);
  if (!file) return parseConfig(defaultRawConfig(env), env, DEFAULTS_SOURCE);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as Error).message}`]);
  }
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length)
    throw new ConfigError(
      file,
      doc.errors.map((e) => `YAML: ${e.message}`),
    );
  return parseConfig(doc.toJS(), env, file);
}

function warningsFor(config: Config): string[] {
  const warnings: string[] = [];
  if (Object.keys(config.mailboxes).length === 0) {
    warnings.push(
      "no mailbox configured: mail is accepted and held in the queue until one is (set SLUICE_MAILBOX and SLUICE_PASSWORD, or add mailboxes: to the config) and the relay is restarted",
    );
  }
  if (config.clients.length === 0) warnings.push("no clients configured: nobody may submit mail");
  for (const listener of config.listen) {
    if (listener.tls === "implicit" && !config.tls) {
      warnings.push(
        `listener ${listener.host}:${listener.port} uses implicit TLS with a generated self-signed certificate: set tls.cert and tls.key for one clients can verify`,
      );
    }
  }
  warnings.push(...shadowedClients(config.clients));
  return warnings;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === "object") {
    for (const item of Object.values(value)) deepFreeze(item);
    Object.freeze(value);
  }
  return value;
}
