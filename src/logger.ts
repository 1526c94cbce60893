import pino, { type DestinationStream, type Logger } from "pino";

export type { Logger };

export interface LoggerOptions {
  /** pino level; default "info". */
  level?: string;
  /** Where lines go; default stdout (readable when stdout is a terminal, JSON otherwise). */
  destination?: DestinationStream;
}

/** Keys whose values are secrets, wherever they are logged (top level, or in a container below). */
const SECRET_KEYS = [
  "password",
  "pass",
  "clientSecret",
  "client_secret",
  "client_assertion",
  "accessToken",
  "access_token",
  "privateKey",
  "token",
  "credentials",
];

/** Object-valued keys a log line might carry settings or a login in: their secret keys are censored too. */
const CONTAINERS = ["auth", "upstream", "mailbox", "oauth2", "config", "options", "settings"];

/**
 * Exact paths only. A wildcard (`*.password`) makes pino clone and re-serialize every line's object to look for
 * it: 16 us and about 5 KB of garbage per line instead of 3 us (a loop of 100,000 lines; the relays spent a
 * fifth of their allocations there, one line per message), while an exact path costs a line nothing unless
 * the line has that top-level key. Our own lines carry flat fields (ids, addresses, replies, error messages):
 * the paths are the safety net for a secret or a settings object logged by mistake.
 */
export const REDACTED_PATHS = [
  ...SECRET_KEYS,
  ...CONTAINERS.flatMap((container) => SECRET_KEYS.map((key) => `${container}.${key}`)),
  ...CONTAINERS.map((container) => `${container}.oauth2.clientSecret`),
];

/** The longest a line waits in the log's buffer for 4 KB of company, ms. */
const FLUSH_EVERY_MS = 250;

export function createLogger(options: LoggerOptions = {}): Logger {
  const base = {
    level: options.level ?? process.env.SLUICE_LOG_LEVEL ?? "info",
    redact: { paths: REDACTED_PATHS, censor: "[secret]" },
  };
  if (options.destination) return pino(base, options.destination);
  if (process.stdout.isTTY) {
    return pino({
      ...base,
      transport: { target: "pino-pretty", options: { translateTime: "SYS:standard" } },
    });
  }
  // written asynchronously: the event loop never waits in write(2). A delivery-only profile of the relays had
  // 9 % of their time there, mostly blocked (the log file shared a disk with Redis's fsyncs; a full pipe to
  // journald or Docker blocks the same way). Lines are gathered into writes of 4 KB (about ten lines) and
  // whatever is gathered goes out every FLUSH_EVERY_MS: one asynchronous write per line cost a relay 6 % of its
  // CPU in the write's hand-off to libuv's threads and its completion (docs/operations.md). pino writes what is
  // left when the process exits
  const destination = pino.destination({ dest: 1, sync: false, minLength: 4096 });
  setInterval(() => destination.flush(), FLUSH_EVERY_MS).unref();
  return pino(base, destination);
}
