import { hostname as osHostname } from "node:os";
import type { JobsOptions } from "bullmq";
import type { Redis } from "ioredis";
import type { Config } from "./config/schema.js";
import { ClientPolicy } from "./inbound/client-policy.js";
import { FrontDoor } from "./inbound/front-door.js";
import { MailboxChooser } from "./inbound/mailbox-chooser.js";
import { ClientQuotas } from "./limits/client-quotas.js";
import { ConnectionLeases } from "./limits/connection-leases.js";
import { MailboxBudget } from "./limits/mailbox-budget.js";
import { createLogger, type Logger } from "./logger.js";
import { MailboxDispatcher } from "./outbound/mailbox-dispatcher.js";
import { MailboxPauses } from "./outbound/mailbox-pauses.js";
import { type EmbeddedRedis, startEmbeddedRedis } from "./spool/embedded-redis.js";
import { checkRedisDurability, RedisConnections, type RedisTarget } from "./spool/redis-connections.js";
import { Spool } from "./spool/spool.js";

export interface RelayOptions {
  logger?: Logger;
}

export interface Relay {
  /** The SMTP listeners' bound addresses, in `listen` order. */
  readonly addresses: { host: string; port: number }[];
  readonly spool: Spool;
  readonly logger: Logger;
  /** Reads the inbound TLS certificate again (SIGHUP); open sessions keep theirs. Throws when unusable. */
  reloadTls(): Promise<void>;
  /** Stops accepting, lets sessions in DATA and running deliveries finish, closes Redis. */
  stop(): Promise<void>;
}

const JOB_OPTIONS: JobsOptions = {
  // retry.maxAge ends the retries, not a count
  attempts: 1_000_000,
  backoff: { type: "sluice" },
  removeOnComplete: { age: 24 * 3600, count: 10_000 },
  removeOnFail: false,
};

async function waitReady(redis: Redis, timeoutMs: number): Promise<void> {
  if (redis.status === "ready") return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`redis not reachable within ${timeoutMs / 1000} s`)),
      timeoutMs,
    );
    redis.once("ready", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** The composition root: config -> logger -> redis -> spool -> outbound -> inbound. */
export async function createRelay(config: Readonly<Config>, options: RelayOptions = {}): Promise<Relay> {
  const logger = options.logger ?? createLogger();
  const hostname = config.hostname ?? osHostname();
  const cleanups: (() => Promise<void>)[] = [];
  const cleanup = async () => {
    for (const step of cleanups.splice(0).reverse()) await step().catch(() => {});
  };
  try {
    let embedded: EmbeddedRedis | undefined;
    let target: RedisTarget;
    if (config.redis) target = { url: config.redis };
    else {
      embedded = await startEmbeddedRedis(config.dataDir, logger);
      cleanups.push(() => (embedded as EmbeddedRedis).stop());
      target = { path: embedded.path };
    }
    const connections = new RedisConnections(target, logger);
    cleanups.push(() => connections.closeAll());
    const ingest = connections.create("ingest");
    const workerConnection = connections.create("worker");
    await waitReady(ingest, 30_000);
    if (config.redis) await checkRedisDurability(ingest, logger);

    const spool = new Spool(ingest, config.redisPrefix, JOB_OPTIONS);
    cleanups.push(() => spool.close());
    const policy = new ClientPolicy(config);
    const released = await spool.releaseHeld((job) => {
      const client = policy.byName(job.client);
      return client ? policy.mailboxFor(client) : null;
    });
    if (released) logger.info({ released }, "held mail released to its mailbox");

    const leases = new ConnectionLeases(workerConnection, config.redisPrefix, { ttlMs: config.leaseTtl });
    const budget = new MailboxBudget(workerConnection, config.redisPrefix);
    const pauses = new MailboxPauses(workerConnection, config.redisPrefix);
    const dispatchers = Object.entries(config.mailboxes).map(
      ([mailbox, settings]) =>
        new MailboxDispatcher({
          mailbox,
          password: settings.password,
          limits: { ...config.defaults.limits, ...settings.limits },
          upstream: config.upstream,
          retry: config.retry,
          hostname,
          spool,
          leases,
          leaseTtlMs: config.leaseTtl,
          budget,
          pauses,
          connection: workerConnection,
          logger,
        }),
    );
    cleanups.push(async () => {
      await Promise.all(dispatchers.map((d) => d.close()));
    });
    const limitsOf = (mailbox: string) => ({
      ...config.defaults.limits,
      ...config.mailboxes[mailbox]?.limits,
    });
    const chooser = new MailboxChooser({ budget, limitsOf, queuedCount: (m) => spool.queuedCount(m) });
    const quotas = new ClientQuotas(ingest, config.redisPrefix);
    const frontDoor = new FrontDoor({ config, hostname, policy, chooser, quotas, spool, logger });
    cleanups.push(() => frontDoor.stop(config.shutdownTimeout));
    await frontDoor.start();

    let stopping: Promise<void> | undefined;
    return {
      addresses: frontDoor.addresses(),
      spool,
      logger,
      reloadTls: () => frontDoor.reloadTls(),
      stop: () => {
        stopping ??= (async () => {
          logger.info("stopping: new sessions get 421, finishing messages in DATA and running deliveries");
          await cleanup();
          logger.info("stopped");
        })();
        return stopping;
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
