import type { TestProject } from "vitest/node";
import { startPrivateRedis } from "./redis-server.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** URL of the one private redis-server shared by the whole test run (`inject("redisUrl")`). */
    redisUrl: string;
  }
}

/**
 * Vitest global setup: starts ONE private redis-server for the whole run (not append-only, so writes stay
 * fast) and provides its URL as `redisUrl`. Tests share it, so each test uses its own key prefix / queue
 * name. Tests that stop or kill Redis start their own with startPrivateRedis().
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const redis = await startPrivateRedis({ appendOnly: false });
  project.provide("redisUrl", redis.url);
  return async () => {
    await redis.destroy();
  };
}
