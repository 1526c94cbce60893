import { randomBytes, webcrypto } from "node:crypto";
import net from "node:net";
import * as x509 from "@peculiar/x509";
import { withoutUndefined } from "./defaults.js";

x509.cryptoProvider.set(webcrypto);

/** A private certificate authority made at test time, and a way to issue server certificates from it. */
export interface TestPki {
  /** CA certificate (PEM): give it to clients as `ca` so they trust issued certificates. */
  ca: string;
  /** CA private key (PKCS#8 PEM). */
  caKey: string;
  /** Issues a certificate for `hostnames` (the first one is also the CN). */
  issue(hostnames: string[], options?: IssueOptions): Promise<IssuedCertificate>;
}

export interface IssueOptions {
  /** Validity in days. Default 30. */
  validDays?: number;
  /** Make a certificate whose validity ended yesterday (began validDays before that). Default false. */
  expired?: boolean;
}

export interface IssuedCertificate {
  /** Leaf certificate (PEM). */
  cert: string;
  /** Its private key (PKCS#8 PEM). */
  key: string;
}

const DAY_MS = 24 * 60 * 60 * 1000;
const ECDSA_P256 = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIGNING_ALGORITHM = { name: "ECDSA", hash: "SHA-256" } as const;

/**
 * Creates a CA (ECDSA P-256, SHA-256, valid from yesterday for 10 years) whose issue() signs server
 * certificates with DNS subjectAltNames, and an IP subjectAltName for every hostname that is an IP
 * address (e.g. "127.0.0.1"). Built with @peculiar/x509 on WebCrypto.
 */
export async function createTestPki(options: { commonName?: string } = {}): Promise<TestPki> {
  const caKeys = await generateKeys();
  const caName = distinguishedName(options.commonName ?? `sluice test CA ${randomBytes(4).toString("hex")}`);
  const now = Date.now();
  const caCert = await x509.X509CertificateGenerator.createSelfSigned({
    name: caName,
    keys: caKeys,
    signingAlgorithm: SIGNING_ALGORITHM,
    notBefore: new Date(now - DAY_MS),
    notAfter: new Date(now + 3650 * DAY_MS),
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });

  return {
    ca: `${caCert.toString("pem")}\n`,
    caKey: await privateKeyPem(caKeys.privateKey),
    async issue(hostnames: string[], issueOptions: IssueOptions = {}): Promise<IssuedCertificate> {
      const { validDays, expired } = { validDays: 30, expired: false, ...withoutUndefined(issueOptions) };
      const [commonName] = hostnames;
      if (commonName === undefined) throw new Error("TestPki.issue: hostnames must name at least one host");
      const keys = await generateKeys();
      const issuedAt = Date.now();
      const notAfter = expired ? issuedAt - DAY_MS : issuedAt + validDays * DAY_MS;
      // Valid from an hour ago so small clock differences never matter.
      const notBefore = expired ? notAfter - validDays * DAY_MS : issuedAt - 60 * 60 * 1000;
      const altNames = hostnames.map((name) => ({
        type: net.isIP(name) ? ("ip" as const) : ("dns" as const),
        value: name,
      }));
      const cert = await x509.X509CertificateGenerator.create({
        subject: distinguishedName(commonName),
        issuer: caCert.subject,
        publicKey: keys.publicKey,
        signingKey: caKeys.privateKey,
        signingAlgorithm: SIGNING_ALGORITHM,
        notBefore: new Date(notBefore),
        notAfter: new Date(notAfter),
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension([
            x509.ExtendedKeyUsage.serverAuth,
            x509.ExtendedKeyUsage.clientAuth,
          ]),
          new x509.SubjectAlternativeNameExtension(altNames),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
          await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey),
        ],
      });
      return { cert: `${cert.toString("pem")}\n`, key: await privateKeyPem(keys.privateKey) };
    },
  };
}

async function generateKeys(): Promise<webcrypto.CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(ECDSA_P256, true, [
    "sign",
    "verify",
  ])) as webcrypto.CryptoKeyPair;
}

async function privateKeyPem(key: webcrypto.CryptoKey): Promise<string> {
  const pkcs8 = await webcrypto.subtle.exportKey("pkcs8", key);
  return `${x509.PemConverter.encode(pkcs8, "PRIVATE KEY")}\n`;
}

function distinguishedName(commonName: string): x509.JsonName {
  return [{ O: ["sluice tests"] }, { CN: [commonName] }];
}
