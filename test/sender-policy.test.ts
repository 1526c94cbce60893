import { readFileSync } from "node:fs";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, inject, it } from "vitest";
import { createTestPki } from "./support/certs.js";
import { type FakeUpstream, startFakeUpstream } from "./support/fake-upstream.js";
import { startTestRelay, type TestRelay, tempFile } from "./support/relay.js";
import { submit } from "./support/smtp-client.js";

const MAILBOX = "scanner@contoso.com";
const redisUrl = inject("redisUrl");
const KEEP = "127.0.0.2";
const REWRITE = "127.0.0.3";
const REJECT = "127.0.0.4";

function fixture(name: string): Buffer {
  return readFileSync(new URL(`./fixtures/messages/${name}.eml`, import.meta.url));
}

/**
 * Each real-world fixture, the exact bytes of its From field, and what `from: rewrite` must put there
 * instead (From with the original display name, then Reply-To with the original value unless the
 * message has one). Written by hand, not computed by the code under test.
 */
const FIXTURES = [
  {
    name: "printer-scan",
    from: "From: scanner-floor2@printers.local\r\n",
    rewritten: `From: ${MAILBOX}\r\nReply-To: scanner-floor2@printers.local\r\n`,
  },
  {
    name: "outlook",
    from: "From: =?iso-8859-1?Q?M=FCller=2C_J=FCrgen?= <juergen.mueller@contoso.com>\r\n",
    rewritten:
      `From: =?UTF-8?Q?M=C3=BCller=2C_J=C3=BCrgen?= <${MAILBOX}>\r\n` +
      "Reply-To: =?iso-8859-1?Q?M=FCller=2C_J=FCrgen?= <juergen.mueller@contoso.com>\r\n",
  },
  {
    name: "multipart-attachment",
    from: "From: =?UTF-8?B?QnVjaGhhbHR1bmcgKEVSUCk=?=\r\n <billing@erp.example>\r\n",
    // the message has a Reply-To already: it stays, none is added
    rewritten: `From: "Buchhaltung (ERP)" <${MAILBOX}>\r\n`,
  },
  {
    name: "smtputf8",
    from: "From: Jörg Weiß <jörg@bücher.example>\r\n",
    rewritten: `From: "Jörg Weiß" <${MAILBOX}>\r\nReply-To: Jörg Weiß <jörg@bücher.example>\r\n`,
  },
];

let upstream: FakeUpstream;
let caFile: string;
let relay: TestRelay;

/** The message as the upstream got it, without the one Received header the relay prepends. */
function withoutTrace(raw: Buffer): Buffer {
  const match = /^Received:[^\n]*\n(?:[ \t][^\n]*\n)*/.exec(raw.toString("latin1"));
  expect(match, "a Received header first").not.toBeNull();
  return raw.subarray(match?.[0].length ?? 0);
}

/** The ERP invoice sent from an alias of the mailbox. */
function fromAlias(): Buffer {
  const text = fixture("multipart-attachment").toString("latin1");
  return Buffer.from(text.replace("\r\n <billing@erp.example>", "\r\n <invoices@contoso.com>"), "latin1");
}

function send(from: string, raw: Buffer) {
  return submit({
    port: relay.port,
    localAddress: from,
    startTls: false,
    from: "device@example.com",
    to: ["someone@example.org"],
    raw,
  });
}

beforeAll(async () => {
  const pki = await createTestPki();
  upstream = await startFakeUpstream({ tls: await pki.issue(["127.0.0.1"]), users: { [MAILBOX]: "pw" } });
  caFile = tempFile("ca.pem", pki.ca);
  relay = await startTestRelay({
    redis: redisUrl,
    upstream: { host: "127.0.0.1", port: upstream.port, ca: caFile },
    mailboxes: { [MAILBOX]: { password: "pw", aliases: ["invoices@contoso.com"] } },
    clients: [
      { name: "keeps", networks: [`${KEEP}/32`], from: "keep" },
      { name: "rewrites", networks: [`${REWRITE}/32`], from: "rewrite" },
      { name: "rejects", networks: [`${REJECT}/32`] },
    ],
  });
});

afterAll(async () => {
  await relay?.stop();
  await upstream?.stop();
});

beforeEach(() => upstream.reset());
afterEach(() => upstream.reset());

describe("from: keep", () => {
  it.each(FIXTURES)("delivers $name byte for byte, sent as the mailbox", async ({ name }) => {
    const raw = fixture(name);
    expect((await send(KEEP, raw)).code).toBe(250);
    const [message] = await upstream.waitForMessages(1);
    expect(message?.mailFrom).toBe(MAILBOX);
    expect(withoutTrace(message?.raw ?? Buffer.alloc(0)).equals(raw)).toBe(true);
  });
});

describe("from: rewrite", () => {
  it.each(FIXTURES)(
    "rewrites From in $name to the mailbox with the display name, and nothing else",
    async ({ name, from, rewritten }) => {
      const raw = fixture(name);
      expect(raw.indexOf(Buffer.from(from))).toBeGreaterThanOrEqual(0);
      const expected = Buffer.from(raw.toString("utf8").replace(from, rewritten), "utf8");
      expect((await send(REWRITE, raw)).code).toBe(250);
      const [message] = await upstream.waitForMessages(1);
      expect(message?.mailFrom).toBe(MAILBOX);
      const got = withoutTrace(message?.raw ?? Buffer.alloc(0));
      expect(got.toString("utf8")).toBe(expected.toString("utf8"));
      expect(got.equals(expected)).toBe(true);
    },
  );

  it("leaves a From that already is the mailbox or an alias alone", async () => {
    const raw = fromAlias();
    expect((await send(REWRITE, raw)).code).toBe(250);
    const [message] = await upstream.waitForMessages(1);
    expect(withoutTrace(message?.raw ?? Buffer.alloc(0)).equals(raw)).toBe(true);
  });

  it("rewrites a header block larger than a network chunk and keeps a 3 MB body byte for byte", async () => {
    const filler = Array.from({ length: 2_000 }, (_, i) => `X-Trace-${i}: ${"t".repeat(90)}\r\n`).join("");
    const body = Buffer.from("0123456789abcdef\r\n".repeat(175_000));
    const raw = Buffer.concat([
      Buffer.from(`${filler}From: "Scan Station" <scan@printers.local>\r\nSubject: big\r\n\r\n`),
      body,
    ]);
    expect((await send(REWRITE, raw)).code).toBe(250);
    const [message] = await upstream.waitForMessages(1);
    const expected = Buffer.from(
      raw
        .toString("latin1")
        .replace(
          'From: "Scan Station" <scan@printers.local>\r\n',
          `From: Scan Station <${MAILBOX}>\r\nReply-To: "Scan Station" <scan@printers.local>\r\n`,
        ),
      "latin1",
    );
    const got = withoutTrace(message?.raw ?? Buffer.alloc(0));
    expect(got.length).toBe(expected.length);
    expect(got.subarray(0, 300_000).toString("latin1")).toBe(
      expected.subarray(0, 300_000).toString("latin1"),
    );
    expect(got.equals(expected)).toBe(true);
  });
});

describe("from: reject (the default)", () => {
  it.each(FIXTURES)(
    "refuses $name at end of DATA with 550 5.7.1 saying what to configure",
    async ({ name }) => {
      const result = await send(REJECT, fixture(name));
      expect(result.code).toBe(550);
      expect(result.stage).toBe("DATA");
      expect(result.response).toMatch(/^550 5\.7\.1 From .* is not scanner@contoso\.com or an alias/);
      expect(result.response).toContain(`add it to mailboxes.${MAILBOX}.aliases`);
      expect(result.response).toContain("from: rewrite");
    },
  );

  it("accepts a From that is an alias of the mailbox, byte for byte", async () => {
    const raw = fromAlias();
    expect((await send(REJECT, raw)).code).toBe(250);
    const [message] = await upstream.waitForMessages(1);
    expect(withoutTrace(message?.raw ?? Buffer.alloc(0)).equals(raw)).toBe(true);
  });

  it("refuses a message without a From header, and one whose header block exceeds 256 KB", async () => {
    const noFrom = await send(REJECT, Buffer.from("Subject: no from\r\n\r\nbody\r\n"));
    expect(noFrom.response).toMatch(/^550 5\.7\.1 From \(no From header\)/);
    const huge = Buffer.from(`X-Long: ${"x".repeat(300 * 1024)}\r\nFrom: ${MAILBOX}\r\n\r\nbody\r\n`);
    const tooBig = await send(REJECT, huge);
    expect(tooBig.code).toBe(552);
    expect(tooBig.response).toContain("256 KB");
    expect(upstream.messages).toHaveLength(0);
  });
});
