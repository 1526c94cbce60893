import { X509Certificate } from "node:crypto";
import type { AddressInfo } from "node:net";
import tls from "node:tls";
import { beforeAll, describe, expect, it } from "vitest";
import { createTestPki, type TestPki } from "../support/certs.js";

/** Runs a TLS server with `cert` and connects to it; resolves with the client's verdict. */
async function handshake(
  cert: { cert: string; key: string },
  client: { ca: string; servername?: string },
): Promise<{ ok: true } | { ok: false; code: string }> {
  const server = tls.createServer({ key: cert.key, cert: cert.cert }, (socket) => socket.end());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  try {
    return await new Promise((resolve) => {
      const socket = tls.connect({ port, host: "127.0.0.1", ...client }, () => {
        socket.destroy();
        resolve({ ok: true });
      });
      socket.on("error", (error: NodeJS.ErrnoException) => resolve({ ok: false, code: String(error.code) }));
    });
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
}

describe("test PKI", () => {
  let pki: TestPki;
  beforeAll(async () => {
    pki = await createTestPki();
  });

  it("an issued certificate passes a real TLS handshake for its IP and DNS names when the CA is trusted", async () => {
    const issued = await pki.issue(["localhost", "127.0.0.1"]);
    expect(await handshake(issued, { ca: pki.ca })).toEqual({ ok: true });
    expect(await handshake(issued, { ca: pki.ca, servername: "localhost" })).toEqual({ ok: true });
  });

  it("an issued certificate names its hosts in subjectAltName and is signed by the CA", async () => {
    const issued = new X509Certificate((await pki.issue(["relay.test", "127.0.0.1", "::1"])).cert);
    expect(issued.subjectAltName).toBe("DNS:relay.test, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1");
    const ca = new X509Certificate(pki.ca);
    expect(ca.ca).toBe(true);
    expect(issued.checkIssued(ca)).toBe(true);
    expect(issued.verify(ca.publicKey)).toBe(true);
  });

  it("the handshake fails for a name the certificate does not carry", async () => {
    const issued = await pki.issue(["relay.test"]);
    expect(await handshake(issued, { ca: pki.ca })).toEqual({
      ok: false,
      code: "ERR_TLS_CERT_ALTNAME_INVALID",
    });
  });

  it("the handshake fails against an expired certificate, whose validity ended yesterday", async () => {
    const expired = await pki.issue(["127.0.0.1"], { expired: true });
    const validTo = new Date(new X509Certificate(expired.cert).validTo).getTime();
    expect(Date.now() - validTo).toBeGreaterThan(23 * 60 * 60 * 1000);
    expect(Date.now() - validTo).toBeLessThan(25 * 60 * 60 * 1000);
    expect(await handshake(expired, { ca: pki.ca })).toEqual({ ok: false, code: "CERT_HAS_EXPIRED" });
  });

  it("the handshake fails when the client trusts another CA", async () => {
    const other = await createTestPki();
    const issued = await pki.issue(["127.0.0.1"]);
    const verdict = await handshake(issued, { ca: other.ca });
    expect(verdict.ok).toBe(false);
  });
});
