import pino, { type DestinationStream, type Logger } from "pino";

export type { Logger };

export interface LoggerOptions {
  /** pino level; default "info". */
  level?: string;
  /** Where lines go; default stdout (readable when stdout is a terminal, JSON otherwise). */
  destination?: DestinationStream;
}

/** Keys that may carry secrets anywhere in a log object. */
const REDACT = [
  "password",
  "pass",
  "*.password",
  "*.pass",
  "clientSecret",
  "accessToken",
  "privateKey",
  "*.clientSecret",
  "*.client_secret",
  "*.client_assertion",
  "*.accessToken",
  "*.access_token",
  "*.privateKey",
  "*.token",
  "*.oauth2.clientSecret",
  "auth.credentials",
];

export function createLogger(options: LoggerOptions = {}): Logger {
  const base = {
    level: options.level ?? process.env.SLUICE_LOG_LEVEL ?? "info",
    redact: { paths: REDACT, censor: "[secret]" },
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
  // journald or Docker blocks the same way); the CPU a line costs is the same either way (13-22 us here). Lines
  // that pile up while a write is under way go in the next one; pino writes what is left when the process exits
  return pino(base, pino.destination({ dest: 1, sync: false }));
}
