#!/usr/bin/env node
import { Command } from "commander";
import { ConfigError, loadConfig } from "./config/load.js";
import { describeConfig } from "./config/mask.js";
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

await program.parseAsync(process.argv);
