import { existsSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import tls from "node:tls";
import { describe, expect, it } from "vitest";
import { generatedCertificatePaths } from "../src/inbound/inbound-tls.js";
import { tempFile } from "./support/relay.js";
import { buildMessage, openRawSmtp, openSubmission, submit } from "./support/smtp-client.js";
import { useFakeUpstream } from "./support/upstream-fixture.js";

const MAILBOX = "scanner@contoso.com";

const fx = useFakeUpstream({ users: { [MAILBOX]: "pw" } });

function relay(extra: Record<string, unknown> = {}) {
  return fx.relay({
    mailboxes: { [MAILBOX]: { password: "pw" } },
    clients: [
      { name: "printers", networks: ["127.0.0.0/8"], from: "keep" },
      { name: "behind-the-balancer", networks: ["10.9.9.9/32"], from: "keep" },
    ],
    ...extra,
  });
}

/** Reads one SMTP reply (up to its last line) from a plain socket. */
function readReply(socket: net.Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    const onData = (chunk: Buffer) => {
      text += chunk.toString("latin1");
      if (/(^|\r\n)\d{3} [^\r\n]*\r\n$/.test(text)) {
        socket.off("data", onData);
        resolve(text);
      }
    };
    socket.on("data", onData);
    socket.once("error", reject);
  });
}

/**
 * EHLO, STARTTLS and a TLS handshake with the given client options (e.g. a client limited to TLS 1.0);
 * resolves with the negotiated protocol, rejects when the handshake fails.
 */
async function startTlsWith(port: number, options: tls.ConnectionOptions): Promise<string> {
  const socket = net.connect({ port, host: "127.0.0.1" });
  try {
    await readReply(socket);
    socket.write("EHLO old-printer.example\r\n");
    expect(await readReply(socket)).toContain("STARTTLS");
    socket.write("STARTTLS\r\n");
    expect(await readReply(socket)).toMatch(/^220/);
    const secure = tls.connect({ socket, rejectUnauthorized: false, ...options });
    await new Promise<void>((resolve, reject) => {
      secure.once("secureConnect", resolve);
      secure.once("error", reject);
    });
    const protocol = secure.getProtocol() ?? "";
    secure.destroy();
    return protocol;
  } finally {
    socket.destroy();
  }
}

/** A client as old printers are: TLS 1.0 only, and the SHA-1 handshake OpenSSL 3 refuses by default. */
const TLS10_ONLY: tls.ConnectionOptions = {
  minVersion: "TLSv1",
  maxVersion: "TLSv1",
  ciphers: "DEFAULT:@SECLEVEL=0",
};

describe("inbound TLS", () => {
  it("offers STARTTLS from the first start with a self-signed certificate generated once into dataDir", async () => {
    const first = await relay();
    const paths = generatedCertificatePaths(first.config.dataDir);
    expect(existsSync(paths.cert) && existsSync(paths.key)).toBe(true);
    const generated = readFileSync(paths.cert, "utf8");
    // the generated certificate is the one served: a client that trusts exactly it can verify the relay
    const result = await submit({
      port: first.port,
      startTls: true,
      ca: generated,
      servername: "localhost",
      from: "device@example.com",
      to: ["someone@example.org"],
      raw: buildMessage({ from: "device@example.com", to: ["someone@example.org"] }),
    });
    expect(result.code).toBe(250);
    const [message] = await fx.upstream.waitForMessages(1);
    expect(message?.raw.toString()).toMatch(/with ESMTPS id/);
    expect(
      first.logs.filter((l) => String(l.msg).includes("generated a self-signed certificate")),
    ).toHaveLength(1);
    await first.stop();
    const again = await relay({ dataDir: first.config.dataDir, redisPrefix: first.config.redisPrefix });
    expect(readFileSync(paths.cert, "utf8")).toBe(generated);
    expect(again.logs.some((l) => String(l.msg).includes("generated a self-signed certificate"))).toBe(false);
  });

  it("accepts a TLS 1.0-only client only on the listener configured with minVersion: TLSv1", async () => {
    const r = await relay({
      listen: [
        { port: 0, host: "127.0.0.1" },
        { port: 0, host: "127.0.0.1", minVersion: "TLSv1" },
      ],
    });
    const [modern, legacy] = r.addresses;
    expect(await startTlsWith(legacy?.port ?? 0, TLS10_ONLY)).toBe("TLSv1");
    await expect(startTlsWith(modern?.port ?? 0, TLS10_ONLY)).rejects.toThrow();
    // a current client still gets a current protocol on the legacy listener
    expect(await startTlsWith(legacy?.port ?? 0, {})).toBe("TLSv1.3");
  });

  it("serves a renewed certificate to new sessions after reloadTls (SIGHUP), without dropping open ones", async () => {
    const oldCert = await fx.pki.issue(["old.sluice.test"]);
    const certFile = tempFile("cert.pem", oldCert.cert);
    const keyFile = join(certFile, "..", "key.pem");
    writeFileSync(keyFile, oldCert.key);
    const r = await relay({ tls: { cert: certFile, key: keyFile } });
    const open = await openSubmission({
      port: r.port,
      startTls: true,
      ca: fx.pki.ca,
      servername: "old.sluice.test",
    });

    const newCert = await fx.pki.issue(["new.sluice.test"]);
    writeFileSync(certFile, newCert.cert);
    writeFileSync(keyFile, newCert.key);
    await r.reloadTls();

    const fresh = await openSubmission({
      port: r.port,
      startTls: true,
      ca: fx.pki.ca,
      servername: "new.sluice.test",
    });
    await fresh.close();
    await expect(
      openSubmission({ port: r.port, startTls: true, ca: fx.pki.ca, servername: "old.sluice.test" }),
    ).rejects.toThrow();
    const sent = await open.send(
      { from: "device@example.com", to: ["someone@example.org"] },
      buildMessage({ from: "device@example.com", to: ["someone@example.org"] }),
    );
    expect(sent.code).toBe(250);
    await open.close();

    // unusable files: reloadTls says so and the current certificate stays
    writeFileSync(keyFile, oldCert.key);
    await expect(r.reloadTls()).rejects.toThrow();
    const still = await openSubmission({
      port: r.port,
      startTls: true,
      ca: fx.pki.ca,
      servername: "new.sluice.test",
    });
    await still.close();
  });
});

describe("behind a load balancer", () => {
  it("takes the client address from a PROXY header only from a configured balancer", async () => {
    const r = await relay({
      listen: [{ port: 0, host: "127.0.0.1", proxyProtocol: ["127.0.0.1"] }],
      clients: [{ name: "behind-the-balancer", networks: ["10.9.9.9/32"], from: "keep" }],
    });
    const viaBalancer = await openRawSmtp({ port: r.port, localAddress: "127.0.0.1" });
    viaBalancer.write("PROXY TCP4 10.9.9.9 127.0.0.1 40000 25\r\n");
    await viaBalancer.greeting();
    await viaBalancer.command("EHLO printer.example");
    expect((await viaBalancer.command("MAIL FROM:<device@example.com>")).code).toBe(250);
    await viaBalancer.command("RCPT TO:<someone@example.org>");
    expect((await viaBalancer.command("DATA")).code).toBe(354);
    const done = await viaBalancer.command("Subject: via the balancer\r\n\r\nhello\r\n.");
    expect(done.code).toBe(250);
    await viaBalancer.close();
    const [message] = await fx.upstream.waitForMessages(1);
    expect(message?.raw.toString()).toContain("[10.9.9.9]");
    expect(r.logs.some((l) => l.event === "queued" && l.client === "behind-the-balancer")).toBe(true);

    // from any other address the header is not expected: it is an unknown command, and the real address counts
    const direct = await openRawSmtp({ port: r.port, localAddress: "127.0.0.2" });
    await direct.greeting();
    expect((await direct.command("PROXY TCP4 10.9.9.9 127.0.0.1 40000 25")).code).toBe(500);
    await direct.command("EHLO printer.example");
    expect((await direct.command("MAIL FROM:<device@example.com>")).code).toBe(530);
    await direct.close();
  });

  it("accepts XCLIENT only from configured peers", async () => {
    const r = await relay({
      listen: [{ port: 0, host: "127.0.0.1", xclient: ["127.0.0.1"] }],
      clients: [{ name: "behind-the-balancer", networks: ["10.9.9.9/32"], from: "keep" }],
    });
    const trusted = await openRawSmtp({ port: r.port, localAddress: "127.0.0.1" });
    await trusted.greeting();
    expect((await trusted.command("EHLO balancer.example")).text).toContain("XCLIENT");
    expect((await trusted.command("MAIL FROM:<device@example.com>")).code).toBe(530);
    await trusted.command("RSET");
    expect((await trusted.command("XCLIENT ADDR=10.9.9.9")).code).toBe(220);
    await trusted.command("EHLO printer.example");
    expect((await trusted.command("MAIL FROM:<device@example.com>")).code).toBe(250);
    await trusted.close();

    const other = await openRawSmtp({ port: r.port, localAddress: "127.0.0.2" });
    await other.greeting();
    expect((await other.command("EHLO somebody.example")).text).not.toContain("XCLIENT");
    expect((await other.command("XCLIENT ADDR=10.9.9.9")).code).toBeGreaterThanOrEqual(500);
    await other.command("EHLO somebody.example");
    expect((await other.command("MAIL FROM:<device@example.com>")).code).toBe(530);
    await other.close();
  });
});
