/**
 * A trivial SMTP sink as its own process: smtp-server accepting every message and throwing it away. The
 * ingest benchmark points its load client here to report the client's own ceiling.
 * `node bench/sink-worker.mjs` (spawned with an IPC channel): sends { type: "ready", port }.
 */
import { SMTPServer } from "smtp-server";
import { processStats } from "./worker-stats.mjs";

const server = new SMTPServer({
  name: "sink.bench",
  authOptional: true,
  disabledCommands: ["STARTTLS", "AUTH"],
  disableReverseLookup: true,
  logger: false,
  size: 35 * 1024 * 1024,
  onData(stream, _session, callback) {
    stream.on("data", () => undefined);
    stream.on("end", () => callback(null, "2.0.0 Ok: discarded"));
  },
});

process.on("message", (message) => {
  if (message?.type === "stats") process.send?.({ type: "stats", stats: processStats() });
});
process.once("SIGTERM", () => server.close(() => process.exit(0)));

server.listen(0, "127.0.0.1", () => {
  const address = server.server.address();
  process.send?.({ type: "ready", port: typeof address === "object" && address ? address.port : 0 });
});
