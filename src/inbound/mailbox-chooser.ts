import type { Limits } from "../config/schema.js";
import type { BudgetUsage, MailboxBudget } from "../limits/mailbox-budget.js";

/** How busy a mailbox is right now. */
export interface MailboxLoad {
  mailbox: string;
  usage: BudgetUsage;
  limits: Limits;
  /** Messages in its queue not yet delivered (waiting, held for budget, being sent). */
  queued: number;
}

export interface MailboxChooserOptions {
  budget: MailboxBudget;
  limitsOf(mailbox: string): Limits;
  queuedCount(mailbox: string): Promise<number>;
}

/** Picks the pool member a message goes to, from the budgets and queues shared by the cluster. */
export class MailboxChooser {
  constructor(private readonly options: MailboxChooserOptions) {}

  async load(mailbox: string): Promise<MailboxLoad> {
    const [usage, queued] = await Promise.all([
      this.options.budget.usage(mailbox),
      this.options.queuedCount(mailbox),
    ]);
    return { mailbox, usage, queued, limits: this.options.limitsOf(mailbox) };
  }

  /** The load of the chosen mailbox among `candidates` (at least one) for a message of `recipients`. */
  async choose(candidates: readonly string[], recipients: number): Promise<MailboxLoad> {
    const loads = await Promise.all(candidates.map((mailbox) => this.load(mailbox)));
    return pickMailbox(loads, recipients);
  }
}

/**
 * The member with the most free budget right now: messages left in its minute window minus messages already
 * queued for it. Members whose day window cannot take the recipients come last. Ties: fewest queued, then the
 * order given.
 */
export function pickMailbox(loads: readonly MailboxLoad[], recipients: number): MailboxLoad {
  const score = (load: MailboxLoad) => ({
    fitsToday: load.usage.recipientsLastDay + recipients <= load.limits.recipientsPerDay,
    free: load.limits.messagesPerMinute - load.usage.messagesLastMinute - load.queued,
  });
  let best: MailboxLoad | undefined;
  for (const load of loads) {
    if (!best) {
      best = load;
      continue;
    }
    const a = score(load);
    const b = score(best);
    if (a.fitsToday !== b.fitsToday) {
      if (a.fitsToday) best = load;
    } else if (a.free !== b.free) {
      if (a.free > b.free) best = load;
    } else if (load.queued < best.queued) {
      best = load;
    }
  }
  if (!best) throw new Error("pickMailbox: no candidates");
  return best;
}
