import type { Redis } from "ioredis";
import type { Logger } from "../logger.js";

/** One mailbox's queue as the scheduler sees it (implemented by MailboxDispatcher). */
export interface DeliveryLane {
  /** The queue name: what wakes are addressed to. */
  readonly name: string;
  /** Deliveries this lane may have in progress at once in this process (it may change from one look to the next). */
  readonly capacity: number;
  /**
   * Locks the next ready job and delivers it; resolves when the turn is over. `found()` is called as soon as a
   * job is locked; `more()` after each delivery: true lets the same turn take the lane's next job at once. When
   * no job was ready, `dueAt` says when the earliest held one is (0: none known).
   */
  turn(token: string, calls: TurnCalls): Promise<{ dueAt: number }>;
  /** Another process waits for one of this mailbox's connection slots (see ConnectionPool.yieldIdle). */
  slotWanted(): void;
  /** A reply (here or in another process) or an operator stopped the mailbox: messages started before now are not sent. */
  stopped(): void;
}

export interface TurnCalls {
  found(): void;
  more(): boolean;
}

interface LaneState {
  lane: DeliveryLane;
  active: number;
  /** One look at the queue at a time: a second one would only find the same emptiness. */
  probing: boolean;
  /** When to look at the queue next (epoch ms); 0 = now. */
  dueAt: number;
  /** Wakes so far: one that comes while a look is under way may concern a job that look missed. */
  wakes: number;
  /**
   * Epoch ms before which the lane starts no turn and takes no next job (backOff): its next message would only
   * be held again. A wake ends it; a nudge does not.
   */
  notBefore: number;
}

export interface DeliverySchedulerOptions {
  /** Deliveries in progress at once in this process, all mailboxes together. */
  concurrency: number;
  /** Longest time an idle lane goes unchecked (catches what no wake announced: stalled jobs, other processes' holds). */
  pollIntervalMs?: number;
  /** A connection to put in subscriber mode for wakes from other processes; none: local wakes and polling only. */
  subscriber?: Redis;
  /**
   * Pub/sub channels: of wakes (Spool.wakeChannel), of messages given back (Spool.givenBackChannel), of
   * connection slots wanted (Spool.slotWantedChannel) and of mailboxes stopped (Spool.stoppedChannel).
   */
  channels: { wake: string; givenBack: string; slotWanted: string; stopped: string };
  logger: Logger;
}

/**
 * Hands the turns of every mailbox's queue to a bounded number of deliveries: one scheduler per process
 * instead of one blocking queue worker (and one Redis connection) per mailbox. A lane is looked at when a
 * wake names it (a message was queued here or in another process), when its earliest held message is due,
 * and at least every pollInterval. Lanes take turns round-robin, so a mailbox with a backlog cannot keep
 * the others waiting when the process is at its concurrency.
 */
export class DeliveryScheduler {
  private readonly lanes = new Map<string, LaneState>();
  private order: LaneState[] = [];
  private cursor = 0;
  private active = 0;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = 0;
  private pumping = false;
  private pumpAgain = false;
  private closed = false;
  private tokens = 0;
  private readonly pollIntervalMs: number;
  private readonly id = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;

  constructor(private readonly options: DeliverySchedulerOptions) {
    this.pollIntervalMs = options.pollIntervalMs ?? 5_000;
    const { subscriber, channels } = options;
    if (subscriber) {
      subscriber.on("message", (from: string, name: string) => {
        if (from === channels.wake) this.wake(name);
        else if (from === channels.givenBack) this.nudge(name);
        else if (from === channels.slotWanted && !this.closed) this.lanes.get(name)?.lane.slotWanted();
        else if (from === channels.stopped) this.lanes.get(name)?.lane.stopped();
      });
      // a wake published while we were disconnected is lost: look at every lane once
      subscriber.on("ready", () => this.wakeAll());
      subscriber
        .subscribe(channels.wake, channels.givenBack, channels.slotWanted, channels.stopped)
        .catch((err: Error) => {
          options.logger.warn({ err: err.message }, "cannot subscribe to queue wakes: polling only");
        });
    }
  }

  add(lane: DeliveryLane): void {
    const state: LaneState = { lane, active: 0, probing: false, dueAt: 0, wakes: 0, notBefore: 0 };
    this.lanes.set(lane.name, state);
    this.order.push(state);
    this.schedule();
  }

  /** Something was queued for the lane (or made ready, or a pause lifted): look at it now, back-off or not. */
  wake(name: string): void {
    const state = this.lanes.get(name);
    if (!state) return;
    state.notBefore = 0;
    this.nudge(name);
  }

  /** A message of the lane was given back by a process without a slot: look at it now unless backing off. */
  nudge(name: string): void {
    const state = this.lanes.get(name);
    if (!state) return;
    state.dueAt = 0;
    state.wakes++;
    this.schedule();
  }

  /**
   * The lane's next message would only be held until `until` (epoch ms) as well (the mailbox's budget is spent,
   * it is paused, or every slot is held elsewhere): no turn and no next job before then, unless a wake comes.
   * At most pollInterval: a wake that was lost (an operator's resume whose publish failed) costs no more
   * than it did without back-offs.
   */
  backOff(name: string, until: number): void {
    const state = this.lanes.get(name);
    if (!state) return;
    const end = Math.min(until, Date.now() + this.pollIntervalMs);
    state.notBefore = Math.max(state.notBefore, end);
    this.arm(end);
  }

  /** The lane holds a message until `at` (epoch ms): look at it then at the latest. */
  wakeAt(name: string, at: number): void {
    const state = this.lanes.get(name);
    if (!state) return;
    if (at < state.dueAt) state.dueAt = at;
    this.arm(at);
  }

  private wakeAll(): void {
    for (const state of this.order) {
      state.dueAt = 0;
      state.notBefore = 0;
    }
    this.schedule();
  }

  /** Stops starting deliveries; running ones finish on their own (their lanes wait for them). */
  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.closed) return;
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    queueMicrotask(() => this.pump());
  }

  /** The lane could start a turn now if it were due. */
  private hasRoom(state: LaneState): boolean {
    return !state.probing && state.active < state.lane.capacity;
  }

  private eligible(state: LaneState, now: number): boolean {
    return this.hasRoom(state) && Math.max(state.dueAt, state.notBefore) <= now;
  }

  /** Starts a turn for every lane that is due and has room, round-robin, while the process has room. */
  private pump(): void {
    try {
      do {
        this.pumpAgain = false;
        const now = Date.now();
        const count = this.order.length;
        for (let seen = 0; seen < count && this.active < this.options.concurrency && !this.closed; seen++) {
          const state = this.order[this.cursor % count] as LaneState;
          this.cursor = (this.cursor + 1) % count;
          if (this.eligible(state, now)) this.startTurn(state);
        }
      } while (this.pumpAgain && !this.closed);
    } finally {
      this.pumping = false;
      this.armNextDue();
    }
  }

  private startTurn(state: LaneState): void {
    state.probing = true;
    state.active++;
    this.active++;
    const token = `${this.id}:${this.tokens++}`;
    const wakes = state.wakes;
    let found = false;
    const calls: TurnCalls = {
      found: () => {
        if (found) return;
        // the queue had a job: the next look may start at once, beside this delivery
        found = true;
        state.probing = false;
        state.dueAt = 0;
        this.schedule();
      },
      // at the process's limit with other lanes due, the turn ends and its slot goes round; a lane whose
      // capacity went down ends turns until it is within it, and one whose capacity went up gets more
      more: () => {
        // (asked by BullMQ after a held job too: a lane that backs off takes no next job until notBefore)
        if (this.closed || state.active > state.lane.capacity || state.notBefore > Date.now()) return false;
        if (this.eligible(state, Date.now())) this.schedule();
        return !(this.active >= this.options.concurrency && this.othersDue(state));
      },
    };
    state.lane
      .turn(token, calls)
      .then(
        ({ dueAt }) => {
          if (!found && state.wakes === wakes) {
            const idleUntil = Date.now() + this.pollIntervalMs;
            state.dueAt = dueAt > 0 ? Math.min(dueAt, idleUntil) : idleUntil;
          } else {
            state.dueAt = 0;
          }
        },
        (err: Error) => {
          this.options.logger.warn({ err: err.message, mailbox: state.lane.name }, "queue turn failed");
          state.dueAt = Date.now() + 1_000;
        },
      )
      .finally(() => {
        if (!found) state.probing = false;
        state.active--;
        this.active--;
        this.schedule();
      });
  }

  private othersDue(except: LaneState): boolean {
    const now = Date.now();
    return this.order.some((s) => s !== except && this.eligible(s, now));
  }

  private armNextDue(): void {
    // at the limit, a turn that ends calls schedule(): no timer needed (one would spin)
    if (this.active >= this.options.concurrency) return;
    let next = Number.POSITIVE_INFINITY;
    for (const state of this.order) {
      const due = Math.max(state.dueAt, state.notBefore);
      if (this.hasRoom(state) && due < next) next = due;
    }
    if (Number.isFinite(next)) this.arm(next);
  }

  private arm(due: number): void {
    if (this.closed) return;
    // a hold of a year (a manual pause) is looked at again by the poll long before: no timer beyond it
    const at = Math.min(due, Date.now() + this.pollIntervalMs);
    if (this.timer && this.timerAt <= at) return;
    clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.timerAt = 0;
        this.schedule();
      },
      Math.max(0, at - Date.now()),
    );
    this.timer.unref?.();
  }
}
