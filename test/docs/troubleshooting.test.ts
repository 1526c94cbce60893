import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { REPLY_TABLE } from "../../src/outbound/classify-reply.js";

describe("docs/troubleshooting.md", () => {
  it("explains every category of the reply table, and the fallback category", () => {
    const text = readFileSync(join(import.meta.dirname, "../../docs/troubleshooting.md"), "utf8");
    const categories = [...new Set([...REPLY_TABLE.map((rule) => rule.category), "unknown"])];
    const explained = (category: string) => new RegExp(`\\|\\s*\`${category}\`\\s*\\|`).test(text);
    expect(categories.filter((category) => !explained(category))).toEqual([]);
  });
});
