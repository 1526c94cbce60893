#!/usr/bin/env node
import { Command } from "commander";
import { addQueueCommands } from "./admin/queue-commands.js";
import { ConfigError, loadConfig } from "./config/load.js";
import { describeConfig } from "./config/mask.js";
import { formatReport, runDoctor, UnknownMailbox } from "./doctor/doctor.js";
import { createLogger } from "./logger.js";
import { createRelay } from "./main.js";

const EXIT_CONFIG = 2;

function load(file: string | undefined) {
  try {
    return loadConfig({ file });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(EXIT_CONFIG);
    }
    throw err;
  }
}

const program = new Command()
  .name("sluice")
  .description("Rate-limited SMTP submission relay for Office 365 and other submission servers")
  .showHelpAfterError();

program
  .command("start")
  .description("run the relay until SIGTERM or SIGINT")
  .option("-c, --config <file>", "configuration file (default: $SLUICE_CONFIG, else ./sluice.yaml)")
  .action(async (options: { config?: string }) => {
    const { config, source, warnings } = load(options.config);
    const logger = createLogger();
    logger.info({ config: source }, "configuration loaded");
    for (const warning of warnings) logger.warn(warning);
    let relay: Awaited<ReturnType<typeof createRelay>>;
    try {
      relay = await createRelay(config, { logger });
    } catch (err) {
      logger.fatal({ err: (err as Error).message }, "relay could not start");
      process.exitCode = 1;
      return;
    }
    const shutdown = (signal: string) => {
      logger.info({ signal }, "shutdown requested");
      relay.stop().then(
        () => process.exit(0),
        (err) => {
          logger.error({ err: (err as Error).message }, "shutdown failed");
          process.exit(1);
        },
      );
    };
    process.on("SIGHUP", () => {
      relay
        .reloadTls()
        .catch((err) =>
          logger.error(
            { err: (err as Error).message },
            "TLS certificate not reloaded: the old one stays in use; fix the files and send SIGHUP again",
          ),
        );
    });
    process.once("SIGTERM", () => shutdown("SIGTERM"));
    process.once("SIGINT", () => shutdown("SIGINT"));
  });

program
  .command("check-config")
  .description("validate the configuration and print it with secrets masked (exit 2 when invalid)")
  .option("-c, --config <file>", "configuration file (default: $SLUICE_CONFIG, else ./sluice.yaml)")
  .action((options: { config?: string }) => {
    const { config, source, warnings } = load(options.config);
    process.stdout.write(`# ${source}: valid\n`);
    for (const warning of warnings) process.stdout.write(`# warning: ${warning}\n`);
    process.stdout.write(describeConfig(config));
  });

addQueueCommands(program, load);

program
  .command("doctor")
  .description(
    "check each mailbox step by step (DNS, connect, STARTTLS, token, AUTH, MAIL FROM) without sending mail; exit 0 only when all pass",
  )
  .option("-c, --config <file>", "configuration file (default: $SLUICE_CONFIG, else ./sluice.yaml)")
  .option("--mailbox <address>", "check only this mailbox")
  .option("--send-test <recipient>", "also send one short test message to this address")
  .option("--json", "machine-readable output")
  .action(async (options: { config?: string; mailbox?: string; sendTest?: string; json?: boolean }) => {
    const { config } = load(options.config);
    // the report is stdout; logs (only with SLUICE_LOG_LEVEL) go to stderr
    const logger = createLogger({
      level: process.env.SLUICE_LOG_LEVEL ?? "silent",
      destination: process.stderr,
    });
    try {
      const report = await runDoctor(config, {
        mailbox: options.mailbox,
        sendTest: options.sendTest,
        logger,
      });
      process.stdout.write(options.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
      process.exitCode = report.ok ? 0 : 1;
    } catch (err) {
      if (!(err instanceof UnknownMailbox)) throw err;
      process.stderr.write(`${err.message}\n`);
      process.exitCode = EXIT_CONFIG;
    }
  });

await program.parseAsync(process.argv);
