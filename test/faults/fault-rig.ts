import { createTestPki, type TestPki } from "../support/certs.js";
import { type FakeUpstream, type FakeUpstreamOptions, startFakeUpstream } from "../support/fake-upstream.js";
import { type PrivateRedis, startPrivateRedis } from "../support/redis-server.js";
import { tempFile, uniquePrefix, waitFor } from "../support/relay.js";
import { type RelayProcess, startRelayProcess, writeConfigFile } from "../support/relay-process.js";
import { buildMessage, openSubmission, type SubmissionSession } from "../support/smtp-client.js";

export const MAILBOX = "scanner@contoso.com";
const PASSWORD = "mailbox-pass";

export interface FaultRigOptions {
  relays?: number;
  upstream?: Partial<FakeUpstreamOptions>;
  /** Extra relay configuration (merged over the rig's). */
  config?: Record<string, unknown>;
}

export interface LoadOptions {
  messages: number;
  clients: number;
  /** Called after each acknowledged message with the count so far (await it to pause the load). */
  onAck?: (acked: number) => void | Promise<void>;
}

export interface DeliveryReport {
  acknowledged: number;
  delivered: number;
  missing: string[];
  /** Recipients the upstream got more than once (only allowed where its answer was lost). */
  duplicates: number;
  /** Of the duplicates: copies of one queued message delivered again (a delivery whose outcome was lost). */
  resent: number;
  /** Of the duplicates: copies under another queue id (a submission queued although its client got no 250). */
  resubmitted: number;
}

/** The queue id sluice's Received header gives a delivered message. */
function queueIdOf(raw: Buffer): string {
  return /\(sluice\) with \S+ id (\S+)/.exec(raw.toString("latin1"))?.[1] ?? "?";
}

/**
 * A private append-only Redis, a fake upstream and several `sluice start` processes sharing them, plus a load of
 * many concurrent clients that records every 250 it gets: the fault suite's test bench.
 */
export class FaultRig {
  readonly relays: RelayProcess[] = [];
  readonly ports: number[] = [];
  /** Recipients of every message a client got 250 for. */
  readonly acknowledged: string[] = [];
  private configFile = "";
  /** Messages handed to clients so far, across load() calls (numbers recipients uniquely). */
  private sent = 0;

  private constructor(
    readonly redis: PrivateRedis,
    public upstream: FakeUpstream,
    readonly pki: TestPki,
    readonly caFile: string,
  ) {}

  static async start(options: FaultRigOptions = {}): Promise<FaultRig> {
    const redis = await startPrivateRedis({ appendOnly: true });
    const pki = await createTestPki();
    const upstream = await startFakeUpstream({
      tls: await pki.issue(["127.0.0.1"]),
      users: { [MAILBOX]: PASSWORD },
      ...options.upstream,
    });
    const rig = new FaultRig(redis, upstream, pki, tempFile("ca.pem", pki.ca));
    rig.configFile = writeConfigFile(
      mergeDeep(
        {
          listen: [{ port: 0, host: "127.0.0.1" }],
          redis: redis.url,
          redisPrefix: uniquePrefix(),
          leaseTtl: 3_000,
          retry: { firstDelay: 200, factor: 2, maxDelay: 2_000 },
          upstream: {
            host: "127.0.0.1",
            port: upstream.port,
            ca: rig.caFile,
            socketTimeout: 5_000,
            connectionTimeout: 5_000,
          },
          defaults: { limits: { connections: 3, messagesPerMinute: 1_000_000, recipientsPerDay: 1_000_000 } },
          mailboxes: { [MAILBOX]: { password: PASSWORD } },
          clients: [{ name: "devices", networks: ["127.0.0.0/8"], from: "keep" }],
        },
        options.config ?? {},
      ),
    );
    for (let i = 0; i < (options.relays ?? 2); i++) await rig.startRelay(i);
    return rig;
  }

  /** Starts (or restarts) relay process number i. */
  async startRelay(i: number): Promise<void> {
    const relay = startRelayProcess(this.configFile, { SLUICE_LOG_LEVEL: "info" });
    this.relays[i] = relay;
    this.ports[i] = await relay.port();
  }

  /** Replaces the fake upstream by another one on the same port (e.g. one with a certificate that does not verify). */
  async replaceUpstream(options: Partial<FakeUpstreamOptions>): Promise<FakeUpstream> {
    const port = this.upstream.port;
    const previous = this.upstream;
    await previous.stop();
    this.upstream = await startFakeUpstream({
      tls: await this.pki.issue(["127.0.0.1"]),
      users: { [MAILBOX]: PASSWORD },
      ...options,
      port,
    });
    // keep what the previous upstream received, so the final check sees every delivery
    this.upstream.messages.unshift(...previous.messages);
    return previous;
  }

  /**
   * Streams `messages` more messages (two recipients each) from `clients` concurrent clients, round-robin over the relays.
   * A client whose message is refused or whose session breaks (relay killed, Redis down) waits a moment, opens a new
   * session if needed and sends the same message again; only 250s count as acknowledged.
   */
  async load(options: LoadOptions): Promise<void> {
    const end = this.sent + options.messages;
    await Promise.all(
      Array.from({ length: options.clients }, async (_, c) => {
        let session: SubmissionSession | undefined;
        let attempt = c;
        while (this.sent < end) {
          const n = this.sent++;
          const to = [`m${n}a@example.com`, `m${n}b@example.com`];
          const raw = buildMessage({ from: "device@example.com", to, subject: `m${n}` });
          for (let tries = 0; tries < 200; tries++) {
            try {
              session ??= await openSubmission({
                port: this.livePort(attempt++),
                startTls: false,
                timeoutMs: 10_000,
              });
              const result = await session.send({ from: "device@example.com", to }, raw);
              if (result.ok) {
                this.acknowledged.push(...to);
                await options.onAck?.(this.acknowledged.length / 2);
                break;
              }
              if (result.code === undefined || result.code === 421) session = undefined;
            } catch {
              session = undefined;
            }
            await new Promise((r) => setTimeout(r, 100));
          }
        }
        await session?.close().catch(() => {});
      }),
    );
  }

  /**
   * Streams `messages` messages from `clients` clients, runs `fault` once when `at` of them have been
   * acknowledged, and returns the delivery report once every acknowledged message was delivered (or timed out).
   */
  async streamWithFault(
    fault: (rig: FaultRig) => Promise<void>,
    options: { messages?: number; clients?: number; at?: number } = {},
  ): Promise<DeliveryReport & { faulted: boolean }> {
    let faulted = false;
    await this.load({
      messages: options.messages ?? 1_000,
      clients: options.clients ?? 20,
      onAck: async (acked) => {
        if (acked === (options.at ?? 300) && !faulted) {
          faulted = true;
          await fault(this);
        }
      },
    });
    return { ...(await this.verify()), faulted };
  }

  private livePort(i: number): number {
    const live = this.relays
      .map((r, index) => (r.child.exitCode === null && r.child.signalCode === null ? index : -1))
      .filter((x) => x >= 0);
    return this.ports[live[i % live.length] ?? 0] as number;
  }

  /** Waits until every acknowledged recipient was delivered (or the timeout), and counts duplicates. */
  async verify(timeoutMs = 120_000): Promise<DeliveryReport> {
    const deliveredSet = () => new Set(this.upstream.messages.flatMap((m) => m.rcptTo));
    await waitFor(
      () => {
        const delivered = deliveredSet();
        return this.acknowledged.every((r) => delivered.has(r));
      },
      timeoutMs,
      "every acknowledged message delivered",
    ).catch(() => {});
    const all = this.upstream.messages.flatMap((m) => m.rcptTo);
    const delivered = new Set(all);
    const queueIds = new Map<string, Set<string>>();
    for (const message of this.upstream.messages) {
      const id = queueIdOf(message.raw);
      for (const rcpt of message.rcptTo) queueIds.set(rcpt, (queueIds.get(rcpt) ?? new Set()).add(id));
    }
    const resubmitted = [...queueIds.values()].reduce((n, ids) => n + ids.size - 1, 0);
    const report: DeliveryReport = {
      acknowledged: this.acknowledged.length / 2,
      delivered: delivered.size / 2,
      missing: this.acknowledged.filter((r) => !delivered.has(r)),
      duplicates: all.length - delivered.size,
      resent: all.length - delivered.size - resubmitted,
      resubmitted,
    };
    console.log(`fault report: ${JSON.stringify({ ...report, missing: report.missing.length })}`);
    return report;
  }

  async stop(): Promise<void> {
    await Promise.all(this.relays.map((r) => r.stop()));
    await this.upstream.stop();
    await this.redis.stop();
  }
}

type Plain = Record<string, unknown>;
const isPlain = (v: unknown): v is Plain => typeof v === "object" && v !== null && !Array.isArray(v);

/** `extra` over `base`, merging nested objects (so `{ upstream: { socketTimeout } }` keeps the upstream's host). */
function mergeDeep(base: Plain, extra: Plain): Plain {
  const out: Plain = { ...base };
  for (const [key, value] of Object.entries(extra)) {
    const current = out[key];
    out[key] = isPlain(current) && isPlain(value) ? mergeDeep(current, value) : value;
  }
  return out;
}
