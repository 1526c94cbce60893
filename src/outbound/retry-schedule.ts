import type { Config } from "../config/schema.js";

export type RetryConfig = Config["retry"];

/** Delay before retry number `attempt` (1-based): exponential from firstDelay, capped at maxDelay, +-25% jitter. */
export function retryDelay(
  retry: Pick<RetryConfig, "firstDelay" | "factor" | "maxDelay">,
  attempt: number,
  random: () => number = Math.random,
): number {
  const base = Math.min(retry.maxDelay, retry.firstDelay * retry.factor ** Math.max(0, attempt - 1));
  return Math.round(base * (0.75 + random() * 0.5));
}
