import type { Redis } from "ioredis";
import { requireNonEmpty, requirePositiveInteger } from "./arguments.js";
import { limitKeys } from "./keys.js";
import { LuaScript } from "./lua-script.js";
import { UNLIMITED } from "./unlimited.js";

export interface MailboxBudgetOptions {
  /**
   * Length of the "per minute" window, ms. Default 60 000. Only tests should change it, to watch the
   * window slide without waiting a real minute.
   */
  minuteMs?: number;
  /** Length of the "per day" window, ms. Default 86 400 000 (24 hours). Only tests should change it. */
  dayMs?: number;
}

export interface BudgetLimits {
  /** A whole number above zero, or UNLIMITED. */
  messagesPerMinute: number;
  /** A whole number above zero, or UNLIMITED. */
  recipientsPerDay: number;
}

export interface BudgetRequest {
  /** Names this take for refund(). Unique per attempt (e.g. job id + attempt); a recorded id is replaced. */
  id: string;
  /** Envelope recipients of the message (at least 1). */
  recipients: number;
}

export type BudgetName = "messagesPerMinute" | "recipientsPerDay";

export type BudgetDecision =
  | { ok: true }
  | {
      ok: false;
      /** The budget that holds the request back (the one that frees later, when both do). */
      budget: BudgetName;
      /** ms until enough of that window has freed for this request; -1 = never (larger than the limit). */
      retryInMs: number;
      /** What the window holds now (messages or recipients). */
      used: number;
      limit: number;
    };

/** What startDelivery() found: nothing is taken unless `taken`. */
export type DeliveryStart =
  | {
      kind: "paused";
      /** The pause's stored value (MailboxPauses.parse reads it). */
      pause: string;
    }
  | { kind: "no-body" }
  /** The body is not committed yet (Spool.commit): it may never be, and it expires in `expiresInMs`. */
  | { kind: "uncommitted"; expiresInMs: number }
  /** The job's queue lock is not the caller's any more: it must not be sent (another worker may have it). */
  | { kind: "lock-lost" }
  | { kind: "refused"; decision: Extract<BudgetDecision, { ok: false }> }
  | { kind: "taken"; body: Buffer };

/** Keys startDelivery() looks at besides the mailbox's windows. */
export interface DeliveryStartKeys {
  /** The mailbox's pause (MailboxPauses.keyOf). */
  pause: string;
  /** The message body (Spool.bodyKey). */
  body: string;
  /** The job's BullMQ lock and the caller's token: the body is read only while the caller holds the lock. */
  lock?: { key: string; token: string };
}

export interface BudgetUsage {
  messagesLastMinute: number;
  recipientsLastDay: number;
}

const TAKE = LuaScript.load("budget-take");
const REFUND = LuaScript.load("budget-refund");
const USAGE = LuaScript.load("budget-usage");
const DELIVERY_START = LuaScript.load("delivery-start");

/**
 * Exact sliding-window budgets per mailbox, shared by all relay processes through Redis: messages per
 * minute and recipients per 24 hours. Each take is a ZSET entry scored by Redis's clock; a running
 * recipient total is decremented as entries expire, so a take costs O(log n + expired entries). With both
 * limits UNLIMITED a take records nothing (usage() then counts nothing for it).
 */
export class MailboxBudget {
  private readonly minuteMs: number;
  private readonly dayMs: number;

  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    options: MailboxBudgetOptions = {},
  ) {
    this.minuteMs = options.minuteMs ?? 60_000;
    this.dayMs = options.dayMs ?? 86_400_000;
    requirePositiveInteger("minuteMs", this.minuteMs);
    requirePositiveInteger("dayMs", this.dayMs);
    // one ZSET serves both windows, purged at the day window's edge
    if (this.minuteMs > this.dayMs) throw new RangeError("minuteMs must not be longer than dayMs");
  }

  /**
   * Takes one message and `request.recipients` recipients from the mailbox's windows, both or neither.
   * When refused nothing is recorded and the decision says which budget holds and for how long.
   */
  async take(mailbox: string, request: BudgetRequest, limits: BudgetLimits): Promise<BudgetDecision> {
    const reply = await TAKE.run(this.redis, this.windowKeys(mailbox), this.takeArgs(request, limits));
    return parseDecision(reply);
  }

  /**
   * take(), in one round trip with what a delivery needs before its first batch: the mailbox is not paused,
   * and the message body, which is read only once the budget is taken. When paused, when the body is
   * missing and when refused, nothing is taken.
   */
  async startDelivery(
    mailbox: string,
    request: BudgetRequest,
    limits: BudgetLimits,
    keys: DeliveryStartKeys,
  ): Promise<DeliveryStart> {
    const reply = await DELIVERY_START.runBuffer(
      this.redis,
      [...this.windowKeys(mailbox), keys.pause, keys.body, keys.lock?.key ?? keys.body],
      [...this.takeArgs(request, limits), keys.lock?.token ?? ""],
    );
    if (!Array.isArray(reply)) throw new Error(`delivery-start.lua: unexpected reply ${String(reply)}`);
    const [outcome, value] = reply;
    if (outcome === 1 && Buffer.isBuffer(value)) return { kind: "taken", body: value };
    if (outcome === 2) return { kind: "paused", pause: String(value) };
    if (outcome === 3) return { kind: "no-body" };
    if (outcome === 4) return { kind: "lock-lost" };
    if (outcome === 5) return { kind: "uncommitted", expiresInMs: Number(value) };
    const decision = parseDecision(reply.map((v) => (Buffer.isBuffer(v) ? String(v) : v)));
    if (decision.ok) throw new Error("delivery-start.lua: a take without the body");
    return { kind: "refused", decision };
  }

  private takeArgs(request: BudgetRequest, limits: BudgetLimits): (string | number)[] {
    requireNonEmpty("request.id", request.id);
    requirePositiveInteger("request.recipients", request.recipients);
    return [
      request.id,
      request.recipients,
      luaLimit("limits.messagesPerMinute", limits.messagesPerMinute),
      luaLimit("limits.recipientsPerDay", limits.recipientsPerDay),
      this.minuteMs,
      this.dayMs,
    ];
  }

  /** Gives a take's message and recipients back (it was not sent after all). Unknown ids are ignored. */
  async refund(mailbox: string, id: string): Promise<void> {
    requireNonEmpty("id", id);
    await REFUND.run(this.redis, this.windowKeys(mailbox), [id]);
  }

  /** What the mailbox's windows hold right now, across all processes. */
  async usage(mailbox: string): Promise<BudgetUsage> {
    const reply = await USAGE.run(this.redis, this.windowKeys(mailbox), [this.minuteMs, this.dayMs]);
    if (!Array.isArray(reply) || reply.length !== 2) throw new Error(`budget-usage.lua: unexpected reply`);
    return { messagesLastMinute: Number(reply[0]), recipientsLastDay: Number(reply[1]) };
  }

  private windowKeys(mailbox: string): string[] {
    requireNonEmpty("mailbox", mailbox);
    const keys = limitKeys(this.prefix, mailbox);
    return [keys.takes, keys.recipientCosts, keys.recipientTotal];
  }
}

/** A limit as the Lua scripts take it: 0 for unlimited. */
function luaLimit(name: string, limit: number): number {
  if (limit === UNLIMITED) return 0;
  requirePositiveInteger(name, limit);
  return limit;
}

function parseDecision(reply: unknown): BudgetDecision {
  if (Array.isArray(reply) && reply[0] === 1) return { ok: true };
  if (Array.isArray(reply) && reply.length === 5 && isBudgetName(reply[1])) {
    return {
      ok: false,
      budget: reply[1],
      retryInMs: Number(reply[2]),
      used: Number(reply[3]),
      limit: Number(reply[4]),
    };
  }
  throw new Error(`budget-take.lua: unexpected reply ${JSON.stringify(reply)}`);
}

function isBudgetName(value: unknown): value is BudgetName {
  return value === "messagesPerMinute" || value === "recipientsPerDay";
}
