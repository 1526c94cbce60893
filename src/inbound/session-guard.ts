import { normalizeAddress } from "./client-policy.js";
import { SmtpReply } from "./smtp-reply.js";

export interface AuthThrottleOptions {
  /** Failed AUTH attempts from one address within windowMs before it is refused. */
  maxFailures: number;
  windowMs: number;
  /** How long an address is refused after maxFailures. */
  blockMs: number;
  /** Each failure's reply is delayed by this much per earlier failure (capped at 5 s). */
  delayStepMs: number;
}

export interface SessionGuardOptions {
  authThrottle: AuthThrottleOptions;
  now?: () => number;
}

interface FailureRecord {
  count: number;
  firstAt: number;
  blockedUntil: number;
}

/** Cap on remembered addresses, so a flood of spoofed sources cannot grow memory without bound. */
const MAX_TRACKED_ADDRESSES = 10_000;

/**
 * Protects the front door from one misbehaving source without affecting others: concurrent sessions per address,
 * and failed AUTH attempts slowed down and then refused for a while. Counts live in this process only.
 */
export class SessionGuard {
  private readonly sessions = new Map<string, number>();
  private readonly failures = new Map<string, FailureRecord>();
  private readonly now: () => number;

  constructor(private readonly options: SessionGuardOptions) {
    this.now = options.now ?? Date.now;
  }

  private static key(address: string): string {
    return normalizeAddress(address)?.toString() ?? address;
  }

  /** Counts a new session; returns the 421 reply when the address already has `limit` open. */
  admit(address: string, limit: number): SmtpReply | undefined {
    const key = SessionGuard.key(address);
    const open = this.sessions.get(key) ?? 0;
    if (open >= limit) {
      return new SmtpReply(421, "4.7.0", "Too many connections from your address, try again later");
    }
    this.sessions.set(key, open + 1);
    return undefined;
  }

  leave(address: string): void {
    const key = SessionGuard.key(address);
    const open = (this.sessions.get(key) ?? 1) - 1;
    if (open <= 0) this.sessions.delete(key);
    else this.sessions.set(key, open);
  }

  /** The 454 reply while the address is blocked for failed AUTH attempts. */
  authBlocked(address: string): SmtpReply | undefined {
    const record = this.failures.get(SessionGuard.key(address));
    if (!record || record.blockedUntil <= this.now()) return undefined;
    const minutes = Math.ceil((record.blockedUntil - this.now()) / 60_000);
    return new SmtpReply(
      454,
      "4.7.0",
      `Too many failed authentication attempts from your address, try again in ${minutes} minute${minutes === 1 ? "" : "s"}`,
    );
  }

  /** Records a failed AUTH; returns how long to wait before answering it. */
  authFailed(address: string): number {
    const key = SessionGuard.key(address);
    const { maxFailures, windowMs, blockMs, delayStepMs } = this.options.authThrottle;
    const now = this.now();
    let record = this.failures.get(key);
    if (!record || now - record.firstAt > windowMs) {
      if (!record && this.failures.size >= MAX_TRACKED_ADDRESSES) this.forgetOldest();
      record = { count: 0, firstAt: now, blockedUntil: 0 };
      this.failures.set(key, record);
    }
    record.count++;
    if (record.count >= maxFailures) record.blockedUntil = now + blockMs;
    return Math.min(5_000, (record.count - 1) * delayStepMs);
  }

  authSucceeded(address: string): void {
    this.failures.delete(SessionGuard.key(address));
  }

  private forgetOldest(): void {
    const oldest = this.failures.keys().next();
    if (!oldest.done) this.failures.delete(oldest.value);
  }
}
