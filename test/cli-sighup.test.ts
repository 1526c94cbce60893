import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, inject, it } from "vitest";
import { uniquePrefix, waitFor } from "./support/relay.js";
import { startRelayProcess, writeConfigFile } from "./support/relay-process.js";

const redisUrl = inject("redisUrl");

describe("sluice start", () => {
  it("reloads the inbound TLS certificate on SIGHUP and keeps running", async () => {
    const configFile = writeConfigFile({
      listen: [{ port: 0, host: "127.0.0.1" }],
      redis: redisUrl,
      redisPrefix: uniquePrefix(),
      dataDir: mkdtempSync(join(tmpdir(), "sluice-data-")),
      mailboxes: { "scanner@contoso.com": { password: "pw" } },
      clients: [{ name: "loopback", networks: ["127.0.0.0/8"] }],
    });
    const relay = startRelayProcess(configFile);
    try {
      await relay.port();
      relay.child.kill("SIGHUP");
      await waitFor(
        () => relay.output.some((l) => l.includes("inbound TLS certificate reloaded")),
        10_000,
        "reload logged",
      );
      expect(relay.child.exitCode).toBeNull();
    } finally {
      expect(await relay.stop()).toBe(0);
    }
  }, 60_000);
});
