import type { Redis } from "ioredis";
import type { ClientConfig } from "../config/schema.js";
import { MailboxBudget } from "./mailbox-budget.js";
import { UNLIMITED } from "./unlimited.js";

export interface ClientQuotasOptions {
  /** Length of the "per hour" window, ms. Default 3 600 000. Only tests should change it. */
  hourMs?: number;
  /** Length of the "per day" window, ms. Default 86 400 000. Only tests should change it. */
  dayMs?: number;
}

export type QuotaName = "maxMessagesPerHour" | "maxRecipientsPerDay";

/** A quota the submission would exceed: which, its limit, and when it frees enough (ms; -1 never). */
export interface QuotaExceeded {
  quota: QuotaName;
  limit: number;
  used: number;
  retryInMs: number;
}

/**
 * Per-client submission quotas (messages per sliding hour, recipients per sliding day), shared by every
 * relay process through Redis. They reuse the mailbox budget's sliding-window script under a `client:`
 * key, with the message window stretched to an hour.
 */
export class ClientQuotas {
  private readonly windows: MailboxBudget;

  constructor(redis: Redis, prefix: string, options: ClientQuotasOptions = {}) {
    this.windows = new MailboxBudget(redis, prefix, {
      minuteMs: options.hourMs ?? 3_600_000,
      dayMs: options.dayMs ?? 86_400_000,
    });
  }

  /**
   * Would `recipients` more recipients (and one message) exceed a quota? Reads only; the decision that counts
   * is take(). Answers early, at MAIL FROM and RCPT TO.
   */
  async check(client: ClientConfig, recipients: number): Promise<QuotaExceeded | undefined> {
    if (!hasQuota(client)) return undefined;
    const usage = await this.windows.usage(key(client));
    const perHour = client.maxMessagesPerHour;
    if (perHour !== undefined && usage.messagesLastMinute + 1 > perHour) {
      return { quota: "maxMessagesPerHour", limit: perHour, used: usage.messagesLastMinute, retryInMs: 0 };
    }
    const perDay = client.maxRecipientsPerDay;
    if (perDay !== undefined && usage.recipientsLastDay + recipients > perDay) {
      return { quota: "maxRecipientsPerDay", limit: perDay, used: usage.recipientsLastDay, retryInMs: 0 };
    }
    return undefined;
  }

  /** Counts a message and its recipients against the client's quotas, both or neither. */
  async take(client: ClientConfig, id: string, recipients: number): Promise<QuotaExceeded | undefined> {
    if (!hasQuota(client)) return undefined;
    const decision = await this.windows.take(key(client), { id, recipients }, limitsOf(client));
    if (decision.ok) return undefined;
    const quota: QuotaName =
      decision.budget === "messagesPerMinute" ? "maxMessagesPerHour" : "maxRecipientsPerDay";
    return { quota, limit: decision.limit, used: decision.used, retryInMs: decision.retryInMs };
  }

  /** Gives a take back (the message was not queued after all). */
  async refund(client: ClientConfig, id: string): Promise<void> {
    if (hasQuota(client)) await this.windows.refund(key(client), id);
  }
}

function hasQuota(client: ClientConfig): boolean {
  return client.maxMessagesPerHour !== undefined || client.maxRecipientsPerDay !== undefined;
}

function limitsOf(client: ClientConfig) {
  return {
    messagesPerMinute: client.maxMessagesPerHour ?? UNLIMITED,
    recipientsPerDay: client.maxRecipientsPerDay ?? UNLIMITED,
  };
}

function key(client: ClientConfig): string {
  return `client:${client.name}`;
}

/** What a client is told when a quota holds its submission back. */
export function quotaText(client: string, exceeded: QuotaExceeded): string {
  const what = exceeded.quota === "maxMessagesPerHour" ? "messages per hour" : "recipients per day";
  const later =
    exceeded.retryInMs > 0
      ? `; try again in ${Math.ceil(exceeded.retryInMs / 60_000)} min`
      : "; try again later";
  return `Quota exceeded: client ${client} may send ${exceeded.limit} ${what} (${exceeded.quota})${later}`;
}
