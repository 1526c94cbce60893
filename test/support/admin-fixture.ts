import { afterAll, afterEach, beforeAll, beforeEach } from "vitest";
import { createTestPki } from "./certs.js";
import { type FakeUpstream, startFakeUpstream } from "./fake-upstream.js";
import { startTestRelay, type TestRelay, tempFile } from "./relay.js";
import { buildMessage, submit } from "./smtp-client.js";

export const MAILBOX = "scanner@contoso.com";
export const MAILBOX_PASSWORD = "mailbox-pass";

/** A fake upstream with TLS and the relay config that delivers to it (printers on 127.0.0.2 submit). */
export interface OperationsFixture {
  upstream: FakeUpstream;
  relays: TestRelay[];
  relay(extra?: Record<string, unknown>): Promise<TestRelay>;
  config(extra?: Record<string, unknown>): Record<string, unknown>;
  /** Submits one small message from a printer; returns the queue id. */
  /** Submits a message to one recipient or several; resolves with its queue id. */
  send(relay: { port: number }, to: string | string[], from?: string): Promise<string>;
  stop(): Promise<void>;
}

export async function startOperationsFixture(redisUrl: string): Promise<OperationsFixture> {
  const pki = await createTestPki();
  const upstream = await startFakeUpstream({
    tls: await pki.issue(["127.0.0.1", "localhost"]),
    users: { [MAILBOX]: MAILBOX_PASSWORD },
  });
  const caFile = tempFile("ca.pem", pki.ca);
  const relays: TestRelay[] = [];
  const config = (extra: Record<string, unknown> = {}) => ({
    redis: redisUrl,
    upstream: { host: "127.0.0.1", port: upstream.port, ca: caFile },
    mailboxes: { [MAILBOX]: { password: MAILBOX_PASSWORD } },
    clients: [{ name: "floor2-printers", networks: ["127.0.0.2/32"], from: "keep" }],
    ...extra,
  });
  return {
    upstream,
    relays,
    config,
    async relay(extra = {}) {
      const started = await startTestRelay(config(extra));
      relays.push(started);
      return started;
    },
    async send(relay, to, from = "printer@floor2.example") {
      const recipients = [to].flat();
      const result = await submit({
        port: relay.port,
        localAddress: "127.0.0.2",
        startTls: false,
        from,
        to: recipients,
        raw: buildMessage({
          from: from || "printer@floor2.example",
          to: recipients,
          subject: `for ${recipients.join(", ")}`,
        }),
      });
      const match = /queued as (\w+)/.exec(result.response);
      if (!result.ok || !match) throw new Error(`not queued: ${result.response}`);
      return match[1] as string;
    },
    async stop() {
      await Promise.all(relays.splice(0).map((r) => r.stop()));
      await upstream.stop();
    },
  };
}

/** The admin server's base URL of a relay started with `admin:`. */
export function adminUrl(relay: { admin?: { host: string; port: number } }): string {
  if (!relay.admin) throw new Error("relay has no admin server");
  return `http://${relay.admin.host}:${relay.admin.port}`;
}

/** One sample value from Prometheus text, e.g. metric(text, 'sluice_delivered_total{mailbox="a@b"}'). */
export function metric(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/**
 * Registers the file's hooks around one operations fixture: started before all tests, the upstream reset
 * before each, the relays a test started stopped after it, and everything stopped at the end.
 */
export function useOperationsFixture(redisUrl: string): OperationsFixture {
  let fx: OperationsFixture | undefined;
  beforeAll(async () => {
    fx = await startOperationsFixture(redisUrl);
  });
  afterAll(async () => {
    await fx?.stop();
  });
  beforeEach(() => fx?.upstream.reset());
  afterEach(async () => {
    await Promise.all((fx?.relays ?? []).splice(0).map((r) => r.stop()));
  });
  const current = (): OperationsFixture => {
    if (!fx) throw new Error("useOperationsFixture: used before its beforeAll hook ran");
    return fx;
  };
  return {
    get upstream() {
      return current().upstream;
    },
    get relays() {
      return current().relays;
    },
    relay: (extra) => current().relay(extra),
    config: (extra) => current().config(extra),
    send: (relay, to, from) => current().send(relay, to, from),
    stop: () => current().stop(),
  };
}
