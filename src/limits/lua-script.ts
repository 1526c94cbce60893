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

  /**
   * Loads `./lua/<name>.lua`. A line `--#include <other>` is replaced by the source of `./lua/<other>.lua`, so
   * one script can run another's logic inside its own (Redis scripts cannot call each other).
   */
  static load(name: string): LuaScript {
    return new LuaScript(name, readSource(name));
  }

  async run(redis: Redis, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> {
    return this.call(redis, keys, args, false);
  }

  /** Like run(), with every bulk string of the reply as a Buffer (binary-safe: message bodies). */
  async runBuffer(
    redis: Redis,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<unknown> {
    return this.call(redis, keys, args, true);
  }

  private async call(
    redis: Redis,
    keys: readonly string[],
    args: readonly (string | number)[],
    buffers: boolean,
  ): Promise<unknown> {
    const argv = [keys.length, ...keys, ...args];
    const send = (command: string, script: string) =>
      buffers ? redis.callBuffer(command, script, ...argv) : redis.call(command, script, ...argv);
    try {
      return await send("EVALSHA", this.sha);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith("NOSCRIPT")) throw error;
      return await send("EVAL", this.source);
    }
  }
}

function readSource(name: string): string {
  const source = readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), "utf8");
  return source.replace(/^--#include ([\w-]+)$/gm, (_line, other: string) => readSource(other));
}
