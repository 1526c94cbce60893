import { describe, expect, it } from "vitest";
import { type ConfigError, parseConfig } from "../../src/config/load.js";
import { shadowedClients } from "../../src/inbound/client-matching.js";
import { ClientPolicy } from "../../src/inbound/client-policy.js";
import { type MailboxLoad, pickMailbox } from "../../src/inbound/mailbox-chooser.js";
import { estimateDrainMs } from "../../src/limits/drain-estimate.js";

const MAILBOXES = {
  "scanner@contoso.com": { password: "x" },
  "alerts@contoso.com": { password: "x", aliases: ["noreply@contoso.com"] },
  "news1@contoso.com": { password: "x" },
  "news2@contoso.com": { password: "x" },
};

function load(clients: unknown[]) {
  return parseConfig({ mailboxes: MAILBOXES, clients }, {}, "test");
}

function policyOf(clients: unknown[]) {
  const { config } = load(clients);
  return new ClientPolicy(config);
}

const CLIENTS = [
  // username + senders: the ERP's invoices and its alerts go out as different mailboxes
  {
    name: "erp-alerts",
    username: "erp",
    password: "p",
    senders: ["alerts@erp.local"],
    mailbox: "alerts@contoso.com",
  },
  { name: "erp", username: "erp", password: "p", mailbox: "scanner@contoso.com" },
  // networks + senders: the monitoring box on the printer network
  {
    name: "monitoring",
    networks: ["10.0.2.50/32"],
    senders: ["*@monitoring.local"],
    mailbox: "alerts@contoso.com",
  },
  { name: "printers", networks: ["10.0.2.0/24", "fd00:1::/64"], mailbox: "scanner@contoso.com" },
  // username + networks: the newsletter tool only from its own server
  {
    name: "newsletter",
    username: "news",
    password: "n",
    networks: ["10.0.9.0/24"],
    mailboxes: ["news1@contoso.com", "news2@contoso.com"],
  },
];

describe("which client: every matching rule and their order", () => {
  const policy = policyOf(CLIENTS);
  const name = (identity: { username?: string; remoteAddress: string }, sender: string) =>
    policy.match(identity, sender).client?.name;

  it("matches a network entry by the remote address", () => {
    expect(name({ remoteAddress: "10.0.2.17" }, "scan@printer.local")).toBe("printers");
    expect(name({ remoteAddress: "fd00:1::7" }, "scan@printer.local")).toBe("printers");
  });

  it("matches a username entry only for sessions authenticated as that user", () => {
    expect(name({ username: "erp", remoteAddress: "192.0.2.1" }, "billing@erp.local")).toBe("erp");
    // an authenticated session never falls back to a network-only entry
    expect(name({ username: "erp", remoteAddress: "10.0.2.17" }, "billing@erp.local")).toBe("erp");
    // and an unauthenticated one never matches a username entry
    expect(name({ remoteAddress: "192.0.2.1" }, "billing@erp.local")).toBeUndefined();
  });

  it("matches exact senders and *@domain patterns, case-insensitively", () => {
    expect(name({ username: "erp", remoteAddress: "192.0.2.1" }, "Alerts@ERP.local")).toBe("erp-alerts");
    expect(name({ remoteAddress: "10.0.2.50" }, "nagios@monitoring.local")).toBe("monitoring");
    expect(name({ remoteAddress: "10.0.2.50" }, "nagios@sub.monitoring.local")).toBe("printers");
    expect(name({ remoteAddress: "10.0.2.50" }, "x@evilmonitoring.local")).toBe("printers");
  });

  it("needs every given condition to match (username and networks)", () => {
    expect(name({ username: "news", remoteAddress: "10.0.9.4" }, "news@contoso.com")).toBe("newsletter");
    const outside = policy.match({ username: "news", remoteAddress: "10.0.2.17" }, "news@contoso.com");
    expect(outside.client).toBeUndefined();
    expect(outside.client ? "" : outside.refusal.message).toContain("not allowed for user news");
  });

  it("takes the first matching entry: the senders entry above wins over the broader one below", () => {
    expect(name({ remoteAddress: "10.0.2.50" }, "nagios@monitoring.local")).toBe("monitoring");
    const reordered = policyOf([CLIENTS[3], CLIENTS[2]]);
    expect(reordered.match({ remoteAddress: "10.0.2.50" }, "nagios@monitoring.local").client?.name).toBe(
      "printers",
    );
  });

  it("says why nothing matched: 530 for strangers, 550 5.7.1 for a sender the entry does not allow", () => {
    const stranger = policy.match({ remoteAddress: "203.0.113.9" }, "x@example.com");
    expect(stranger.client ? "" : `${stranger.refusal.responseCode} ${stranger.refusal.message}`).toBe(
      "530 5.7.0 Authentication required",
    );
    const senderOnly = policyOf([CLIENTS[2]]).match({ remoteAddress: "10.0.2.50" }, "x@example.com");
    expect(senderOnly.client ? 0 : senderOnly.refusal.responseCode).toBe(550);
    expect(senderOnly.client ? "" : senderOnly.refusal.message).toMatch(/5\.7\.1 .*add it to senders/);
    const nullSender = policyOf([CLIENTS[2]]).match({ remoteAddress: "10.0.2.50" }, "");
    expect(nullSender.client).toBeUndefined();
  });

  it("gives a pool's members, a single mailbox, or the only mailbox", () => {
    const { config } = load(CLIENTS);
    expect(policy.mailboxesFor(config.clients[4] as (typeof config.clients)[number])).toEqual([
      "news1@contoso.com",
      "news2@contoso.com",
    ]);
    expect(policy.fromAddressesOf("alerts@contoso.com")).toEqual([
      "alerts@contoso.com",
      "noreply@contoso.com",
    ]);
  });
});

describe("check-config", () => {
  it("warns about entries an earlier, broader entry shadows", () => {
    const { warnings } = load([
      { name: "all-printers", networks: ["10.0.0.0/8"], mailbox: "scanner@contoso.com" },
      { name: "floor2", networks: ["10.0.2.0/24"], mailbox: "alerts@contoso.com" },
      { name: "erp", username: "erp", password: "p", mailbox: "scanner@contoso.com" },
      {
        name: "erp-alerts",
        username: "erp",
        password: "p",
        senders: ["a@erp.local"],
        mailbox: "alerts@contoso.com",
      },
      {
        name: "mon-any",
        networks: ["172.16.0.0/16"],
        senders: ["*@mon.local"],
        mailbox: "alerts@contoso.com",
      },
      {
        name: "mon-one",
        networks: ["172.16.1.0/24"],
        senders: ["x@mon.local"],
        mailbox: "alerts@contoso.com",
      },
      {
        name: "mon-other",
        networks: ["172.16.1.0/24"],
        senders: ["x@other.local"],
        mailbox: "alerts@contoso.com",
      },
    ]);
    const shadowed = warnings.filter((w) => w.includes("can never match"));
    expect(shadowed).toEqual([
      expect.stringContaining("clients[1] (floor2) can never match: clients[0] (all-printers)"),
      expect.stringContaining("clients[3] (erp-alerts) can never match: clients[2] (erp)"),
      expect.stringContaining("clients[5] (mon-one) can never match: clients[4] (mon-any)"),
    ]);
  });

  it("does not warn when the narrower entry comes first", () => {
    const { config } = load(CLIENTS);
    expect(shadowedClients(config.clients)).toEqual([]);
  });

  it("refuses senders without networks or username, unknown pool members and mailbox with mailboxes", () => {
    const problems = (clients: unknown[]) => {
      try {
        load(clients);
        return [];
      } catch (err) {
        return (err as ConfigError).problems;
      }
    };
    expect(problems([{ name: "a", senders: ["x@y.z"], mailbox: "scanner@contoso.com" }])).toEqual([
      expect.stringContaining("senders alone can be forged"),
    ]);
    expect(problems([{ name: "a", networks: ["10.0.0.1"], mailboxes: ["nope@contoso.com"] }])).toEqual([
      expect.stringContaining("unknown mailbox nope@contoso.com"),
    ]);
    expect(
      problems([
        {
          name: "a",
          networks: ["10.0.0.1"],
          mailbox: "scanner@contoso.com",
          mailboxes: ["news1@contoso.com"],
        },
      ]),
    ).toEqual([expect.stringContaining("mailbox or mailboxes, not both")]);
    expect(
      problems([
        { name: "a", username: "u", password: "p1", mailbox: "scanner@contoso.com" },
        { name: "b", username: "u", password: "p2", mailbox: "scanner@contoso.com" },
      ]),
    ).toEqual([expect.stringContaining("different passwords")]);
  });
});

describe("pool choice and drain estimate", () => {
  const limits = { connections: 3, messagesPerMinute: 10, recipientsPerDay: 100, recipientsPerMessage: 500 };
  const loadOf = (mailbox: string, sent: number, queued: number, recipientsToday = 0): MailboxLoad => ({
    mailbox,
    limits,
    queued,
    usage: { messagesLastMinute: sent, recipientsLastDay: recipientsToday },
  });

  it("picks the member with the most free budget, then the fewest queued, then config order", () => {
    expect(pickMailbox([loadOf("a", 8, 0), loadOf("b", 2, 0), loadOf("c", 5, 0)], 1).mailbox).toBe("b");
    expect(pickMailbox([loadOf("a", 0, 4), loadOf("b", 2, 1), loadOf("c", 0, 3)], 1).mailbox).toBe("b");
    expect(pickMailbox([loadOf("a", 5, 5), loadOf("b", 0, 10)], 1).mailbox).toBe("a");
    expect(pickMailbox([loadOf("a", 0, 0), loadOf("b", 0, 0)], 1).mailbox).toBe("a");
  });

  it("puts members whose day budget cannot take the recipients last", () => {
    expect(pickMailbox([loadOf("a", 0, 0, 99), loadOf("b", 9, 5, 0)], 5).mailbox).toBe("b");
  });

  it("estimates the time to send a queue from the budgets", () => {
    const usage = { messagesLastMinute: 4, recipientsLastDay: 0 };
    expect(estimateDrainMs({ queuedMessages: 6, limits, usage })).toBe(0);
    expect(estimateDrainMs({ queuedMessages: 7, limits, usage })).toBe(60_000);
    expect(estimateDrainMs({ queuedMessages: 26, limits, usage })).toBe(120_000);
    expect(estimateDrainMs({ queuedMessages: 1, queuedRecipients: 250, limits, usage })).toBe(2 * 86_400_000);
  });
});
