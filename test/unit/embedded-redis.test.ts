import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { RedisServerMissingError, startEmbeddedRedis } from "../../src/spool/embedded-redis.js";

describe("the embedded Redis", () => {
  it("says redis-server is missing and names the package to install", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sluice-noredis-"));
    const error = await startEmbeddedRedis(
      dir,
      pino({ level: "silent" }),
      "redis-server-that-does-not-exist",
    ).catch((e) => e);
    expect(error).toBeInstanceOf(RedisServerMissingError);
    expect(error.message).toMatch(/apt-get install redis-server/);
  });
});
