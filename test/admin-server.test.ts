import { describe, expect, inject, it } from "vitest";
import { ConfigError, parseConfig } from "../src/config/load.js";
import { adminUrl, MAILBOX, metric, useOperationsFixture } from "./support/admin-fixture.js";
import { startPrivateRedis } from "./support/redis-server.js";
import { startTestRelay, waitFor } from "./support/relay.js";
import { openRawSmtp } from "./support/smtp-client.js";

const redisUrl = inject("redisUrl");
const TOKEN = "0123456789abcdef0123456789abcdef";
const fx = useOperationsFixture(redisUrl);

const local = { admin: { listen: "127.0.0.1:0" } };

async function api(base: string, method: string, path: string, body?: unknown, token?: string) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: {
      "content-type": "application/json",
      connection: "close",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, text, json: () => JSON.parse(text) };
}

describe("admin configuration", () => {
  const parse = (admin: unknown) => parseConfig({ admin }, {}, "test");

  it("is off when absent and listens on 127.0.0.1:8025 by default when present", () => {
    expect(parseConfig({}, {}, "test").config.admin).toBeUndefined();
    expect(parse({}).config.admin).toEqual({ listen: "127.0.0.1:8025" });
  });

  it("refuses a non-loopback address without a token, naming the key and what to do", () => {
    expect(() => parse({ listen: "0.0.0.0:8025" })).toThrow(ConfigError);
    expect(() => parse({ listen: "0.0.0.0:8025" })).toThrow(
      /admin\.token: required when admin\.listen is not a loopback/,
    );
    expect(() => parse({ listen: "[::]:8025" })).toThrow(/admin\.token/);
    expect(parse({ listen: "0.0.0.0:8025", token: TOKEN }).config.admin?.token).toBe(TOKEN);
    expect(parse({ listen: "[::1]:8025" }).config.admin?.listen).toBe("[::1]:8025");
  });

  it("refuses a listen value that is not host:port and a short token", () => {
    expect(() => parse({ listen: "8025" })).toThrow(/admin\.listen: not host:port/);
    expect(() => parse({ listen: "127.0.0.1:8025", token: "short" })).toThrow(
      /admin\.token: use at least 16/,
    );
  });
});

describe("health endpoints", () => {
  it("answers /healthz and /readyz with 200 while Redis and the listeners are up", async () => {
    const r = await fx.relay(local);
    const base = adminUrl(r);
    expect((await api(base, "GET", "/healthz")).status).toBe(200);
    const ready = await api(base, "GET", "/readyz");
    expect(ready.status).toBe(200);
    expect(ready.json()).toEqual({ ready: true, redis: true, listeners: true });
  });

  it("answers /readyz with 503 while Redis is unreachable, and 200 again once it is back", async () => {
    const redis = await startPrivateRedis({ appendOnly: false });
    try {
      const r = await fx.relay({ ...local, redis: redis.url });
      const base = adminUrl(r);
      await redis.stop();
      const down = await api(base, "GET", "/readyz");
      expect(down.status).toBe(503);
      expect(down.json()).toMatchObject({ ready: false, redis: false, listeners: true });
      expect((await api(base, "GET", "/healthz")).status).toBe(200);
      expect(metric((await api(base, "GET", "/metrics")).text, "sluice_redis_up")).toBe(0);
      await redis.start();
      await waitFor(async () => (await api(base, "GET", "/readyz")).status === 200, 20_000, "ready again");
    } finally {
      await Promise.all(fx.relays.splice(0).map((r) => r.stop()));
      await redis.destroy();
    }
  });
});

describe("the admin token", () => {
  it("is required for metrics and the API, compared exactly, while health checks stay open", async () => {
    const r = await fx.relay({ admin: { listen: "127.0.0.1:0", token: TOKEN } });
    const base = adminUrl(r);
    expect((await api(base, "GET", "/metrics")).status).toBe(401);
    expect((await api(base, "GET", "/api/status")).status).toBe(401);
    expect((await api(base, "GET", "/api/status", undefined, `${TOKEN}x`)).status).toBe(401);
    expect((await api(base, "GET", "/api/status", undefined, TOKEN.slice(1))).status).toBe(401);
    expect((await api(base, "GET", "/metrics", undefined, TOKEN)).status).toBe(200);
    expect((await api(base, "GET", "/api/status", undefined, TOKEN)).status).toBe(200);
    expect((await api(base, "GET", "/healthz")).status).toBe(200);
    expect((await api(base, "GET", "/readyz")).status).toBe(200);
  });
});

describe("GET /metrics", () => {
  it("counts sessions, accepted and refused mail per listener, deliveries, retries and queue state per mailbox", async () => {
    const r = await fx.relay(local);
    const base = adminUrl(r);
    const listener = `127.0.0.1:${r.port}`;
    fx.upstream.script({
      reply: { code: 451, message: "4.7.0 Temporary server error. Please try again later." },
    });
    await fx.send(r, "one@example.com");
    await fx.upstream.waitForMessages(1);
    // a session from an address no client owns: 530 at MAIL FROM
    const stranger = await openRawSmtp({ port: r.port, localAddress: "127.0.0.3" });
    await stranger.command("EHLO stranger.example");
    expect((await stranger.command("MAIL FROM:<x@example.com>")).code).toBe(530);
    await stranger.close();

    await waitFor(
      async () =>
        metric((await api(base, "GET", "/metrics")).text, `sluice_delivered_total{mailbox="${MAILBOX}"}`) ===
        1,
      20_000,
      "delivered counted",
    );
    const text = (await api(base, "GET", "/metrics")).text;
    expect(metric(text, `sluice_smtp_connections_total{listener="${listener}"}`)).toBe(2);
    expect(metric(text, `sluice_smtp_messages_accepted_total{listener="${listener}"}`)).toBe(1);
    expect(metric(text, `sluice_smtp_refused_total{listener="${listener}",code="530"}`)).toBe(1);
    expect(
      metric(text, `sluice_retries_total{mailbox="${MAILBOX}",reply_class="4xx",category="temporary"}`),
    ).toBe(1);
    for (const state of ["queued", "delayed", "active", "failed"]) {
      expect(metric(text, `sluice_queue_messages{mailbox="${MAILBOX}",state="${state}"}`)).toBe(0);
    }
    expect(metric(text, `sluice_budget_used{mailbox="${MAILBOX}",window="minute"}`)).toBe(1);
    expect(metric(text, `sluice_budget_used{mailbox="${MAILBOX}",window="day"}`)).toBe(1);
    expect(metric(text, `sluice_budget_limit{mailbox="${MAILBOX}",window="minute"}`)).toBe(30);
    expect(metric(text, `sluice_mailbox_paused{mailbox="${MAILBOX}",reason=""}`)).toBe(0);
    expect(metric(text, `sluice_queue_oldest_age_seconds{mailbox="${MAILBOX}"}`)).toBe(0);
    expect(metric(text, `sluice_connection_leases{mailbox="${MAILBOX}"}`)).toBeTypeOf("number");
    expect(metric(text, `sluice_connection_limit{mailbox="${MAILBOX}"}`)).toBe(3);
    expect(metric(text, `sluice_upstream_connections{mailbox="${MAILBOX}"}`)).toBeTypeOf("number");
    expect(metric(text, "sluice_redis_up")).toBe(1);
    expect(text).toMatch(/^process_cpu_user_seconds_total /m);
    expect(text).toMatch(/^nodejs_heap_size_used_bytes /m);
  });

  it("shows a paused mailbox with its reason and its waiting mail, and counts a 432", async () => {
    const r = await fx.relay(local);
    const base = adminUrl(r);
    expect(
      (await api(base, "POST", `/api/mailboxes/${MAILBOX}/pause`, { reason: "maintenance" })).status,
    ).toBe(200);
    const id = await fx.send(r, "waits@example.com");
    await waitFor(
      async () =>
        metric(
          (await api(base, "GET", "/metrics")).text,
          `sluice_queue_messages{mailbox="${MAILBOX}",state="delayed"}`,
        ) === 1,
      20_000,
      "message held",
    );
    const text = (await api(base, "GET", "/metrics")).text;
    expect(metric(text, `sluice_mailbox_paused{mailbox="${MAILBOX}",reason="manual"}`)).toBe(1);
    expect(metric(text, `sluice_queue_oldest_age_seconds{mailbox="${MAILBOX}"}`)).toBeGreaterThan(0);
    const status = (await api(base, "GET", "/api/status")).json();
    expect(status.mailboxes[0]).toMatchObject({
      mailbox: MAILBOX,
      delayed: 1,
      pause: { kind: "manual", reason: "maintenance" },
      drainEstimateMs: null,
    });
    expect(r.logs.some((l) => l.event === "paused" && l.mailbox === MAILBOX && l.by === "admin api")).toBe(
      true,
    );

    fx.upstream.script({
      reply: { code: 432, message: "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded" },
    });
    expect((await api(base, "POST", `/api/mailboxes/${MAILBOX}/resume`)).json()).toEqual({ wasPaused: true });
    expect(r.logs.some((l) => l.event === "resumed" && l.mailbox === MAILBOX)).toBe(true);
    const [delivered] = await fx.upstream.waitForMessages(1);
    expect(delivered?.rcptTo).toEqual(["waits@example.com"]);
    await waitFor(
      async () =>
        metric(
          (await api(base, "GET", "/metrics")).text,
          `sluice_upstream_432_total{mailbox="${MAILBOX}"}`,
        ) === 1,
      20_000,
      "432 counted",
    );
    // the 432 lowered the mailbox's connections for a cool-down: shown as such
    expect(
      metric((await api(base, "GET", "/metrics")).text, `sluice_connection_limit{mailbox="${MAILBOX}"}`),
    ).toBe(2);
    expect((await api(base, "GET", "/api/status")).json().mailboxes[0]).toMatchObject({
      connectionLimit: 2,
      limits: { connections: 3 },
    });
    expect(id).toBeTruthy();
  });

  it("shows unlimited budgets as unlimited in the API and +Inf in the metrics, and delivers under them", async () => {
    const unlimited = { messagesPerMinute: "unlimited", recipientsPerDay: "unlimited" };
    const r = await fx.relay({ ...local, defaults: { limits: unlimited } });
    const base = adminUrl(r);
    await fx.send(r, ["a@example.com", "b@example.com"]);
    await fx.upstream.waitForMessages(1);
    const status = (await api(base, "GET", "/api/status")).json();
    expect(status.mailboxes[0]).toMatchObject({
      mailbox: MAILBOX,
      limits: { ...unlimited, connections: 3 },
      drainEstimateMs: 0,
    });
    const text = (await api(base, "GET", "/metrics")).text;
    expect(text).toContain(`sluice_budget_limit{mailbox="${MAILBOX}",window="minute"} +Inf\n`);
    expect(text).toContain(`sluice_budget_limit{mailbox="${MAILBOX}",window="day"} +Inf\n`);
    // nothing is recorded for a mailbox without budgets: the delivered counter tells the rate
    expect(metric(text, `sluice_budget_used{mailbox="${MAILBOX}",window="minute"}`)).toBe(0);
  });

  it("keeps the metrics of two relays in one process apart", async () => {
    const a = await fx.relay(local);
    const b = await fx.relay(local);
    await fx.send(a, "a@example.com");
    await fx.upstream.waitForMessages(1);
    const series = `sluice_smtp_messages_accepted_total{listener="127.0.0.1:${a.port}"}`;
    expect(metric((await api(adminUrl(a), "GET", "/metrics")).text, series)).toBe(1);
    expect(metric((await api(adminUrl(b), "GET", "/metrics")).text, series)).toBeUndefined();
  });
});

describe("the JSON API", () => {
  it("lists a failed message with its reply, shows its upstream replies, retries it and it is delivered", async () => {
    const r = await fx.relay(local);
    const base = adminUrl(r);
    fx.upstream.script({ reply: { code: 550, message: "5.1.1 RESOLVER.ADR.RecipNotFound; not found" } });
    const id = await fx.send(r, "nobody@example.com");
    await waitFor(
      async () => (await api(base, "GET", "/api/messages?state=failed")).json().messages.length === 1,
      20_000,
      "failed",
    );
    const [failed] = (await api(base, "GET", "/api/messages?state=failed")).json().messages;
    expect(failed).toMatchObject({
      id,
      mailbox: MAILBOX,
      state: "failed",
      recipients: ["nobody@example.com"],
    });
    expect(failed.lastReply).toMatch(/^550 5\.1\.1 RESOLVER/);
    const detail = (await api(base, "GET", `/api/messages/${id}`)).json();
    expect(detail.replies).toHaveLength(1);
    expect(detail.replies[0].reply).toMatch(/^550 5\.1\.1/);
    expect(Date.parse(detail.replies[0].at)).toBeGreaterThan(0);
    expect(detail.headers).toMatch(/^Received: from/);
    expect(detail.headers).toMatch(/Subject: for nobody@example.com/);

    expect((await api(base, "POST", `/api/messages/${id}/retry`)).status).toBe(200);
    const [delivered] = await fx.upstream.waitForMessages(1);
    expect(delivered?.rcptTo).toEqual(["nobody@example.com"]);
    await waitFor(
      async () =>
        (await api(base, "GET", "/api/messages?state=delivered"))
          .json()
          .messages.some((m: { id: string }) => m.id === id),
      20_000,
      "listed as delivered",
    );
    // the delivering batch's outcome is kept with the job's completion: shown like the replies before it
    const done = (await api(base, "GET", `/api/messages/${id}`)).json();
    expect(done).toMatchObject({ state: "delivered", recipients: [], delivered: ["nobody@example.com"] });
    expect(done.replies.map((r: { reply: string }) => r.reply.slice(0, 3))).toEqual(["550", "250"]);
    expect(Date.parse(done.replies[1].at)).toBeGreaterThanOrEqual(Date.parse(detail.replies[0].at));
    expect((await api(base, "POST", `/api/messages/${id}/retry`)).status).toBe(409);
  });

  it("shows a delivered message's accepted and refused recipients with every reply of its last batch", async () => {
    const r = await fx.relay(local);
    const base = adminUrl(r);
    fx.upstream.script({
      at: "rcpt",
      rcpt: "gone@example.com",
      reply: { code: 550, message: "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found" },
    });
    const id = await fx.send(r, ["here@example.com", "gone@example.com"]);
    await fx.upstream.waitForMessages(1);
    await waitFor(
      async () => (await api(base, "GET", `/api/messages/${id}`)).json().state === "delivered",
      20_000,
      "delivered",
    );
    const detail = (await api(base, "GET", `/api/messages/${id}`)).json();
    expect(detail).toMatchObject({
      recipients: [],
      delivered: ["here@example.com"],
      refused: [{ recipient: "gone@example.com", reply: expect.stringMatching(/^550 5\.1\.10 RESOLVER/) }],
    });
    expect(detail.replies.map((line: { reply: string }) => line.reply)).toEqual([
      expect.stringMatching(/^250 /),
      expect.stringMatching(/^gone@example\.com: 550 5\.1\.10/),
    ]);
  });

  it("purges a failed message with its body, and answers 404 for an unknown id or mailbox", async () => {
    const r = await fx.relay(local);
    const base = adminUrl(r);
    fx.upstream.script({ reply: { code: 550, message: "5.1.1 RESOLVER.ADR.RecipNotFound; not found" } });
    const id = await fx.send(r, "gone@example.com");
    await waitFor(async () => (await r.spool.queue(MAILBOX).getJobState(id)) === "failed", 20_000, "failed");
    expect(await r.spool.readBody(id)).not.toBeNull();
    expect((await api(base, "POST", `/api/messages/${id}/purge`)).status).toBe(200);
    expect(await r.spool.readBody(id)).toBeNull();
    expect(await r.spool.queue(MAILBOX).getJob(id)).toBeUndefined();
    expect((await api(base, "GET", `/api/messages/${id}`)).status).toBe(404);
    expect((await api(base, "POST", "/api/mailboxes/nobody@example.com/pause")).status).toBe(404);
    expect((await api(base, "POST", "/api/purge-failed", {})).status).toBe(400);
  });
});

describe("a relay without admin", () => {
  it("opens no admin server", async () => {
    const r = await startTestRelay(fx.config());
    fx.relays.push(r);
    expect(r.admin).toBeUndefined();
  });
});
