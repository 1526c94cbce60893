import type { BudgetLimits, BudgetUsage } from "./mailbox-budget.js";

export interface DrainEstimateInput {
  /** Messages waiting in the mailbox's queue (this one included). */
  queuedMessages: number;
  /** Recipients of those messages, when known; otherwise only the message budget is considered. */
  queuedRecipients?: number;
  limits: BudgetLimits;
  /** What the windows hold now. */
  usage: BudgetUsage;
  /** Window lengths, ms. Defaults: a minute and a day. */
  minuteMs?: number;
  dayMs?: number;
}

/**
 * How long until a mailbox's queue is sent, given its budgets alone (ms): what still fits the current
 * windows goes now, the rest at the full rate of each further window. Ignores delivery time and
 * connection limits, so it is a lower bound when the upstream is slow and exact when the budget binds.
 */
export function estimateDrainMs(input: DrainEstimateInput): number {
  const { limits, usage } = input;
  const minuteMs = input.minuteMs ?? 60_000;
  const dayMs = input.dayMs ?? 86_400_000;
  const freeMessages = Math.max(0, limits.messagesPerMinute - usage.messagesLastMinute);
  const laterMessages = Math.max(0, input.queuedMessages - freeMessages);
  const messagesMs = Math.ceil(laterMessages / limits.messagesPerMinute) * minuteMs;
  if (input.queuedRecipients === undefined) return messagesMs;
  const freeRecipients = Math.max(0, limits.recipientsPerDay - usage.recipientsLastDay);
  const laterRecipients = Math.max(0, input.queuedRecipients - freeRecipients);
  const recipientsMs = Math.ceil(laterRecipients / limits.recipientsPerDay) * dayMs;
  return Math.max(messagesMs, recipientsMs);
}
