import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Redis } from "ioredis";

/**
 * One Lua script from `./lua/<name>.lua`, run with EVALSHA and, when Redis does not know it yet (fresh
 * server, SCRIPT FLUSH), with EVAL, which also caches it. Does not touch the Redis instance it is given.
 */
export class LuaScript {
  private readonly sha: string;

  private constructor(
    readonly name: string,
    private readonly source: string,
  ) {
    this.sha = createHash("sha1").update(source).digest("hex");
  }

  static load(name: string): LuaScript {
    return new LuaScript(name, readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), "utf8"));
  }

  async run(redis: Redis, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    try {
      return await redis.evalsha(this.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith("NOSCRIPT")) throw error;
      return await redis.eval(this.source, keys.length, ...keys, ...args);
    }
  }
}
