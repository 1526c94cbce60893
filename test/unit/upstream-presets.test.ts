import { describe, expect, it } from "vitest";
import { type ConfigError, parseConfig } from "../../src/config/load.js";
import { describeConfig } from "../../src/config/mask.js";

const parse = (raw: Record<string, unknown>) => parseConfig(raw, {}, "test").config;
function problemsOf(raw: Record<string, unknown>): string[] {
  try {
    parseConfig(raw, {}, "test");
    return [];
  } catch (err) {
    return (err as ConfigError).problems;
  }
}
const app = { tenant: "contoso.onmicrosoft.com", clientId: "app-id", clientSecret: "s3cret-value" };

describe("upstream presets", () => {
  it("defaults to office365: smtp.office365.com:587 STARTTLS, Outlook scope, 3/30/10,000/500", () => {
    const config = parse({});
    expect(config.upstream).toMatchObject({
      preset: "office365",
      host: "smtp.office365.com",
      port: 587,
      tls: "starttls",
      oauth2: {
        authority: "https://login.microsoftonline.com",
        scope: "https://outlook.office365.com/.default",
      },
    });
    expect(config.defaults.limits).toEqual({
      connections: 3,
      messagesPerMinute: 30,
      recipientsPerDay: 10_000,
      recipientsPerMessage: 500,
    });
  });

  it("takes a preset by name, each with its host, token scope, authority and limits", () => {
    expect(parse({ upstream: "acs" }).upstream).toMatchObject({
      host: "smtp.azurecomm.net",
      oauth2: { scope: "https://communication.azure.com/.default" },
    });
    expect(parse({ upstream: "acs" }).defaults.limits.recipientsPerMessage).toBe(50);
    expect(parse({ upstream: "hve" }).upstream.host).toBe("smtp.hve.mx.microsoft");
    expect(parse({ upstream: "office365-legacy-tls" }).upstream.host).toBe("smtp-legacy.office365.com");
    expect(parse({ upstream: "gcc-high" }).upstream).toMatchObject({
      host: "smtp.office365.us",
      oauth2: {
        authority: "https://login.microsoftonline.us",
        scope: "https://outlook.office365.us/.default",
      },
    });
    expect(problemsOf({ upstream: "gmail" })[0]).toMatch(/^upstream\.preset: /);
  });

  it("keeps the explicit object form, with a preset as its base when named", () => {
    const config = parse({ upstream: { host: "127.0.0.1", port: 2587, ca: "/ca.pem" } });
    expect(config.upstream).toMatchObject({ host: "127.0.0.1", port: 2587, tls: "starttls", ca: "/ca.pem" });
    expect(parse({ upstream: { preset: "hve", idleTimeout: 1000 } }).upstream).toMatchObject({
      host: "smtp.hve.mx.microsoft",
      idleTimeout: 1000,
    });
  });

  it("lets a mailbox name its own upstream; limits go built-in < preset < defaults.limits < mailbox", () => {
    const config = parse({
      defaults: { limits: { messagesPerMinute: 20 } },
      mailboxes: {
        "a@contoso.com": { password: "x" },
        "b@contoso.com": { password: "y", upstream: "acs", limits: { connections: 1 } },
      },
    });
    expect(config.mailboxes["a@contoso.com"]?.limits).toEqual({
      connections: 3,
      messagesPerMinute: 20,
      recipientsPerDay: 10_000,
      recipientsPerMessage: 500,
    });
    expect(config.mailboxes["b@contoso.com"]?.upstream?.host).toBe("smtp.azurecomm.net");
    expect(config.mailboxes["b@contoso.com"]?.limits).toEqual({
      connections: 1,
      messagesPerMinute: 20,
      recipientsPerDay: 2_400,
      recipientsPerMessage: 50,
    });
  });
});

describe("oauth2 settings", () => {
  it("takes oauth2 instead of a password, with a client secret or a certificate", () => {
    const config = parse({ mailboxes: { "a@contoso.com": { oauth2: app } } });
    expect(config.mailboxes["a@contoso.com"]?.oauth2).toMatchObject({ ...app, timeout: 15_000 });
    const cert = { tenant: "t", clientId: "c", certificate: { key: "/k.pem", cert: "/c.pem" } };
    expect(
      parse({ mailboxes: { "a@contoso.com": { oauth2: cert } } }).mailboxes["a@contoso.com"]?.oauth2,
    ).toBeTruthy();
  });

  it("wants exactly one of password and oauth2, and exactly one of clientSecret and certificate", () => {
    expect(problemsOf({ mailboxes: { "a@b": {} } })).toEqual(['mailboxes."a@b".password: required']);
    expect(problemsOf({ mailboxes: { "a@b": { password: "x", oauth2: app } } })).toEqual([
      'mailboxes."a@b".oauth2: give password or oauth2, not both',
    ]);
    expect(problemsOf({ mailboxes: { "a@b": { oauth2: { tenant: "t", clientId: "c" } } } })).toEqual([
      'mailboxes."a@b".oauth2.clientSecret: required (or certificate)',
    ]);
    expect(
      problemsOf({ mailboxes: { "a@b": { oauth2: { ...app, certificate: { key: "k", cert: "c" } } } } }),
    ).toEqual(['mailboxes."a@b".oauth2.certificate: give clientSecret or certificate, not both']);
    expect(problemsOf({ mailboxes: { "a@b": { oauth2: { ...app, authority: "http://x" } } } })[0]).toMatch(
      /oauth2\.authority: must be https:\/\/host/,
    );
  });

  it("masks the client secret when printing the configuration", () => {
    const printed = describeConfig(parse({ mailboxes: { "a@contoso.com": { oauth2: app } } }));
    expect(printed).not.toContain("s3cret-value");
    expect(printed).toMatch(/clientSecret: "\*{8}"/);
    expect(printed).toContain("clientId: app-id");
  });
});
