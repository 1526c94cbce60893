/**
 * The floor under the relay's delivery figures: nodemailer SMTPConnections with no queue and no Redis, as
 * their own OS process like a relay. `node bench/bare-client-worker.mjs <plan.json>` (spawned with an IPC
 * channel). The plan: { port, caFile, password, body, messagesPerConnection, connections: [{ user, messages }] }.
 * Each connection does STARTTLS and AUTH, then sends its messages one after another (PIPELINING, as the
 * relay's do), and is replaced by a new one after messagesPerConnection messages (as the relay does). Says
 * { type: "ready", port: 0 }, starts on { type: "go" } and answers { type: "done" } (or exits non-zero on an
 * error); answers { type: "stats" } like the relay worker.
 */
import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";
import SMTPConnection from "nodemailer/lib/smtp-connection";
import { processStats } from "./worker-stats.mjs";

const file = process.argv[2];
if (!file || !process.send) {
  console.error("usage: node bench/bare-client-worker.mjs <plan.json> (spawned with an IPC channel)");
  process.exit(2);
}
const plan = JSON.parse(readFileSync(file, "utf8"));
const body = Buffer.from(plan.body, "utf8");
const secureContext = createSecureContext({ ca: readFileSync(plan.caFile, "utf8") });

const call = (start) => new Promise((resolve, reject) => start((err) => (err ? reject(err) : resolve())));

async function sendAll({ user, messages }) {
  for (let sent = 0; sent < messages; sent += plan.messagesPerConnection) {
    await sendOnOneConnection(user, Math.min(plan.messagesPerConnection, messages - sent));
  }
}

async function sendOnOneConnection(user, messages) {
  const connection = new SMTPConnection({
    host: "127.0.0.1",
    port: plan.port,
    requireTLS: true,
    tls: { secureContext, rejectUnauthorized: true },
  });
  await call((done) => {
    connection.once("error", done);
    connection.connect(() => done());
  });
  await call((done) => connection.login({ user, pass: plan.password }, done));
  for (let i = 0; i < messages; i++) {
    await call((done) =>
      connection.send({ from: user, to: ["reader@example.org"], size: body.length }, body, done),
    );
  }
  connection.quit();
}

process.on("message", (message) => {
  if (message?.type === "stats") {
    process.send?.({ type: "stats", stats: processStats() });
  } else if (message?.type === "go") {
    Promise.all(plan.connections.map(sendAll)).then(
      () => process.send?.({ type: "done" }),
      (err) => {
        console.error(err);
        process.exit(1);
      },
    );
  }
});
process.once("SIGTERM", () => process.exit(0));
process.send({ type: "ready", port: 0 });
