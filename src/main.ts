import { hostname as osHostname } from "node:os";
import type { JobsOptions } from "bullmq";
import type { Redis } from "ioredis";
import { AdminServer } from "./admin/admin-server.js";
import { QueueControl } from "./admin/queue-control.js";
import { RelayMetrics } from "./admin/relay-metrics.js";
import { TokenProviders } from "./auth/token-providers.js";
import { type UpstreamCredentials, upstreamCredentials } from "./auth/upstream-credentials.js";
import type { Config } from "./config/schema.js";
import { ClientPolicy } from "./inbound/client-policy.js";
import { FrontDoor } from "./inbound/front-door.js";
import { MailboxChooser } from "./inbound/mailbox-chooser.js";
import { ClientQuotas } from "./limits/client-quotas.js";
import { ConnectionLeases } from "./limits/connection-leases.js";
import { MailboxBudget } from "./limits/mailbox-budget.js";
import { createLogger, type Logger } from "./logger.js";
import { DeliveryScheduler } from "./outbound/delivery-scheduler.js";
import { FailureNotices } from "./outbound/failure-notices.js";
import { MailboxDispatcher } from "./outbound/mailbox-dispatcher.js";
import { MailboxPauses } from "./outbound/mailbox-pauses.js";
import {
  type UpstreamConfig,
  type UpstreamTlsOptions,
  upstreamTlsOptions,
} from "./outbound/upstream-connection.js";
import { RelayEvents } from "./relay-events.js";
import { type EmbeddedRedis, startEmbeddedRedis } from "./spool/embedded-redis.js";
import { checkRedisDurability, RedisConnections, redisTargetFor } from "./spool/redis-connections.js";
import { Spool } from "./spool/spool.js";

export interface RelayOptions {
  logger?: Logger;
}

export interface Relay {
  /** The SMTP listeners' bound addresses, in `listen` order. */
  readonly addresses: { host: string; port: number }[];
  readonly spool: Spool;
  readonly logger: Logger;
  /** The admin HTTP server's bound address, when `admin` is configured. */
  readonly admin?: { host: string; port: number };
  /** Lifecycle events (deliveries, retries, failures, SMTP sessions) of this relay. */
  readonly events: RelayEvents;
  /** Reads the inbound TLS certificate again (SIGHUP); open sessions keep theirs. Throws when unusable. */
  reloadTls(): Promise<void>;
  /** Stops accepting, lets sessions in DATA and running deliveries finish, closes Redis. */
  stop(): Promise<void>;
}

/** BullMQ options of every queued message. A job's options are set when it is queued: later ones get new settings. */
function jobOptions(keep: Config["keepDelivered"]): JobsOptions {
  return {
    // retry.maxAge ends the retries, not a count
    attempts: 1_000_000,
    backoff: { type: "sluice" },
    // a delivered message's job (its recipients and replies, not its body) stays listed for a while; BullMQ
    // counts its age in seconds
    removeOnComplete:
      keep.maxCount === 0 ? true : { age: Math.ceil(keep.maxAge / 1_000), count: keep.maxCount },
    // failed mail stays until an operator retries or purges it (docs/operations.md)
    removeOnFail: false,
  };
}

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
  const events = new RelayEvents();
  const hostname = config.hostname ?? osHostname();
  const cleanups: (() => Promise<void>)[] = [];
  // each step gets what is left of shutdownTimeout (and at least 2 s), so a dead Redis cannot hang the stop
  const cleanup = async () => {
    const until = Date.now() + config.shutdownTimeout;
    for (const step of cleanups.splice(0).reverse()) {
      const budget = Math.max(2_000, until - Date.now());
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          logger.warn({ afterMs: budget }, "shutdown step did not finish in time: going on");
          resolve();
        }, budget);
      });
      await Promise.race([step().catch(() => {}), timedOut]);
      clearTimeout(timer);
    }
  };
  try {
    let embedded: EmbeddedRedis | undefined;
    let target = redisTargetFor(config.redis);
    if (!target) {
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

    const minReplicas = config.replication.minReplicas ?? (target && "sentinels" in target ? 1 : 0);
    const spool = new Spool(ingest, config.redisPrefix, jobOptions(config.keepDelivered), {
      minReplicas,
      timeoutMs: config.replication.timeoutMs,
    });
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
    const notices = new FailureNotices({
      config,
      policy,
      spool,
      events,
      connection: workerConnection,
      hostname,
      logger,
    });
    cleanups.push(() => notices.close());
    const tokens = new TokenProviders(logger);
    cleanups.push(async () => tokens.close());
    const credentials = new Map<string, UpstreamCredentials>(
      Object.keys(config.mailboxes).map((mailbox) => [mailbox, upstreamCredentials(config, mailbox, tokens)]),
    );
    const scheduler = new DeliveryScheduler({
      concurrency: config.deliveryConcurrency,
      subscriber: connections.create("worker"),
      channels: {
        wake: spool.wakeChannel,
        givenBack: spool.givenBackChannel,
        slotWanted: spool.slotWantedChannel,
        stopped: spool.stoppedChannel,
      },
      logger,
    });
    // one TLS context per upstream, shared by the mailboxes that use it
    const tlsByUpstream = new Map<UpstreamConfig, UpstreamTlsOptions>();
    const dispatchers = Object.entries(config.mailboxes).map(([mailbox, settings]) => {
      const upstream = settings.upstream ?? config.upstream;
      const tls = tlsByUpstream.get(upstream) ?? upstreamTlsOptions(upstream);
      tlsByUpstream.set(upstream, tls);
      return new MailboxDispatcher({
        mailbox,
        credentials: credentials.get(mailbox) as UpstreamCredentials,
        limits: settings.limits,
        upstream,
        tls,
        retry: config.retry,
        hostname,
        spool,
        leases,
        leaseTtlMs: config.leaseTtl,
        budget,
        pauses,
        connection: workerConnection,
        scheduler,
        logger,
        events,
      });
    });
    cleanups.push(async () => {
      scheduler.close();
      await Promise.all(dispatchers.map((d) => d.close(config.shutdownTimeout)));
    });
    const limitsOf = (mailbox: string) => ({
      ...config.defaults.limits,
      ...config.mailboxes[mailbox]?.limits,
    });
    const chooser = new MailboxChooser({ budget, limitsOf, queuedCount: (m) => spool.queuedCount(m) });
    const quotas = new ClientQuotas(ingest, config.redisPrefix);
    const frontDoor = new FrontDoor({ config, hostname, policy, chooser, quotas, spool, logger, events });
    cleanups.push(() => frontDoor.stop(config.shutdownTimeout));
    await frontDoor.start();

    let admin: AdminServer | undefined;
    if (config.admin) {
      const queues = new QueueControl({ config, spool, redis: ingest, actor: "admin api", logger });
      const metrics = new RelayMetrics({
        events,
        queues,
        redis: ingest,
        openConnections: (mailbox) => dispatchers.find((d) => d.mailbox === mailbox)?.openConnections ?? 0,
      });
      admin = new AdminServer({
        config: config.admin,
        queues,
        metrics,
        redis: ingest,
        listenersUp: () => frontDoor.addresses().length === config.listen.length,
        logger,
      });
      await admin.start();
      cleanups.push(() => (admin as AdminServer).stop());
    }

    let stopping: Promise<void> | undefined;
    return {
      addresses: frontDoor.addresses(),
      spool,
      logger,
      admin: admin?.address(),
      events,
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
