import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ConfigError, parseConfig } from "../src/config/load.js";
import { MAILBOX, useOperationsFixture } from "./support/admin-fixture.js";
import { waitFor } from "./support/relay.js";

const redisUrl = inject("redisUrl");
const fx = useOperationsFixture(redisUrl);
const NOT_FOUND = {
  code: 550,
  message: "5.1.1 RESOLVER.ADR.RecipNotFound; Recipient not found by SMTP address lookup",
};

const printers = (extra: Record<string, unknown>) => ({
  clients: [{ name: "floor2-printers", networks: ["127.0.0.2/32"], from: "keep", ...extra }],
});

describe("onFailure configuration", () => {
  it("defaults to none and needs webhookUrl for webhook", () => {
    const parse = (client: Record<string, unknown>) =>
      parseConfig({ clients: [{ name: "a", networks: ["10.0.0.0/8"], ...client }] }, {}, "test");
    expect(parse({}).config.clients[0]?.onFailure).toBe("none");
    expect(() => parse({ onFailure: "webhook" })).toThrow(ConfigError);
    expect(() => parse({ onFailure: "webhook" })).toThrow(
      /clients\[0\]\.webhookUrl: required when onFailure is webhook/,
    );
    expect(() => parse({ onFailure: "webhook", webhookUrl: "ftp://x" })).toThrow(/webhookUrl/);
    expect(
      parse({ onFailure: "webhook", webhookUrl: "http://127.0.0.1:9/hook" }).config.clients[0]?.webhookUrl,
    ).toBe("http://127.0.0.1:9/hook");
  });
});

describe("onFailure: bounce", () => {
  it("sends an RFC 3464 delivery status notification to the envelope sender through the mailbox", async () => {
    const r = await fx.relay(printers({ onFailure: "bounce" }));
    fx.upstream.script({ reply: NOT_FOUND });
    const id = await fx.send(r, "nobody@example.com", "alice@floor2.example");
    const [dsn] = await fx.upstream.waitForMessages(1);
    expect(dsn?.user).toBe(MAILBOX);
    expect(dsn?.mailFrom).toBe(MAILBOX);
    expect(dsn?.rcptTo).toEqual(["alice@floor2.example"]);
    const text = dsn?.raw.toString("utf8") ?? "";
    expect(text).toMatch(
      /^Content-Type: multipart\/report; report-type=delivery-status; boundary="[^"]+"\r$/m,
    );
    expect(text).toMatch(/^To: <alice@floor2\.example>\r$/m);
    expect(text).toMatch(/^Auto-Submitted: auto-replied\r$/m);
    expect(text).toMatch(/^Content-Type: message\/delivery-status\r$/m);
    expect(text).toMatch(/^Reporting-MTA: dns; \S+\r$/m);
    expect(text).toMatch(/^Final-Recipient: rfc822; nobody@example\.com\r$/m);
    expect(text).toMatch(/^Action: failed\r$/m);
    expect(text).toMatch(/^Status: 5\.1\.1\r$/m);
    expect(text).toMatch(/^Diagnostic-Code: smtp; 550 5\.1\.1 RESOLVER\.ADR\.RecipNotFound/m);
    expect(text).toMatch(/^Content-Type: text\/rfc822-headers\r$/m);
    expect(text).toMatch(/^Subject: for nobody@example\.com\r$/m);
    expect(text).toContain(id);
    await new Promise((res) => setTimeout(res, 500));
    expect(fx.upstream.messages).toHaveLength(1);
  });

  it("never bounces a message with a null envelope sender", async () => {
    const r = await fx.relay(printers({ onFailure: "bounce" }));
    fx.upstream.script({ reply: NOT_FOUND });
    const id = await fx.send(r, "nobody@example.com", "");
    await waitFor(
      () => r.logs.some((l) => /null envelope sender/.test(l.msg) && l.id === id),
      20_000,
      "no bounce",
    );
    expect(r.logs.some((l) => l.bounceOf === id)).toBe(false);
    expect(fx.upstream.messages).toHaveLength(0);
  });

  it("sends nothing for a client with the default onFailure: none", async () => {
    const r = await fx.relay({});
    fx.upstream.script({ reply: NOT_FOUND });
    const id = await fx.send(r, "nobody@example.com", "alice@floor2.example");
    await waitFor(async () => (await r.spool.queue(MAILBOX).getJobState(id)) === "failed", 20_000, "failed");
    await new Promise((res) => setTimeout(res, 500));
    expect(fx.upstream.messages).toHaveLength(0);
    expect(r.logs.some((l) => l.bounceOf === id)).toBe(false);
  });
});

describe("onFailure: webhook", () => {
  let server: Server;
  const received: { body: Record<string, unknown>; contentType?: string }[] = [];
  let answers: number[] = [];

  beforeAll(async () => {
    server = createServer((req: IncomingMessage, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const status = answers.shift() ?? 200;
        if (status === 200) {
          received.push({
            body: JSON.parse(Buffer.concat(chunks).toString("utf8")),
            contentType: req.headers["content-type"],
          });
        }
        res.writeHead(status).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it("POSTs a JSON description of the failed message, retrying with backoff while the hook answers 500", async () => {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/sluice-failed`;
    answers = [500, 503];
    const r = await fx.relay(printers({ onFailure: "webhook", webhookUrl: url }));
    fx.upstream.script({ reply: NOT_FOUND });
    const id = await fx.send(r, "nobody@example.com", "alice@floor2.example");
    await waitFor(() => received.length === 1, 30_000, "webhook delivered");
    expect(answers).toEqual([]);
    expect(received[0]?.contentType).toBe("application/json");
    expect(received[0]?.body).toMatchObject({
      event: "message.failed",
      id,
      client: "floor2-printers",
      mailbox: MAILBOX,
      mailFrom: "alice@floor2.example",
      delivered: [],
      failed: [{ recipient: "nobody@example.com", reply: expect.stringMatching(/^550 5\.1\.1 RESOLVER/) }],
    });
    expect(r.logs.filter((l) => l.event === "webhook-failed")).toHaveLength(2);
    expect(fx.upstream.messages).toHaveLength(0);
  });
});
