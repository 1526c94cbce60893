import { describe, expect, it } from "vitest";
import { readFrom, rewriteFrom } from "../../src/inbound/from-policy.js";
import { headerBlockEnd, parseHeaderFields, unfoldedValue } from "../../src/inbound/header-block.js";

const b = (text: string) => Buffer.from(text, "utf8");

describe("header block", () => {
  it("finds the empty line that ends the headers, with CRLF or bare LF, and an empty header block", () => {
    expect(headerBlockEnd(b("A: 1\r\nB: 2\r\n\r\nbody"))).toBe(14);
    expect(headerBlockEnd(b("A: 1\nB: 2\n\nbody"))).toBe(11);
    expect(headerBlockEnd(b("\r\nbody"))).toBe(2);
    expect(headerBlockEnd(b("A: 1\r\nB: 2\r\n"))).toBe(-1);
  });

  it("keeps folded lines with their field and unfolds values", () => {
    const block = b("Subject: a\r\n  long\r\n\tsubject\r\nFrom: x@y.z\r\n\r\n");
    const fields = parseHeaderFields(block);
    expect(fields.map((f) => f.name)).toEqual(["Subject", "From"]);
    expect(unfoldedValue(block, fields[0] as (typeof fields)[number])).toBe("a  long\tsubject");
  });

  it("reads a folded, RFC 2047-encoded From", () => {
    const from = readFrom(b("From:\r\n =?UTF-8?Q?Z=C3=BCrich_Office?=\r\n <Office@Example.COM>\r\n\r\n"));
    expect(from).toMatchObject({ addresses: ["office@example.com"], name: "Zürich Office" });
  });

  it("rewrites From in a bare-LF message with LF, and adds a From when there is none", () => {
    expect(rewriteFrom(b("Subject: s\nFrom: A <a@b.c>\n\n"), "m@x.y").toString()).toBe(
      "Subject: s\nFrom: A <m@x.y>\nReply-To: A <a@b.c>\n\n",
    );
    expect(rewriteFrom(b("Subject: s\r\n\r\n"), "m@x.y").toString()).toBe(
      "Subject: s\r\nFrom: m@x.y\r\n\r\n",
    );
  });

  it("quotes display names with specials and removes a second From field", () => {
    expect(rewriteFrom(b('From: "Doe, John" <j@d.e>\r\nFrom: x@y.z\r\n\r\n'), "m@x.y").toString()).toBe(
      'From: "Doe, John" <m@x.y>\r\nReply-To: "Doe, John" <j@d.e>\r\n\r\n',
    );
  });
});
