import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { ConfigError, findConfigFile, loadConfig, parseConfig } from "../../src/config/load.js";
import { describeConfig } from "../../src/config/mask.js";
import { UNLIMITED } from "../../src/limits/unlimited.js";

const run = promisify(execFile);
const cli = join(import.meta.dirname, "../../src/cli.ts");

function problemsOf(raw: unknown, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseConfig(raw, env, "test");
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

function writeConfig(text: string): string {
  const dir = mkdtempSync(join(tmpdir(), "sluice-config-"));
  const file = join(dir, "sluice.yaml");
  writeFileSync(file, text);
  return file;
}

const example = `
listen:
  - port: 2525
    host: 0.0.0.0
    tls: starttls
    allowInsecureAuth: false
redis: redis://:hunter2@127.0.0.1:6379/0
dataDir: ./data
maxMessageSize: 35MB
upstream:
  host: smtp.office365.com
  port: 587
  tls: starttls
mailboxes:
  Scanner@Contoso.com:
    password: \${SCANNER_PASSWORD}
clients:
  - name: floor2-printers
    networks: [10.0.2.0/24, "fd00:1::/64"]
    mailbox: scanner@contoso.com
  - name: erp
    username: erp
    password: \${ERP_RELAY_PASSWORD}
    mailbox: scanner@contoso.com
`;

describe("configuration", () => {
  it("reads the documented example, interpolating ${NAME} from the environment", () => {
    const file = writeConfig(example);
    const { config } = loadConfig({
      file,
      env: { SCANNER_PASSWORD: "s3cret", ERP_RELAY_PASSWORD: "erp-pass" },
    });
    expect(config.maxMessageSize).toBe(35 * 1024 * 1024);
    expect(config.mailboxes["scanner@contoso.com"]?.password).toBe("s3cret");
    expect(config.clients[1]?.password).toBe("erp-pass");
    expect(config.upstream).toMatchObject({ host: "smtp.office365.com", port: 587, tls: "starttls" });
    expect(Object.isFrozen(config.clients)).toBe(true);
  });

  it("reports a missing environment variable as a config error with its path", () => {
    const file = writeConfig(example);
    expect(() => loadConfig({ file, env: { SCANNER_PASSWORD: "x" } })).toThrow(
      /clients\[1\]\.password: environment variable ERP_RELAY_PASSWORD is not set/,
    );
  });

  it("lists every problem with its path, quoting keys that are not identifiers", () => {
    const problems = problemsOf({
      maxMessageSize: "lots",
      mailboxes: { "a@b": {} },
      clients: [{ name: "x", networks: ["10.0.0.300/24"] }],
      listen: [{ port: 2525, tls: "sometimes" }],
    });
    expect(problems).toContain('mailboxes."a@b".password: required');
    expect(problems.some((p) => p.startsWith("maxMessageSize: not a size"))).toBe(true);
    expect(problems.some((p) => p.startsWith("clients[0].networks[0]: not an IPv4/IPv6 address"))).toBe(true);
    expect(problems.some((p) => p.startsWith("listen[0].tls:"))).toBe(true);
  });

  it("refuses a client whose mailbox is not configured", () => {
    const problems = problemsOf({
      mailboxes: { "a@b.example": { password: "x" } },
      clients: [{ name: "x", networks: ["10.0.0.0/24"], mailbox: "nobody@example.com" }],
    });
    expect(problems).toEqual([
      "clients[0].mailbox: unknown mailbox nobody@example.com: add it under mailboxes",
    ]);
  });

  it("accepts sizes as strings or byte counts", () => {
    expect(parseConfig({ maxMessageSize: "10MB" }, {}, "t").config.maxMessageSize).toBe(10 * 1024 * 1024);
    expect(parseConfig({ maxMessageSize: 1000 }, {}, "t").config.maxMessageSize).toBe(1000);
  });

  it("takes unlimited for the message and recipient budgets only, and prints it back as unlimited", () => {
    const { config } = parseConfig(
      {
        defaults: { limits: { messagesPerMinute: "unlimited" } },
        mailboxes: {
          "hve@contoso.com": { password: "x", limits: { recipientsPerDay: "unlimited" } },
          "o365@contoso.com": { password: "x", limits: { messagesPerMinute: 30 } },
        },
      },
      {},
      "t",
    );
    expect(config.defaults.limits).toMatchObject({ messagesPerMinute: UNLIMITED, recipientsPerDay: 10_000 });
    expect(config.mailboxes["hve@contoso.com"]?.limits).toMatchObject({
      messagesPerMinute: UNLIMITED,
      recipientsPerDay: UNLIMITED,
    });
    expect(config.mailboxes["o365@contoso.com"]?.limits.messagesPerMinute).toBe(30);
    const printed = describeConfig(config);
    expect(printed).toMatch(/messagesPerMinute: unlimited/);
    expect(printed).not.toMatch(/inf/i);
    expect(parseYaml(printed).mailboxes["hve@contoso.com"].limits).toMatchObject({
      messagesPerMinute: "unlimited",
      recipientsPerDay: "unlimited",
    });

    const problems = problemsOf({
      defaults: {
        limits: { connections: "unlimited", recipientsPerMessage: "unlimited", messagesPerMinute: 0 },
      },
      mailboxes: { "a@b.example": { password: "x", limits: { recipientsPerDay: "none" } } },
    });
    expect(problems.map((p) => p.split(":")[0]).sort()).toEqual([
      "defaults.limits.connections",
      "defaults.limits.messagesPerMinute",
      "defaults.limits.recipientsPerMessage",
      'mailboxes."a@b.example".limits.recipientsPerDay',
    ]);
  });

  it("with no file, lets loopback submit and sends as SLUICE_MAILBOX when it is set", () => {
    const dir = mkdtempSync(join(tmpdir(), "sluice-empty-"));
    const held = loadConfig({ env: {}, cwd: dir });
    expect(held.source).toBe("built-in defaults");
    expect(held.config.listen).toMatchObject([
      { port: 2525, host: "0.0.0.0", tls: "starttls", allowInsecureAuth: false, minVersion: "TLSv1.2" },
    ]);
    expect(held.config.clients[0]?.networks).toEqual(["127.0.0.0/8", "::1/128"]);
    expect(held.config.clients[0]?.from).toBe("rewrite");
    expect(held.warnings.join()).toMatch(/no mailbox configured/);
    const sending = loadConfig({
      env: { SLUICE_MAILBOX: "printer@contoso.com", SLUICE_PASSWORD: "pw" },
      cwd: dir,
    });
    expect(sending.config.mailboxes["printer@contoso.com"]?.password).toBe("pw");
  });

  it("finds the file from --config, else SLUICE_CONFIG, else ./sluice.yaml", () => {
    const dir = mkdtempSync(join(tmpdir(), "sluice-find-"));
    expect(findConfigFile(undefined, {}, dir)).toBeUndefined();
    writeFileSync(join(dir, "sluice.yaml"), "{}");
    expect(findConfigFile(undefined, {}, dir)).toBe(join(dir, "sluice.yaml"));
    expect(findConfigFile(undefined, { SLUICE_CONFIG: "/etc/other.yaml" }, dir)).toBe("/etc/other.yaml");
    expect(findConfigFile("x.yaml", { SLUICE_CONFIG: "/etc/other.yaml" }, dir)).toBe(join(dir, "x.yaml"));
  });

  it("masks every secret when printing the effective configuration", () => {
    const file = writeConfig(example);
    const { config } = loadConfig({
      file,
      env: { SCANNER_PASSWORD: "s3cret", ERP_RELAY_PASSWORD: "erp-pass" },
    });
    const printed = describeConfig(config);
    expect(printed).not.toMatch(/s3cret|erp-pass|hunter2/);
    expect(printed).toMatch(/password: "\*{8}"/);
  });
});

describe("sluice check-config", () => {
  it("prints the effective configuration with secrets masked and exits 0", async () => {
    const file = writeConfig(example);
    const { stdout } = await run("node", ["--import", "tsx", cli, "check-config", "--config", file], {
      env: { ...process.env, SCANNER_PASSWORD: "s3cret", ERP_RELAY_PASSWORD: "erp-pass" },
    });
    expect(stdout).toMatch(/valid/);
    expect(stdout).toMatch(/floor2-printers/);
    expect(stdout).not.toMatch(/s3cret|erp-pass|hunter2/);
  });

  it("lists every problem and exits 2 on an invalid file", async () => {
    const file = writeConfig('mailboxes:\n  "a@b": {}\nmaxMessageSize: huge\n');
    const result = await run("node", ["--import", "tsx", cli, "check-config", "--config", file]).catch(
      (e) => e,
    );
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/mailboxes\."a@b"\.password: required/);
    expect(result.stderr).toMatch(/maxMessageSize: not a size/);
  });
});
