import { createInterface } from "node:readline/promises";
import type { Command } from "commander";
import type { Config } from "../config/schema.js";
import { formatLimit, unlimitedAsWord } from "../limits/unlimited.js";
import { createLogger } from "../logger.js";
import { Spool } from "../spool/spool.js";
import { parseDuration } from "./admin-server.js";
import {
  type MailboxStatus,
  MESSAGE_STATES,
  type MessageDetail,
  type MessageState,
  type MessageSummary,
  QueueControl,
} from "./queue-control.js";
import { openQueueRedis } from "./queue-redis.js";

/** Exit codes of `sluice queue`: 1 = the operation failed, 3 = refused to destroy without confirmation. */
const EXIT_FAILED = 1;
const EXIT_NOT_CONFIRMED = 3;

type LoadConfig = (file: string | undefined) => { config: Readonly<Config> };

interface CommonOptions {
  config?: string;
  json?: boolean;
  yes?: boolean;
}

/** Thrown to end the command with a message and an exit code (no stack trace for the operator). */
class CommandFailed extends Error {
  constructor(
    message: string,
    readonly exitCode = EXIT_FAILED,
  ) {
    super(message);
    this.name = "CommandFailed";
  }
}

function out(text: string): void {
  process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
}

/** Columns padded to the widest cell. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)].join("\n");
}

export function formatAge(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return "-";
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172_800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86_400)}d`;
}

function statusTable(statuses: MailboxStatus[]): string {
  return table(
    [
      "MAILBOX",
      "QUEUED",
      "DELAYED",
      "ACTIVE",
      "FAILED",
      "OLDEST",
      "MSG/MIN",
      "RCPT/DAY",
      "LEASES",
      "DRAINS IN",
      "PAUSE",
    ],
    statuses.map((s) => [
      s.mailbox,
      String(s.queued),
      String(s.delayed),
      String(s.active),
      String(s.failed),
      formatAge(s.oldestAgeMs),
      `${s.messagesLastMinute}/${formatLimit(s.limits.messagesPerMinute)}`,
      `${s.recipientsLastDay}/${formatLimit(s.limits.recipientsPerDay)}`,
      connectionsText(s),
      s.drainEstimateMs === null ? "-" : formatAge(s.drainEstimateMs),
      s.pause ? `${s.pause.kind}: ${s.pause.reason}` : "-",
    ]),
  );
}

/** Leases held / connections allowed now, and the configured number while a 432 cool-down lowers it. */
function connectionsText(s: MailboxStatus): string {
  const cooling = s.connectionLimit < s.limits.connections;
  return `${s.leases}/${s.connectionLimit}${cooling ? ` (432 cool-down; ${s.limits.connections} configured)` : ""}`;
}

function listTable(messages: MessageSummary[]): string {
  const now = Date.now();
  return table(
    ["ID", "MAILBOX", "STATE", "CLIENT", "FROM", "RCPTS", "AGE", "ATTEMPTS", "LAST REPLY"],
    messages.map((m) => [
      m.id,
      m.mailbox,
      m.state,
      m.client,
      m.mailFrom || "<>",
      String(m.recipients.length + m.delivered.length),
      formatAge(now - m.receivedAt),
      String(m.attempts),
      (m.lastReply ?? "").slice(0, 80),
    ]),
  );
}

function detailText(m: MessageDetail): string {
  const lines = [
    `id:          ${m.id}`,
    `state:       ${m.state}`,
    `mailbox:     ${m.mailbox}`,
    `client:      ${m.client} (${m.remoteAddress})`,
    `message-id:  ${m.messageId ?? "-"}`,
    `received:    ${new Date(m.receivedAt).toISOString()}`,
    `size:        ${m.size} bytes`,
    `attempts:    ${m.attempts}`,
    "",
    "envelope:",
    `  MAIL FROM:<${m.mailFrom}>`,
    ...m.recipients.map((r) => `  RCPT TO:<${r}>  (pending)`),
    ...m.delivered.map((r) => `  RCPT TO:<${r}>  (delivered)`),
    ...m.refused.map((r) => `  RCPT TO:<${r.recipient}>  (refused: ${r.reply})`),
    "",
    "upstream replies:",
    ...(m.replies.length ? m.replies.map((r) => `  ${r.at}  ${r.reply}`) : ["  (none yet)"]),
  ];
  if (m.lastReply) lines.push("", `failed/deferred because: ${m.lastReply}`);
  if (m.hint) lines.push(`what to do: ${m.hint}`);
  lines.push("", "headers:", m.headers ?? "  (body no longer stored)");
  return lines.join("\n");
}

/** Asks before destroying; without a terminal only --yes confirms. */
async function confirm(question: string, options: CommonOptions): Promise<void> {
  if (options.yes) return;
  if (!process.stdin.isTTY) {
    throw new CommandFailed(
      `${question}\nrefused: this deletes messages and there is no terminal to confirm on; add --yes to confirm`,
      EXIT_NOT_CONFIRMED,
    );
  }
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await rl.question(`${question} [y/N] `);
    if (!/^y(es)?$/i.test(answer.trim())) throw new CommandFailed("nothing deleted", EXIT_NOT_CONFIRMED);
  } finally {
    rl.close();
  }
}

/** Runs one queue command against the configured Redis, with QueueControl; prints errors plainly. */
async function withQueues(
  load: LoadConfig,
  options: CommonOptions,
  run: (queues: QueueControl) => Promise<void>,
): Promise<void> {
  const { config } = load(options.config);
  // logs of the command itself (embedded redis start, pause/resume lines) go to stderr
  const logger = createLogger({ destination: process.stderr, level: process.env.SLUICE_LOG_LEVEL ?? "warn" });
  let connection: Awaited<ReturnType<typeof openQueueRedis>> | undefined;
  let spool: Spool | undefined;
  try {
    connection = await openQueueRedis(config, logger);
    spool = new Spool(connection.redis, config.redisPrefix, {});
    await run(new QueueControl({ config, spool, redis: connection.redis, actor: "cli", logger }));
  } catch (err) {
    process.stderr.write(`sluice queue: ${(err as Error).message}\n`);
    process.exitCode = err instanceof CommandFailed ? err.exitCode : EXIT_FAILED;
  } finally {
    await spool?.close();
    await connection?.close();
  }
}

function common(command: Command, destroys = false): Command {
  command
    .option("-c, --config <file>", "configuration file (default: $SLUICE_CONFIG, else ./sluice.yaml)")
    .option("--json", "print JSON for scripts instead of a table");
  if (destroys) command.option("-y, --yes", "do not ask for confirmation");
  return command;
}

/** `sluice queue status|ls|show|retry|purge|pause|resume`. */
export function addQueueCommands(program: Command, load: LoadConfig): void {
  const queue = program
    .command("queue")
    .description("inspect and control the queue (works against the configured Redis; no relay needs to run)");

  common(queue.command("status"))
    .description("per mailbox: counts, oldest message, budgets used, pause, expected time to drain")
    .action((options: CommonOptions) =>
      withQueues(load, options, async (queues) => {
        const statuses = await queues.status();
        out(options.json ? JSON.stringify(statuses, unlimitedAsWord, 2) : statusTable(statuses));
      }),
    );

  common(queue.command("ls"))
    .description("list messages not yet delivered (oldest first)")
    .option("-m, --mailbox <mailbox>", "only this mailbox (or held)")
    .option("-s, --state <state>", `only this state: ${MESSAGE_STATES.join(", ")}`)
    .option("-n, --limit <n>", "at most this many", "1000")
    .action((options: CommonOptions & { mailbox?: string; state?: string; limit: string }) =>
      withQueues(load, options, async (queues) => {
        if (options.state && !MESSAGE_STATES.includes(options.state as MessageState)) {
          throw new CommandFailed(`--state must be one of ${MESSAGE_STATES.join(", ")}`);
        }
        const messages = await queues.list({
          mailbox: options.mailbox,
          state: options.state as MessageState | undefined,
          limit: Number(options.limit),
        });
        out(options.json ? JSON.stringify(messages, null, 2) : listTable(messages));
      }),
    );

  common(queue.command("show"))
    .description("one message: envelope, headers, attempts, every upstream reply with its time")
    .argument("<id>", "queue id (as in `queued as ID`)")
    .action((id: string, options: CommonOptions) =>
      withQueues(load, options, async (queues) => {
        const detail = await queues.show(id);
        out(options.json ? JSON.stringify(detail, null, 2) : detailText(detail));
      }),
    );

  common(queue.command("retry"))
    .description("queue a failed message again (or send a delayed one now); --failed: every failed message")
    .argument("[id]", "queue id")
    .option("--failed", "every failed message")
    .option("-m, --mailbox <mailbox>", "with --failed: only this mailbox")
    .action((id: string | undefined, options: CommonOptions & { failed?: boolean; mailbox?: string }) =>
      withQueues(load, options, async (queues) => {
        if (id && options.failed) throw new CommandFailed("give an id or --failed, not both");
        if (id) {
          const message = await queues.retry(id);
          out(options.json ? JSON.stringify({ retried: [message.id] }) : `retried ${message.id}`);
        } else if (options.failed) {
          const ids = await queues.retryFailed({ mailbox: options.mailbox });
          out(options.json ? JSON.stringify({ retried: ids }) : `retried ${ids.length} failed message(s)`);
        } else throw new CommandFailed("give a queue id, or --failed");
      }),
    );

  common(queue.command("purge"), true)
    .description("delete a message (job and body); --failed --older-than 7d: failed messages older than that")
    .argument("[id]", "queue id")
    .option("--failed", "failed messages")
    .option("--older-than <duration>", "with --failed: failed longer ago than this (e.g. 7d, 12h)")
    .option("-m, --mailbox <mailbox>", "with --failed: only this mailbox")
    .action(
      (
        id: string | undefined,
        options: CommonOptions & { failed?: boolean; olderThan?: string; mailbox?: string },
      ) =>
        withQueues(load, options, async (queues) => {
          if (id && options.failed) throw new CommandFailed("give an id or --failed, not both");
          if (id) {
            const message = await queues.show(id);
            await confirm(
              `delete message ${id} (${message.state}, from <${message.mailFrom}> to ${message.recipients.length + message.delivered.length} recipient(s)) for good?`,
              options,
            );
            await queues.purge(id);
            out(options.json ? JSON.stringify({ purged: [id] }) : `purged ${id}`);
          } else if (options.failed) {
            if (!options.olderThan)
              throw new CommandFailed("--failed needs --older-than (e.g. --older-than 7d)");
            const olderThanMs = parseDuration(options.olderThan);
            if (olderThanMs === null)
              throw new CommandFailed(
                `--older-than: not a duration: ${options.olderThan} (e.g. 7d, 12h, 30m)`,
              );
            const matching = await queues.failedOlderThan({ olderThanMs, mailbox: options.mailbox });
            if (!matching.length) {
              out(options.json ? JSON.stringify({ purged: [] }) : "no failed message is that old");
              return;
            }
            await confirm(`delete ${matching.length} failed message(s) for good?`, options);
            const ids = await queues.purgeFailed({ olderThanMs, mailbox: options.mailbox });
            out(options.json ? JSON.stringify({ purged: ids }) : `purged ${ids.length} failed message(s)`);
          } else throw new CommandFailed("give a queue id, or --failed --older-than DURATION");
        }),
    );

  common(queue.command("pause"))
    .description("hold a mailbox's mail in every relay process until `sluice queue resume`")
    .argument("<mailbox>", "mailbox address")
    .option("-r, --reason <text>", "shown in status and the dashboard", "paused by an operator")
    .action((mailbox: string, options: CommonOptions & { reason: string }) =>
      withQueues(load, options, async (queues) => {
        const pause = await queues.pause(mailbox, options.reason);
        out(options.json ? JSON.stringify(pause) : `paused ${mailbox.toLowerCase()}: ${pause.reason}`);
      }),
    );

  common(queue.command("resume"))
    .description("end a mailbox's pause (manual, auth or quota) and send its waiting mail now")
    .argument("<mailbox>", "mailbox address")
    .action((mailbox: string, options: CommonOptions) =>
      withQueues(load, options, async (queues) => {
        const result = await queues.resume(mailbox);
        out(
          options.json
            ? JSON.stringify(result)
            : result.wasPaused
              ? `resumed ${mailbox.toLowerCase()}`
              : `${mailbox.toLowerCase()} was not paused; its waiting mail is sent now`,
        );
      }),
    );
}
