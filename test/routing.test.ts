import { describe, expect, it } from "vitest";
import { type TestRelay, uniquePrefix } from "./support/relay.js";
import { buildMessage, openRawSmtp, openSubmission, submit } from "./support/smtp-client.js";
import { useFakeUpstream } from "./support/upstream-fixture.js";

const SCANNER = "scanner@contoso.com";
const ALERTS = "alerts@contoso.com";
const POOL = ["news1@contoso.com", "news2@contoso.com", "news3@contoso.com"];

const fx = useFakeUpstream({ users: Object.fromEntries([SCANNER, ALERTS, ...POOL].map((m) => [m, "pw"])) });

function relay(clients: unknown[], extra: Record<string, unknown> = {}) {
  return fx.relay({
    mailboxes: Object.fromEntries(
      [SCANNER, ALERTS, ...POOL].map((m) => [m, { password: "pw", limits: { messagesPerMinute: 10 } }]),
    ),
    clients,
    ...extra,
  });
}

function send(r: TestRelay, options: { from: string; to?: string[]; localAddress?: string; user?: string }) {
  const to = options.to ?? ["someone@example.org"];
  return submit({
    port: r.port,
    localAddress: options.localAddress ?? "127.0.0.2",
    startTls: !!options.user,
    rejectUnauthorized: false,
    ...(options.user ? { auth: { user: options.user, pass: "pw" } } : {}),
    from: options.from,
    to,
    raw: buildMessage({ from: options.from, to, subject: options.from }),
  });
}

describe("which client, which mailbox", () => {
  it("decides the client at MAIL FROM: the monitoring sender goes out as alerts@, the printer as scanner@", async () => {
    const r = await relay([
      {
        name: "monitoring",
        networks: ["127.0.0.2/32"],
        senders: ["*@monitoring.local"],
        mailbox: ALERTS,
        from: "keep",
      },
      { name: "printers", networks: ["127.0.0.0/24"], mailbox: SCANNER, from: "keep" },
    ]);
    expect((await send(r, { from: "nagios@monitoring.local" })).code).toBe(250);
    expect((await send(r, { from: "scan@printers.local" })).code).toBe(250);
    expect((await send(r, { from: "scan@printers.local", localAddress: "127.0.0.3" })).code).toBe(250);
    const messages = await fx.upstream.waitForMessages(3);
    const bySender = messages.map((m) => [/^From: (.*)$/m.exec(m.raw.toString())?.[1], m.user]);
    expect(bySender).toEqual(
      expect.arrayContaining([
        ["nagios@monitoring.local", ALERTS],
        ["scan@printers.local", SCANNER],
      ]),
    );
    expect(messages.filter((m) => m.user === SCANNER)).toHaveLength(2);
  });

  it("refuses at MAIL FROM a sender the matching entries do not allow, saying what to configure", async () => {
    const r = await relay([
      {
        name: "monitoring",
        networks: ["127.0.0.2/32"],
        senders: ["nagios@monitoring.local"],
        mailbox: ALERTS,
      },
      { name: "erp", username: "erp", password: "pw", senders: ["*@erp.local"], mailbox: SCANNER },
    ]);
    const network = await send(r, { from: "intruder@monitoring.local" });
    expect(network.stage).toBe("MAIL FROM");
    expect(network.response).toMatch(
      /^550 5\.7\.1 Sender intruder@monitoring\.local not allowed from 127\.0\.0\.2: add it to senders/,
    );
    const user = await send(r, { from: "ceo@contoso.com", user: "erp" });
    expect(user.stage).toBe("MAIL FROM");
    expect(user.response).toMatch(/^550 5\.7\.1 Sender ceo@contoso\.com not allowed for user erp/);
    const stranger = await send(r, { from: "nagios@monitoring.local", localAddress: "127.0.0.9" });
    expect(stranger.response).toMatch(/^530 5\.7\.0/);
    expect(fx.upstream.messages).toHaveLength(0);
  });

  it("spreads a pool's mail: 3 mailboxes of 10 messages a minute send 30, each within its own limit", async () => {
    const r = await relay([
      { name: "newsletter", networks: ["127.0.0.2/32"], mailboxes: POOL, from: "rewrite" },
    ]);
    const session = await openSubmission({ port: r.port, localAddress: "127.0.0.2", startTls: false });
    for (let i = 0; i < 45; i++) {
      const to = [`reader${i}@example.org`];
      const result = await session.send(
        { from: "news@contoso.com", to },
        buildMessage({ from: "news@contoso.com", to }),
      );
      expect(result.code).toBe(250);
    }
    await session.close();
    await fx.upstream.waitForMessages(30);
    // the other 15 wait for the minute windows: give them a chance to (wrongly) go out
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    const perMailbox = POOL.map((m) => fx.upstream.messages.filter((x) => x.user === m).length);
    expect(perMailbox).toEqual([10, 10, 10]);
    expect(fx.upstream.messages).toHaveLength(30);
    // each message went out as the member it was given to
    for (const message of fx.upstream.messages) {
      expect(message.raw.toString()).toContain(`From: ${message.user}\r\n`);
    }
    // the wait is estimated and logged
    const backlog = r.logs.filter((l) => l.event === "backlog");
    expect(backlog.length).toBeGreaterThan(0);
    expect(backlog.every((l) => (l.etaMs as number) >= 60_000)).toBe(true);
  });

  it("sends a pool member only the From addresses it may use when from: reject", async () => {
    const r = await relay([{ name: "newsletter", networks: ["127.0.0.2/32"], mailboxes: POOL }], {
      mailboxes: {
        ...Object.fromEntries(POOL.map((m) => [m, { password: "pw" }])),
        [POOL[1] as string]: { password: "pw", aliases: ["offers@contoso.com"] },
      },
    });
    for (let i = 0; i < 3; i++) expect((await send(r, { from: "offers@contoso.com" })).code).toBe(250);
    const messages = await fx.upstream.waitForMessages(3);
    expect(messages.map((m) => m.user)).toEqual([POOL[1], POOL[1], POOL[1]]);
  });
});

describe("per-client quotas, answered at submission", () => {
  it("refuses recipients beyond maxRecipientsPerMessage at RCPT with 452 4.5.3", async () => {
    const r = await relay([
      { name: "app", networks: ["127.0.0.2/32"], mailbox: SCANNER, maxRecipientsPerMessage: 3 },
    ]);
    const smtp = await openRawSmtp({ port: r.port, localAddress: "127.0.0.2" });
    await smtp.greeting();
    await smtp.command("EHLO app.example");
    expect((await smtp.command("MAIL FROM:<app@example.com>")).code).toBe(250);
    for (let i = 0; i < 3; i++) expect((await smtp.command(`RCPT TO:<r${i}@example.org>`)).code).toBe(250);
    const fourth = await smtp.command("RCPT TO:<r3@example.org>");
    expect(fourth.code).toBe(452);
    expect(fourth.text).toMatch(
      /^4\.5\.3 Too many recipients: client app may send to 3 recipients per message \(maxRecipientsPerMessage\)/,
    );
    await smtp.close();
  });

  it("refuses the message beyond maxMessagesPerHour at MAIL FROM with 452 4.7.1, across relays sharing Redis", async () => {
    const prefix = uniquePrefix();
    const clients = [
      { name: "app", networks: ["127.0.0.2/32"], mailbox: SCANNER, from: "keep", maxMessagesPerHour: 2 },
    ];
    const a = await relay(clients, { redisPrefix: prefix });
    const b = await relay(clients, { redisPrefix: prefix });
    expect((await send(a, { from: "app@example.com" })).code).toBe(250);
    expect((await send(b, { from: "app@example.com" })).code).toBe(250);
    const third = await send(a, { from: "app@example.com" });
    expect(third.stage).toBe("MAIL FROM");
    expect(third.response).toMatch(
      /^452 4\.7\.1 Quota exceeded: client app may send 2 messages per hour \(maxMessagesPerHour\)/,
    );
    expect((await send(b, { from: "app@example.com" })).code).toBe(452);
  });

  it("refuses recipients beyond maxRecipientsPerDay at RCPT with 452 4.7.1", async () => {
    const r = await relay([
      { name: "app", networks: ["127.0.0.2/32"], mailbox: SCANNER, from: "keep", maxRecipientsPerDay: 5 },
    ]);
    expect(
      (await send(r, { from: "app@example.com", to: ["a@example.org", "b@example.org", "c@example.org"] }))
        .code,
    ).toBe(250);
    const smtp = await openRawSmtp({ port: r.port, localAddress: "127.0.0.2" });
    await smtp.greeting();
    await smtp.command("EHLO app.example");
    await smtp.command("MAIL FROM:<app@example.com>");
    expect((await smtp.command("RCPT TO:<d@example.org>")).code).toBe(250);
    expect((await smtp.command("RCPT TO:<e@example.org>")).code).toBe(250);
    const sixth = await smtp.command("RCPT TO:<f@example.org>");
    expect(sixth.code).toBe(452);
    expect(sixth.text).toMatch(
      /^4\.7\.1 Quota exceeded: client app may send 5 recipients per day \(maxRecipientsPerDay\)/,
    );
    await smtp.close();
  });
});
