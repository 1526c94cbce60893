import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, inject, it } from "vitest";
import { limitKeys } from "../src/limits/keys.js";
import { createTestPki } from "./support/certs.js";
import { type FakeUpstream, startFakeUpstream } from "./support/fake-upstream.js";
import { tempFile, uniquePrefix, waitFor } from "./support/relay.js";
import {
  nextToDeliver,
  type RelayProcess,
  startRelayProcess,
  writeConfigFile,
} from "./support/relay-process.js";
import { buildMessage, openSubmission } from "./support/smtp-client.js";

const MAILBOX = "scanner@contoso.com";
const redisUrl = inject("redisUrl");

let upstream: FakeUpstream;
let caFile: string;
const processes: RelayProcess[] = [];

function clusterConfig() {
  return writeConfigFile({
    listen: [{ port: 0, host: "127.0.0.1" }],
    redis: redisUrl,
    redisPrefix: uniquePrefix(),
    retry: { firstDelay: 200, maxDelay: 1_000 },
    upstream: { host: "127.0.0.1", port: upstream.port, ca: caFile },
    // connections are the limit under test; the rate budget would make 300 messages take 10 minutes
    defaults: { limits: { connections: 3, messagesPerMinute: 100_000 } },
    mailboxes: { [MAILBOX]: { password: "pw" } },
    clients: [{ name: "apps", networks: ["127.0.0.0/8"], from: "keep" }],
  });
}

async function startCluster(n: number): Promise<{ relays: RelayProcess[]; ports: number[] }> {
  const file = clusterConfig();
  const relays = Array.from({ length: n }, () => startRelayProcess(file));
  processes.push(...relays);
  const ports = await Promise.all(relays.map((r) => r.port()));
  return { relays, ports };
}

/** `clients` concurrent clients, each sending `perClient` messages over one connection, spread over the relays. */
async function streamMessages(ports: number[], clients: number, perClient: number): Promise<string[]> {
  const acknowledged: string[] = [];
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      const session = await openSubmission({ port: ports[c % ports.length] as number, startTls: false });
      for (let i = 0; i < perClient; i++) {
        const to = `c${c}m${i}@example.com`;
        const result = await session.send(
          { from: "app@example.com", to: [to] },
          buildMessage({ from: "app@example.com", to: [to] }),
        );
        if (result.ok) acknowledged.push(to);
      }
      await session.close();
    }),
  );
  return acknowledged;
}

function deliveryCounts(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const rcpt of upstream.messages.flatMap((m) => m.rcptTo))
    counts.set(rcpt, (counts.get(rcpt) ?? 0) + 1);
  return counts;
}

beforeAll(async () => {
  const pki = await createTestPki();
  upstream = await startFakeUpstream({
    tls: await pki.issue(["127.0.0.1"]),
    users: { [MAILBOX]: "pw" },
    replyDelayMs: 20,
  });
  caFile = tempFile("ca.pem", pki.ca);
});

afterAll(async () => {
  await upstream?.stop();
});

beforeEach(() => upstream.reset());

afterEach(async () => {
  await Promise.all(processes.splice(0).map((p) => p.stop()));
});

describe("a mailbox shared by several relay processes", () => {
  it.each([2, 3])(
    "with %i processes, 300 messages from 30 clients are delivered exactly once over at most 3 connections and no 432",
    async (n) => {
      const { ports } = await startCluster(n);
      const acknowledged = await streamMessages(ports, 30, 10);
      expect(acknowledged).toHaveLength(300);
      await upstream.waitForMessages(300, 60_000);
      await new Promise((r) => setTimeout(r, 1_000));
      const counts = deliveryCounts();
      expect(acknowledged.every((to) => counts.get(to) === 1)).toBe(true);
      expect(upstream.messages).toHaveLength(300);
      expect(upstream.maxConcurrent(MAILBOX)).toBeLessThanOrEqual(3);
      expect(upstream.count432(MAILBOX)).toBe(0);
    },
  );

  it("when one of 3 processes is killed with kill -9 mid-stream, the others deliver everything and regain all 3 connections within 30 s", async () => {
    upstream.reset();
    const slow = await startFakeUpstreamSlow();
    const prefix = uniquePrefix();
    const redis = new Redis(redisUrl);
    try {
      const file = writeConfigFile({
        listen: [{ port: 0, host: "127.0.0.1" }],
        redis: redisUrl,
        redisPrefix: prefix,
        retry: { firstDelay: 200, maxDelay: 1_000 },
        upstream: { host: "127.0.0.1", port: slow.upstream.port, ca: slow.caFile },
        defaults: { limits: { connections: 3, messagesPerMinute: 100_000 } },
        mailboxes: { [MAILBOX]: { password: "pw" } },
        clients: [{ name: "apps", networks: ["127.0.0.0/8"], from: "keep" }],
      });
      const relays = [0, 1, 2].map(() => startRelayProcess(file));
      processes.push(...relays);
      const ports = await Promise.all(relays.map((r) => r.port()));
      const acknowledged = await streamMessages(ports, 30, 10);
      expect(acknowledged).toHaveLength(300);
      await slow.upstream.waitForMessages(30, 30_000);
      // the worst case: the kill comes just after the victim renewed its leases, which then live a whole
      // leaseTtl. Every live lease renewed since now (the connections opened together, so they renew together)
      const leasesKey = limitKeys(prefix, MAILBOX).leases;
      const leases = async () => {
        const flat = await redis.zrange(leasesKey, "0", "-1", "WITHSCORES");
        const expiries = new Map<string, number>();
        for (let i = 0; i < flat.length; i += 2) expiries.set(String(flat[i]), Number(flat[i + 1]));
        return expiries;
      };
      const watched = await leases();
      await waitFor(
        async () => {
          const now = await leases();
          return [...watched].every(([id, expiry]) => (now.get(id) ?? Number.POSITIVE_INFINITY) > expiry);
        },
        15_000,
        "every lease renewed",
      );
      // the victim is a process that holds a connection: the next to log a delivery (one that holds none
      // would leave nothing to regain)
      const victim = await nextToDeliver(relays);
      victim.child.kill("SIGKILL");
      const killedAt = Date.now();
      await victim.exited;
      await waitFor(
        () => slow.upstream.openConnections(MAILBOX) < 3,
        5_000,
        "the victim's connection closed",
      );
      // the others cannot open more before the victim's leases expire
      await new Promise((resolve) => setTimeout(resolve, 500));
      const victimConnections = 3 - slow.upstream.openConnections(MAILBOX);
      await waitFor(() => slow.upstream.openConnections(MAILBOX) >= 3, 35_000, "3 connections again");
      const regainedMs = Date.now() - killedAt;
      expect(regainedMs).toBeLessThan(30_000);
      await waitFor(
        () => acknowledged.every((to) => slow.upstream.messages.some((m) => m.rcptTo.includes(to))),
        90_000,
        "every acknowledged message delivered",
      );
      const recipients = slow.upstream.messages.flatMap((m) => m.rcptTo);
      const duplicates = recipients.length - new Set(recipients).size;
      // only messages the killed process had in progress can be sent twice, and it takes on at most twice the
      // mailbox's connections at once (a job is done once its completion is recorded): on each connection it held,
      // the one on the wire and the one before it, whose 250 came less than 5 ms earlier and whose record waits
      // (docs/limits.md), as in test/faults/crash.test.ts
      console.log(`kill -9 report: ${JSON.stringify({ victimConnections, regainedMs, duplicates })}`);
      expect(duplicates, `${duplicates} sent twice`).toBeLessThanOrEqual(3 * 2);
      expect(slow.upstream.maxConcurrent(MAILBOX)).toBeLessThanOrEqual(3);
    } finally {
      redis.disconnect();
      await Promise.all(processes.splice(0).map((p) => p.stop()));
      await slow.upstream.stop();
    }
  }, 180_000);
});

async function startFakeUpstreamSlow() {
  const pki = await createTestPki();
  const slowUpstream = await startFakeUpstream({
    tls: await pki.issue(["127.0.0.1"]),
    users: { [MAILBOX]: "pw" },
    // slow enough that the backlog outlasts the dead relay's leases (leaseTtl, 25 s), so full concurrency must come back
    replyDelayMs: 300,
  });
  return { upstream: slowUpstream, caFile: tempFile("ca.pem", pki.ca) };
}
