import type { Redis } from "ioredis";

export type PauseKind = "auth" | "quota" | "manual";

export interface MailboxPause {
  kind: PauseKind;
  reason: string;
  /** Epoch ms when the pause ends by itself (a manual pause is renewed by whoever set it). */
  until: number;
}

/**
 * Why a mailbox's mail is waiting, shared by every relay process: `<prefix>:pause:<mailbox>`, expiring at `until`.
 * A paused mailbox keeps its mail queued; it is never failed for it.
 */
export class MailboxPauses {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  /** Where the mailbox's pause is kept (read by MailboxBudget.startDelivery too: parse() its value). */
  keyOf(mailbox: string): string {
    return `${this.prefix}:pause:${mailbox}`;
  }

  parse(value: string): MailboxPause {
    return JSON.parse(value) as MailboxPause;
  }

  /** Pauses the mailbox for durationMs; returns false when it was already paused (so only one process logs it). */
  async pause(mailbox: string, kind: PauseKind, reason: string, durationMs: number): Promise<boolean> {
    const pause: MailboxPause = { kind, reason, until: Date.now() + durationMs };
    const set = await this.redis.set(
      this.keyOf(mailbox),
      JSON.stringify(pause),
      "PX",
      Math.max(1, durationMs),
      "NX",
    );
    return set === "OK";
  }

  /** Sets the pause whatever was there before (an operator's pause replaces an automatic one). */
  async replace(mailbox: string, kind: PauseKind, reason: string, durationMs: number): Promise<void> {
    const pause: MailboxPause = { kind, reason, until: Date.now() + durationMs };
    await this.redis.set(this.keyOf(mailbox), JSON.stringify(pause), "PX", Math.max(1, durationMs));
  }

  async get(mailbox: string): Promise<MailboxPause | null> {
    const value = await this.redis.get(this.keyOf(mailbox));
    return value ? this.parse(value) : null;
  }

  async resume(mailbox: string): Promise<boolean> {
    return (await this.redis.del(this.keyOf(mailbox))) === 1;
  }
}
