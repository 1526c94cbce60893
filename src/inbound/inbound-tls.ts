import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generate } from "selfsigned";
import type { Config, ListenerConfig } from "../config/schema.js";
import type { Logger } from "../logger.js";

/** The relay's own key and certificate for inbound TLS, and where they came from. */
export interface InboundCertificate {
  key: Buffer;
  cert: Buffer;
  /** "configured" (tls.cert / tls.key) or "generated" (self-signed, kept in dataDir). */
  source: "configured" | "generated";
  /** Files read, for logs. */
  certFile: string;
  keyFile: string;
}

/** Where the generated self-signed certificate is kept. */
export function generatedCertificatePaths(dataDir: string) {
  const dir = join(dataDir, "tls");
  return { dir, cert: join(dir, "self-signed-cert.pem"), key: join(dir, "self-signed-key.pem") };
}

/**
 * Reads the configured certificate; without one, the self-signed certificate in dataDir, generated the first
 * time (so STARTTLS works from the first start and the certificate does not change on every restart).
 */
export async function loadInboundCertificate(
  config: Pick<Config, "tls" | "dataDir">,
  hostname: string,
  logger: Logger,
): Promise<InboundCertificate> {
  if (config.tls) {
    return {
      key: readFileSync(config.tls.key),
      cert: readFileSync(config.tls.cert),
      source: "configured",
      certFile: config.tls.cert,
      keyFile: config.tls.key,
    };
  }
  const paths = generatedCertificatePaths(config.dataDir);
  if (!existsSync(paths.cert) || !existsSync(paths.key)) {
    const now = new Date();
    const pems = await generate([{ name: "commonName", value: hostname }], {
      keySize: 2048,
      algorithm: "sha256",
      notBeforeDate: new Date(now.getTime() - 3600_000),
      notAfterDate: new Date(now.getTime() + 10 * 365 * 86_400_000),
      extensions: [
        { name: "basicConstraints", cA: false },
        { name: "keyUsage", digitalSignature: true, keyEncipherment: true },
        { name: "extKeyUsage", serverAuth: true },
        {
          name: "subjectAltName",
          altNames: [
            { type: 2, value: hostname },
            { type: 2, value: "localhost" },
            { type: 7, ip: "127.0.0.1" },
          ],
        },
      ],
    });
    mkdirSync(paths.dir, { recursive: true, mode: 0o700 });
    writeFileSync(paths.key, pems.private, { mode: 0o600 });
    writeFileSync(paths.cert, pems.cert);
    logger.warn(
      { cert: paths.cert },
      "no tls.cert configured: generated a self-signed certificate for STARTTLS (set tls.cert and tls.key for one clients can verify)",
    );
  }
  return {
    key: readFileSync(paths.key),
    cert: readFileSync(paths.cert),
    source: "generated",
    certFile: paths.cert,
    keyFile: paths.key,
  };
}

/**
 * TLS options of one listener. OpenSSL 3 refuses TLS 1.0/1.1 handshakes at its default security level (they
 * sign with SHA-1), so a listener that allows them lowers it to 0 unless the operator chose ciphers.
 */
export function listenerTlsOptions(listener: ListenerConfig, certificate: InboundCertificate) {
  const old = listener.minVersion === "TLSv1" || listener.minVersion === "TLSv1.1";
  const ciphers = listener.ciphers ?? (old ? "DEFAULT:@SECLEVEL=0" : undefined);
  return {
    key: certificate.key,
    cert: certificate.cert,
    minVersion: listener.minVersion,
    ...(ciphers ? { ciphers } : {}),
  };
}
