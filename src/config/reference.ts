import { z } from "zod";
import { configObjectSchema } from "./schema.js";

/** One documented configuration key. */
export interface ReferenceRow {
  key: string;
  type: string;
  default: string;
  description: string;
}

type JsonSchema = {
  type?: string | string[];
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  anyOf?: JsonSchema[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  additionalProperties?: JsonSchema | boolean;
  propertyNames?: JsonSchema;
  format?: string;
  pattern?: string;
};

function typeOf(schema: JsonSchema): string {
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" \\| ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.anyOf) return schema.anyOf.map(typeOf).join(" \\| ");
  if (schema.type === "array") return `list of ${schema.items ? typeOf(schema.items) : "any"}`;
  if (
    schema.type === "object" &&
    schema.additionalProperties &&
    typeof schema.additionalProperties === "object"
  ) {
    return "map";
  }
  if (schema.format === "uri") return "URL";
  return Array.isArray(schema.type) ? schema.type.join(" \\| ") : (schema.type ?? "any");
}

function formatDefault(value: unknown, required: boolean): string {
  if (value === undefined) return required ? "required" : "none";
  if (typeof value === "object") return `\`${JSON.stringify(value)}\``;
  return `\`${String(value)}\``;
}

function walk(
  input: JsonSchema,
  output: JsonSchema | undefined,
  key: string,
  required: boolean,
  rows: ReferenceRow[],
) {
  const def = input.default ?? output?.default;
  // a mailbox's limits are overrides: missing ones come from defaults.limits, not from the schema's defaults
  const override = /^mailboxes\."<address>"\.limits\.(\w+)$/.exec(key)?.[1];
  if (key) {
    rows.push({
      key: `\`${key}\``,
      type: typeOf(input),
      default: override ? `\`defaults.limits.${override}\`` : formatDefault(def, required),
      description: (input.description ?? "").replace(/\|/g, "\\|"),
    });
  }
  if (input.properties) {
    for (const [name, child] of Object.entries(input.properties)) {
      walk(
        child,
        output?.properties?.[name],
        key ? `${key}.${name}` : name,
        input.required?.includes(name) ?? false,
        rows,
      );
    }
  } else if (input.type === "array" && input.items?.properties) {
    for (const [name, child] of Object.entries(input.items.properties)) {
      walk(
        child,
        output?.items?.properties?.[name],
        `${key}[].${name}`,
        input.items.required?.includes(name) ?? false,
        rows,
      );
    }
  } else if (input.additionalProperties && typeof input.additionalProperties === "object") {
    const value = input.additionalProperties;
    const outputValue =
      typeof output?.additionalProperties === "object" ? output.additionalProperties : undefined;
    for (const [name, child] of Object.entries(value.properties ?? {})) {
      walk(
        child,
        outputValue?.properties?.[name],
        `${key}."<address>".${name}`,
        value.required?.includes(name) ?? false,
        rows,
      );
    }
  }
}

/** Every configuration key with its type, default and description, read from the zod schema. */
export function configurationReferenceRows(): ReferenceRow[] {
  const options = { unrepresentable: "any", target: "draft-2020-12" } as const;
  const input = z.toJSONSchema(configObjectSchema, { ...options, io: "input" }) as JsonSchema;
  const output = z.toJSONSchema(configObjectSchema, { ...options, io: "output" }) as JsonSchema;
  const rows: ReferenceRow[] = [];
  walk(input, output, "", false, rows);
  return rows;
}

/** docs/configuration-reference.md, generated: `npm run docs:config` writes it, a test keeps it current. */
export function configurationReference(): string {
  const rows = configurationReferenceRows();
  const cell = (text: string) => text.replace(/\n/g, " ");
  return [
    "# Configuration reference",
    "",
    "<!-- Generated from src/config/schema.ts by `npm run docs:config`; do not edit by hand. -->",
    "",
    "Every key of the configuration file, from the schema the relay validates it with. `${NAME}` in any",
    "value is replaced by the environment variable NAME. See docs/configuration.md for the choices behind them.",
    "",
    ...markdownTable(
      ["key", "type", "default", "description"],
      rows.map((r) => [r.key, r.type, r.default, r.description].map(cell)),
    ),
    "",
  ].join("\n");
}

/** A table with padded columns, the way the formatter (biome) writes them. */
function markdownTable(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(3, h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)];
}
