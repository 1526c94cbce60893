/**
 * Child process for the shutdown test: starts a relay from the JSON config in SLUICE_TEST_CONFIG, submits one
 * message, stops the relay while the delivery holds a connection lease, prints what it saw as one JSON line,
 * and then must exit by itself (no process.exit): any handle left open keeps it alive.
 */
import { Redis } from "ioredis";
import { ConnectionLeases } from "../../src/limits/connection-leases.js";
import { startTestRelay, waitFor } from "./relay.js";
import { buildMessage, submit } from "./smtp-client.js";

const raw = JSON.parse(process.env.SLUICE_TEST_CONFIG ?? "{}") as Record<string, unknown>;
const mailbox = Object.keys(raw.mailboxes as object)[0] as string;
const relay = await startTestRelay(raw);
const probe = new Redis(raw.redis as string);
const leases = new ConnectionLeases(probe, relay.config.redisPrefix);
const result = await submit({
  port: relay.port,
  localAddress: "127.0.0.2",
  startTls: false,
  from: "printer@floor2.example",
  to: ["drain@example.com"],
  raw: buildMessage({ from: "printer@floor2.example", to: ["drain@example.com"] }),
});
await waitFor(async () => (await leases.count(mailbox)) > 0, 20_000, "a lease held by the delivery");
const leasesDuring = await leases.count(mailbox);
await relay.stop();
const leasesAfter = await leases.count(mailbox);
const leaseKeys = await probe.keys(`${relay.config.redisPrefix}:limits:*leases*`);
const leaseEntries = leaseKeys.length ? await probe.zcard(leaseKeys[0] as string) : 0;
await probe.quit();
const delivered = relay.logs.some((l) => l.event === "delivered");
process.stdout.write(
  `${JSON.stringify({ accepted: result.ok, leasesDuring, leasesAfter, leaseEntries, delivered, resources: process.getActiveResourcesInfo() })}\n`,
);
