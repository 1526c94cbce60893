import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.js";
import { isForwardableAddress } from "../../src/inbound/addresses.js";
import { ClientPolicy } from "../../src/inbound/client-policy.js";

const { config } = parseConfig(
  {
    mailboxes: { "scanner@contoso.com": { password: "x" } },
    clients: [
      { name: "printers", networks: ["10.0.2.0/24", "fd00:1::/64"] },
      { name: "single", networks: ["192.168.7.9"] },
      { name: "erp", username: "erp", password: "erp-pass" },
    ],
  },
  {},
  "test",
);
const policy = new ClientPolicy(config);
const byAddress = (remoteAddress: string) => policy.match({ remoteAddress }, "device@example.com").client;

describe("who may submit", () => {
  it("matches IPv4, IPv6 and IPv4-mapped IPv6 addresses against client networks", () => {
    expect(byAddress("10.0.2.17")?.name).toBe("printers");
    expect(byAddress("::ffff:10.0.2.17")?.name).toBe("printers");
    expect(byAddress("fd00:1::abcd")?.name).toBe("printers");
    expect(byAddress("192.168.7.9")?.name).toBe("single");
  });

  it("refuses addresses outside every network", () => {
    expect(byAddress("10.0.3.1")).toBeUndefined();
    expect(byAddress("::ffff:10.0.3.1")).toBeUndefined();
    expect(byAddress("fd00:2::1")).toBeUndefined();
    expect(byAddress("192.168.7.10")).toBeUndefined();
    expect(byAddress("not an address")).toBeUndefined();
  });

  it("authenticates by username and password only when both match", () => {
    expect(policy.authenticate("erp", "erp-pass")).toBe(true);
    expect(policy.authenticate("erp", "wrong")).toBe(false);
    expect(policy.authenticate("nobody", "erp-pass")).toBe(false);
  });

  it("sends as the only configured mailbox when a client names none", () => {
    expect(policy.mailboxFor(config.clients[0] as (typeof config.clients)[number])).toBe(
      "scanner@contoso.com",
    );
  });
});

describe("addresses a relay forwards", () => {
  it.each(["user@example.com", "first.last+tag@sub.example.co.uk", "jörg@bücher.de"])("accepts %s", (a) => {
    expect(isForwardableAddress(a)).toBe(true);
  });
  it.each([
    "user@remote@relay.example.com",
    "user%remote.example@relay.example.com",
    "@a.example:user@b.example",
    '"quoted user"@example.com',
    "user@[127.0.0.1]",
    "user@localhost",
    "user!host@example.com",
    "no-at-sign",
  ])("refuses %s", (a) => {
    expect(isForwardableAddress(a)).toBe(false);
  });
});
