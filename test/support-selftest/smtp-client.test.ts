import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FakeUpstream, startFakeUpstream } from "../support/fake-upstream.js";
import { findFreePort } from "../support/free-port.js";
import { buildMessage, openRawSmtp, smtpDialogue, submit } from "../support/smtp-client.js";

const MAILBOX = "app@contoso.com";

describe("buildMessage", () => {
  it("builds an RFC 5322 text message with CRLF line endings and no line over 78 characters", () => {
    const raw = buildMessage({
      from: MAILBOX,
      to: ["a@example.com", "b@example.com"],
      bodyBytes: 2000,
    }).toString();
    expect(raw).toMatch(/^From: app@contoso\.com\r\nTo: a@example\.com, b@example\.com\r\n/);
    expect(raw).toMatch(/\r\nMessage-ID: <[^>]+@sluice\.test>\r\n/);
    expect(raw).toMatch(/\r\nDate: \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n/);
    expect(raw.replace(/\r\n/g, "")).not.toMatch(/[\r\n]/);
    expect(raw.endsWith("\r\n")).toBe(true);
    expect(Math.max(...raw.split("\r\n").map((line) => line.length))).toBeLessThanOrEqual(78);
    const body = raw.slice(raw.indexOf("\r\n\r\n") + 4);
    expect(body.length).toBeGreaterThan(1900);
    expect(body.length).toBeLessThan(2100);
  });

  it("adds a base64 PDF attachment of about the asked size in multipart/mixed, the same for the same seed", () => {
    const options = {
      from: MAILBOX,
      to: ["a@example.com"],
      attachmentBytes: 100_000,
      messageId: "<fixed@x>",
    };
    const raw = buildMessage(options).toString();
    expect(raw).toMatch(/Content-Type: multipart\/mixed; boundary="([^"]+)"/);
    const boundary = /boundary="([^"]+)"/.exec(raw)?.[1] ?? "";
    const parts = raw.split(`--${boundary}`);
    expect(parts).toHaveLength(4); // preamble, text, attachment, closing "--"
    const attachment = parts[2] ?? "";
    expect(attachment).toMatch(/Content-Type: application\/pdf/);
    const base64Lines = attachment
      .slice(attachment.indexOf("\r\n\r\n") + 4)
      .trim()
      .split("\r\n");
    expect(base64Lines.slice(0, -1).every((line) => line.length === 76)).toBe(true);
    const pdf = Buffer.from(base64Lines.join(""), "base64");
    expect(pdf.length).toBe(100_000);
    expect(pdf.subarray(0, 8).toString()).toBe("%PDF-1.4");
    expect(pdf.subarray(-7).toString()).toBe("\n%%EOF\n");
    const again = buildMessage(options).toString();
    expect(again.replace(/Date: .*\r\n/, "")).toBe(raw.replace(/Date: .*\r\n/, ""));
  });
});

describe("SMTP client helpers", () => {
  let upstream: FakeUpstream;
  beforeAll(async () => {
    upstream = await startFakeUpstream({ users: { [MAILBOX]: "pw" } });
  });
  afterAll(async () => {
    await upstream.stop();
  });

  it("smtpDialogue returns the greeting and every (multi-line) reply in order", async () => {
    const [greeting, ehlo, noop, bogus] = await smtpDialogue(
      { port: upstream.port },
      "EHLO me.example",
      "NOOP",
      "FOO",
    );
    expect(greeting?.code).toBe(220);
    expect(greeting?.text).toMatch(/ESMTP/);
    expect(ehlo?.code).toBe(250);
    expect(ehlo?.lines.length).toBeGreaterThan(3);
    expect(ehlo?.lines).toContain("PIPELINING");
    expect(noop?.code).toBe(250);
    expect(bogus?.code).toBe(500);
  });

  it("the raw client sends bytes as they are, e.g. a bare LF or pipelined commands", async () => {
    const raw = await openRawSmtp({ port: upstream.port });
    try {
      await raw.greeting();
      raw.write("EHLO a.example\r\nNOOP\r\nNOOP\n");
      expect((await raw.read()).code).toBe(250);
      expect((await raw.read()).code).toBe(250);
      expect((await raw.read()).code).toBe(250);
      const quit = await raw.command("QUIT");
      expect(quit.code).toBe(221);
      await raw.closed;
      await expect(raw.read()).rejects.toThrow(/closed/);
    } finally {
      await raw.close();
    }
  });

  it("submit() returns code, reply and stage when the server rejects, instead of throwing", async () => {
    const result = await submit({
      port: upstream.port,
      auth: { user: MAILBOX, pass: "wrong" },
      from: MAILBOX,
      to: ["a@example.com"],
      raw: buildMessage({ from: MAILBOX, to: ["a@example.com"] }),
    });
    expect(result).toEqual({
      ok: false,
      code: 535,
      response: "535 5.7.3 Authentication unsuccessful",
      stage: "AUTH PLAIN",
      errorCode: "EAUTH",
    });
  });

  it("submit() reports a refused connection as stage CONN without a code", async () => {
    const port = await findFreePort();
    const result = await submit({
      port,
      from: MAILBOX,
      to: ["a@example.com"],
      raw: "Subject: x\r\n\r\nx\r\n",
    });
    expect(result.ok).toBe(false);
    expect(result.code).toBeUndefined();
    expect(result.stage).toBe("CONN");
    expect(result.response).toMatch(/ECONNREFUSED/);
  });

  it("submit() without AUTH gets 530 5.7.57 at MAIL FROM", async () => {
    const result = await submit({
      port: upstream.port,
      from: MAILBOX,
      to: ["a@example.com"],
      raw: "Subject: x\r\n\r\nx\r\n",
    });
    expect(result).toMatchObject({ ok: false, code: 530, stage: "MAIL FROM" });
    expect(result.response).toBe("530 5.7.57 Client not authenticated to send mail");
  });
});
