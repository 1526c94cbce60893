/** The envelope of the transaction a fault is matched against. */
export interface TransactionInfo {
  mailFrom: string;
  /** Recipients so far; at "rcpt" it includes the recipient being answered, at "mail" it is empty. */
  rcptTo: string[];
  /** The authenticated mailbox. */
  user: string;
}

/** Where in a transaction a fault fires: the reply to MAIL FROM, to RCPT TO, or to the end of DATA. */
export type FaultStage = "mail" | "rcpt" | "data";

/** One scripted misbehaviour of the fake upstream. Without reply and drop it only delays. */
export interface Fault {
  /** Only transactions for which this returns true. Default: any. */
  match?: (tx: TransactionInfo) => boolean;
  /** Stage it fires at. Default "data". */
  at?: FaultStage;
  /** With at: "rcpt", only this recipient (case-insensitive). Default: any recipient. */
  rcpt?: string;
  /** Reply instead of the normal one, written exactly as given, e.g. { code: 451, message: "4.7.0 ..." }. */
  reply?: { code: number; message: string };
  /** Destroy the socket instead of replying. Default false. */
  drop?: boolean;
  /** Wait this long (ms) before the normal or scripted reply. Default 0. */
  delayMs?: number;
}

/** Faults in the order they were scripted; each is taken (consumed) by the first transaction it matches. */
export class FaultScript {
  private readonly faults: Fault[] = [];

  get size(): number {
    return this.faults.length;
  }

  add(...faults: Fault[]): void {
    this.faults.push(...faults);
  }

  clear(): void {
    this.faults.length = 0;
  }

  /** Removes and returns the first fault for `stage` that matches `tx` (and `rcpt` at "rcpt"). */
  take(stage: FaultStage, tx: TransactionInfo, rcpt?: string): Fault | undefined {
    const index = this.faults.findIndex(
      (fault) =>
        (fault.at ?? "data") === stage &&
        (stage !== "rcpt" || fault.rcpt === undefined || fault.rcpt.toLowerCase() === rcpt?.toLowerCase()) &&
        (fault.match === undefined || fault.match(tx)),
    );
    if (index < 0) return undefined;
    return this.faults.splice(index, 1)[0];
  }
}
