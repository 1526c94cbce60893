import { hostname as osHostname } from "node:os";
import { TokenProviders } from "../auth/token-providers.js";
import { upstreamCredentials } from "../auth/upstream-credentials.js";
import type { Config } from "../config/schema.js";
import type { Logger } from "../logger.js";
import { type DoctorStep, probeMailbox } from "./smtp-probe.js";

export interface DoctorOptions {
  /** Check only this mailbox. Default: every configured mailbox. */
  mailbox?: string;
  /** Send one test message from each checked mailbox to this address. Default: send nothing. */
  sendTest?: string;
  /** For msal and token messages; default: a silent logger. */
  logger: Logger;
}

export interface MailboxDiagnosis {
  mailbox: string;
  upstream: string;
  auth: "password" | "oauth2";
  ok: boolean;
  steps: DoctorStep[];
}

export interface DoctorReport {
  ok: boolean;
  mailboxes: MailboxDiagnosis[];
}

/** A mailbox named on the command line that is not configured. */
export class UnknownMailbox extends Error {
  constructor(mailbox: string, known: string[]) {
    super(`mailbox ${mailbox} is not configured (configured: ${known.join(", ") || "none"})`);
    this.name = "UnknownMailbox";
  }
}

/** Checks every (or one) configured mailbox against its upstream, step by step; ok only when all pass. */
export async function runDoctor(config: Readonly<Config>, options: DoctorOptions): Promise<DoctorReport> {
  const known = Object.keys(config.mailboxes);
  const wanted = options.mailbox?.toLowerCase();
  if (wanted && !known.includes(wanted)) throw new UnknownMailbox(wanted, known);
  const tokens = new TokenProviders(options.logger);
  try {
    const mailboxes: MailboxDiagnosis[] = [];
    for (const mailbox of wanted ? [wanted] : known) {
      const settings = config.mailboxes[mailbox];
      const upstream = settings?.upstream ?? config.upstream;
      const credentials = upstreamCredentials(config, mailbox, tokens);
      const steps = await probeMailbox({
        mailbox,
        upstream,
        credentials,
        clientName: config.hostname ?? osHostname(),
        sendTest: options.sendTest,
      });
      mailboxes.push({
        mailbox,
        upstream: `${upstream.host}:${upstream.port} (${upstream.preset})`,
        auth: credentials.method,
        ok: steps.every((s) => s.ok),
        steps,
      });
    }
    return { ok: mailboxes.length > 0 && mailboxes.every((m) => m.ok), mailboxes };
  } finally {
    tokens.close();
  }
}

/** One readable line per step: verdict, step, what happened; a failure's hint on the next line. */
export function formatReport(report: DoctorReport): string {
  const lines: string[] = [];
  if (report.mailboxes.length === 0) lines.push("no mailbox configured: nothing to check");
  for (const diagnosis of report.mailboxes) {
    lines.push(`${diagnosis.mailbox} via ${diagnosis.upstream}, ${diagnosis.auth}`);
    for (const step of diagnosis.steps) {
      lines.push(`  ${step.ok ? "PASS" : "FAIL"}  ${step.step.padEnd(9)} ${step.detail}`);
      if (step.hint) lines.push(`        what to do: ${step.hint}`);
    }
    lines.push(
      `  ${diagnosis.ok ? "=> ready to send" : "=> NOT ready: fix the failed step and run sluice doctor again"}`,
    );
  }
  return `${lines.join("\n")}\n`;
}
