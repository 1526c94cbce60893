import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { configurationReference, configurationReferenceRows } from "../../src/config/reference.js";

describe("docs/configuration-reference.md", () => {
  it("is what `npm run docs:config` generates from the schema now (run it after changing schema.ts)", () => {
    const committed = readFileSync(
      join(import.meta.dirname, "../../docs/configuration-reference.md"),
      "utf8",
    );
    expect(committed).toBe(configurationReference());
  });

  it("describes every key, with its type and default", () => {
    const rows = configurationReferenceRows();
    expect(rows.filter((r) => !r.description).map((r) => r.key)).toEqual([]);
    expect(rows.find((r) => r.key === "`admin.listen`")).toMatchObject({
      type: "string",
      default: "`127.0.0.1:8025`",
    });
    expect(rows.find((r) => r.key === "`maxMessageSize`")?.default).toBe("`36700160`");
    // a mailbox needs password or oauth2: neither is required alone, and the description says so
    expect(rows.find((r) => r.key === '`mailboxes."<address>".password`')?.description).toMatch(/oauth2/);
    expect(rows.find((r) => r.key === '`mailboxes."<address>".oauth2.tenant`')?.default).toBe("required");
    expect(rows.find((r) => r.key === '`mailboxes."<address>".limits.connections`')?.default).toBe(
      "`defaults.limits.connections`",
    );
  });
});
