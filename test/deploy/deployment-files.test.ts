import { accessSync, constants, readFileSync, statSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";

const root = fileURLToPath(new URL("../../", import.meta.url));
const read = (relativePath: string): string => readFileSync(`${root}${relativePath}`, "utf8");

interface Healthcheck {
  test?: string | string[];
}

interface Service {
  image?: string;
  build?: string | { context?: string; dockerfile?: string };
  command?: string | string[];
  depends_on?: string[] | Record<string, { condition?: string }>;
  environment?: string[] | Record<string, string>;
  volumes?: Array<string | { type?: string; source?: string; target?: string; read_only?: boolean }>;
  ports?: Array<string | number | { target?: number; published?: string | number }>;
  healthcheck?: Healthcheck;
  restart?: string;
}

interface ComposeFile {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
}

const compose = parse(read("docker-compose.yml")) as ComposeFile;

function service(name: string): Service {
  const found = compose.services[name];
  if (!found) throw new Error(`docker-compose.yml has no service "${name}"`);
  return found;
}

function commandLine(svc: Service): string {
  const { command } = svc;
  return Array.isArray(command) ? command.join(" ") : (command ?? "");
}

function healthcheckText(svc: Service): string {
  const test = svc.healthcheck?.test;
  return Array.isArray(test) ? test.join(" ") : (test ?? "");
}

/** Volume mounts as "source:target[:mode]" strings, whichever syntax the file uses. */
function mounts(svc: Service): string[] {
  return (svc.volumes ?? []).map((v) =>
    typeof v === "string" ? v : `${v.source ?? ""}:${v.target ?? ""}${v.read_only ? ":ro" : ""}`,
  );
}

function nonCommentLines(text: string): string[] {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
}

describe("docker-compose.yml", () => {
  it("runs redis 7 with an append-only file fsynced on every write", () => {
    const redis = service("redis");
    expect(redis.image).toMatch(/^redis:7/);
    expect(commandLine(redis)).toMatch(/--appendonly yes\b/);
    expect(commandLine(redis)).toMatch(/--appendfsync always\b/);
  });

  it("never lets redis evict queued mail", () => {
    expect(commandLine(service("redis"))).toMatch(/--maxmemory-policy noeviction\b/);
  });

  it("keeps redis data on a named volume mounted at /data", () => {
    const dataMount = mounts(service("redis")).find((m) => m.split(":")[1] === "/data");
    expect(dataMount).toBeDefined();
    const volumeName = dataMount?.split(":")[0] ?? "";
    expect(Object.keys(compose.volumes ?? {})).toContain(volumeName);
  });

  it("health-checks redis with redis-cli ping", () => {
    expect(healthcheckText(service("redis"))).toContain("redis-cli ping");
  });

  it("builds the sluice service from the Dockerfile", () => {
    const { build } = service("sluice");
    expect(build).toBeDefined();
    if (typeof build === "string") {
      expect(build).toBe(".");
    } else {
      expect(build?.context ?? ".").toBe(".");
      expect(build?.dockerfile ?? "Dockerfile").toBe("Dockerfile");
    }
  });

  it("starts sluice only once redis is healthy", () => {
    expect(service("sluice").depends_on).toMatchObject({ redis: { condition: "service_healthy" } });
  });

  it("mounts ./sluice.yaml read-only where SLUICE_CONFIG points", () => {
    const sluice = service("sluice");
    expect(mounts(sluice)).toContain("./sluice.yaml:/etc/sluice/sluice.yaml:ro");
    expect(sluice.environment).toMatchObject({ SLUICE_CONFIG: "/etc/sluice/sluice.yaml" });
  });

  it("keeps the data directory on a named volume", () => {
    const dataMount = mounts(service("sluice")).find((m) => m.split(":")[1] === "/var/lib/sluice");
    expect(Object.keys(compose.volumes ?? {})).toContain(dataMount?.split(":")[0]);
  });

  it("publishes SMTP port 2525", () => {
    expect(service("sluice").ports?.map(String)).toContain("2525:2525");
  });

  it("health-checks sluice by expecting a 220 greeting on port 2525", () => {
    const text = healthcheckText(service("sluice"));
    expect(text).toContain("2525");
    expect(text).toContain("220");
  });

  it("restarts both services unless they were stopped", () => {
    expect(service("redis").restart).toBe("unless-stopped");
    expect(service("sluice").restart).toBe("unless-stopped");
  });

  it("tells the reader that the config must use redis://redis:6379/0", () => {
    expect(read("docker-compose.yml")).toContain("redis://redis:6379/0");
  });
});

describe("Dockerfile", () => {
  const lines = nonCommentLines(read("Dockerfile"));

  it("builds in one node:20-bookworm-slim stage and runs in another", () => {
    const froms = lines.filter((line) => /^FROM\s/i.test(line));
    expect(froms).toHaveLength(2);
    for (const from of froms) expect(from).toMatch(/^FROM node:20-bookworm-slim AS \w+$/i);
    expect(lines.some((line) => /^COPY --from=/i.test(line))).toBe(true);
  });

  it("runs as a non-root user", () => {
    const users = lines.filter((line) => /^USER\s/i.test(line));
    expect(users.length).toBeGreaterThan(0);
    const lastUser = users.at(-1)?.split(/\s+/)[1] ?? "";
    expect(lastUser).not.toMatch(/^(root|0)(:|$)/);
  });

  it("exposes 2525, has a health check and starts the CLI with the mounted config", () => {
    expect(lines).toContain("EXPOSE 2525");
    expect(lines.some((line) => line.startsWith("HEALTHCHECK "))).toBe(true);
    expect(lines).toContain('ENTRYPOINT ["node", "--single-threaded-gc", "dist/cli.js"]');
    expect(lines).toContain('CMD ["start", "--config", "/etc/sluice/sluice.yaml"]');
  });

  it("installs dependencies reproducibly and drops dev dependencies", () => {
    const text = lines.join("\n");
    expect(text).toContain("npm ci");
    expect(text).toContain("npm run build");
    expect(text).toContain("npm prune --omit=dev");
  });

  it("copies the dependency patches in before npm ci applies them (postinstall: patch-package)", () => {
    const copyPatches = lines.findIndex((line) => /^COPY patches \.\/patches$/.test(line));
    expect(copyPatches).toBeGreaterThanOrEqual(0);
    expect(copyPatches).toBeLessThan(lines.findIndex((line) => /^RUN npm ci/.test(line)));
    expect(JSON.parse(read("package.json")).scripts.postinstall).toBe("patch-package");
  });
});

describe(".dockerignore", () => {
  it("keeps dependencies, build output, data and git history out of the build context", () => {
    const entries = nonCommentLines(read(".dockerignore"));
    for (const entry of ["node_modules", "dist", "data", ".git"]) expect(entries).toContain(entry);
  });
});

describe("examples/sluice.example.yaml", () => {
  const example = parse(read("examples/sluice.example.yaml")) as Record<string, unknown>;

  it("is valid YAML describing listeners, upstream, mailboxes and clients", () => {
    expect(example).toMatchObject({
      listen: [{ port: 2525 }],
      upstream: { host: "smtp.office365.com", port: 587, tls: "starttls" },
    });
  });

  it("takes the mailbox password from the environment, not from the file", () => {
    const envReference = ["$", "{SCANNER_PASSWORD}"].join("");
    expect(example.mailboxes).toEqual({ "scanner@contoso.com": { password: envReference } });
  });

  it("allows one printer network and one application that logs in", () => {
    const clients = example.clients as Array<Record<string, unknown>>;
    expect(clients).toHaveLength(2);
    expect(clients[0]).toMatchObject({ networks: ["10.0.2.0/24"], mailbox: "scanner@contoso.com" });
    expect(clients[1]).toMatchObject({ mailbox: "scanner@contoso.com" });
    expect(clients[1]?.username).toEqual(expect.any(String));
    expect(clients[1]?.password).toMatch(/^\$\{[A-Z0-9_]+\}$/);
  });
});

describe("examples/sluice.service", () => {
  const unit = read("examples/sluice.service");

  it("runs the CLI as the sluice user with secrets from an environment file", () => {
    expect(unit).toMatch(/^User=sluice$/m);
    expect(unit).toMatch(/^WorkingDirectory=\/opt\/sluice$/m);
    expect(unit).toMatch(
      /^ExecStart=\/usr\/bin\/node --single-threaded-gc dist\/cli\.js start --config \/etc\/sluice\/sluice\.yaml$/m,
    );
    expect(unit).toMatch(/^EnvironmentFile=\/etc\/sluice\/sluice\.env$/m);
  });

  it("is sandboxed with only the data directory writable", () => {
    expect(unit).toMatch(/^NoNewPrivileges=yes$/m);
    expect(unit).toMatch(/^ProtectSystem=strict$/m);
    expect(unit).toMatch(/^ReadWritePaths=\/var\/lib\/sluice$/m);
  });
});

describe("package.json", () => {
  it("starts the relay as the Docker image and the systemd unit do: node with one GC thread", () => {
    const { scripts } = JSON.parse(read("package.json")) as { scripts: Record<string, string> };
    expect(scripts.start).toMatch(/ node --single-threaded-gc dist\/cli\.js start$/);
  });
});

describe(".ci/run", () => {
  const script = read(".ci/run");

  it("is an executable bash script that stops at the first error", () => {
    accessSync(`${root}.ci/run`, constants.X_OK);
    expect(statSync(`${root}.ci/run`).mode & 0o111).not.toBe(0);
    expect(script.startsWith("#!/usr/bin/env bash\n") || script.startsWith("#!/bin/bash\n")).toBe(true);
    expect(script).toContain("set -euo pipefail");
  });

  it("installs its dependencies with npm ci and ends by running npm test", () => {
    const commands = nonCommentLines(script);
    expect(commands).toContain("npm ci --no-audit --no-fund");
    expect(commands.at(-1)).toBe("npm test");
  });
});
