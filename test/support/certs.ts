import crypto, { type KeyObject } from "node:crypto";
import net from "node:net";
import { withoutUndefined } from "./defaults.js";
import {
  bitString,
  boolean,
  explicit,
  implicitPrimitive,
  integer,
  ipAddressBytes,
  namedBits,
  objectIdentifier,
  octetString,
  sequence,
  set,
  time,
  utf8String,
} from "./der.js";

/** A private certificate authority made at test time, and a way to issue server certificates from it. */
export interface TestPki {
  /** CA certificate (PEM): give it to clients as `ca` so they trust issued certificates. */
  ca: string;
  /** CA private key (PKCS#8 PEM). */
  caKey: string;
  /** Issues a certificate for `hostnames` (the first one is also the CN); synchronous. */
  issue(hostnames: string[], options?: IssueOptions): IssuedCertificate;
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
const OID = {
  commonName: "2.5.4.3",
  organizationName: "2.5.4.10",
  ecdsaWithSha256: "1.2.840.10045.4.3.2",
  subjectKeyIdentifier: "2.5.29.14",
  keyUsage: "2.5.29.15",
  subjectAltName: "2.5.29.17",
  basicConstraints: "2.5.29.19",
  authorityKeyIdentifier: "2.5.29.35",
  extKeyUsage: "2.5.29.37",
  serverAuth: "1.3.6.1.5.5.7.3.1",
  clientAuth: "1.3.6.1.5.5.7.3.2",
} as const;
const KEY_USAGE = { digitalSignature: 0, keyCertSign: 5, cRLSign: 6 } as const;

/**
 * Creates a CA (ECDSA P-256, SHA-256, valid from yesterday for 10 years) whose issue() signs server
 * certificates with DNS subjectAltNames, and an IP subjectAltName for every hostname that is an IP
 * address (e.g. "127.0.0.1"). Built with node:crypto and a small DER encoder, so issue() is synchronous;
 * the function is async only to keep the contract free to change backend.
 */
export async function createTestPki(options: { commonName?: string } = {}): Promise<TestPki> {
  const caKeys = crypto.generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const caName = distinguishedName(
    options.commonName ?? `sluice test CA ${crypto.randomBytes(4).toString("hex")}`,
  );
  const caKeyId = keyIdentifier(caKeys.publicKey);
  const now = Date.now();
  const caDer = signCertificate({
    subject: caName,
    issuer: caName,
    publicKey: caKeys.publicKey,
    signingKey: caKeys.privateKey,
    notBefore: new Date(now - DAY_MS),
    notAfter: new Date(now + 3650 * DAY_MS),
    extensions: [
      extension(OID.basicConstraints, true, sequence(boolean(true))),
      extension(OID.keyUsage, true, namedBits([KEY_USAGE.keyCertSign, KEY_USAGE.cRLSign])),
      extension(OID.subjectKeyIdentifier, false, octetString(caKeyId)),
    ],
  });
  const ca = toPem("CERTIFICATE", caDer);
  const caKey = caKeys.privateKey.export({ type: "pkcs8", format: "pem" }).toString();

  return {
    ca,
    caKey,
    issue(hostnames: string[], issueOptions: IssueOptions = {}): IssuedCertificate {
      const { validDays, expired } = { validDays: 30, expired: false, ...withoutUndefined(issueOptions) };
      const [commonName] = hostnames;
      if (commonName === undefined) throw new Error("TestPki.issue: hostnames must name at least one host");
      const keys = crypto.generateKeyPairSync("ec", { namedCurve: "prime256v1" });
      const issuedAt = Date.now();
      const notAfter = expired ? issuedAt - DAY_MS : issuedAt + validDays * DAY_MS;
      // Valid from an hour ago so small clock differences never matter.
      const notBefore = expired ? notAfter - validDays * DAY_MS : issuedAt - 60 * 60 * 1000;
      const altNames = hostnames.map((name) =>
        net.isIP(name)
          ? implicitPrimitive(7, ipAddressBytes(name))
          : implicitPrimitive(2, Buffer.from(name, "ascii")),
      );
      const der = signCertificate({
        subject: distinguishedName(commonName),
        issuer: caName,
        publicKey: keys.publicKey,
        signingKey: caKeys.privateKey,
        notBefore: new Date(notBefore),
        notAfter: new Date(notAfter),
        extensions: [
          extension(OID.basicConstraints, true, sequence()),
          extension(OID.keyUsage, true, namedBits([KEY_USAGE.digitalSignature])),
          extension(
            OID.extKeyUsage,
            false,
            sequence(objectIdentifier(OID.serverAuth), objectIdentifier(OID.clientAuth)),
          ),
          extension(OID.subjectAltName, false, sequence(...altNames)),
          extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(keys.publicKey))),
          extension(OID.authorityKeyIdentifier, false, sequence(implicitPrimitive(0, caKeyId))),
        ],
      });
      return {
        cert: toPem("CERTIFICATE", der),
        key: keys.privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
      };
    },
  };
}

interface CertificateFields {
  subject: Buffer;
  issuer: Buffer;
  publicKey: KeyObject;
  signingKey: KeyObject;
  notBefore: Date;
  notAfter: Date;
  extensions: Buffer[];
}

function signCertificate(fields: CertificateFields): Buffer {
  const signatureAlgorithm = sequence(objectIdentifier(OID.ecdsaWithSha256));
  const serial = crypto.randomBytes(16);
  serial[0] = ((serial[0] ?? 0) & 0x7f) | 0x01; // positive and never zero
  const tbs = sequence(
    explicit(0, integer(2)), // v3
    integer(serial),
    signatureAlgorithm,
    fields.issuer,
    sequence(time(fields.notBefore), time(fields.notAfter)),
    fields.subject,
    fields.publicKey.export({ type: "spki", format: "der" }),
    explicit(3, sequence(...fields.extensions)),
  );
  const signature = crypto.sign("sha256", tbs, fields.signingKey); // DER ECDSA-Sig-Value
  return sequence(tbs, signatureAlgorithm, bitString(signature));
}

function distinguishedName(commonName: string): Buffer {
  return sequence(
    set(sequence(objectIdentifier(OID.organizationName), utf8String("sluice tests"))),
    set(sequence(objectIdentifier(OID.commonName), utf8String(commonName))),
  );
}

function extension(oid: string, critical: boolean, value: Buffer): Buffer {
  return sequence(objectIdentifier(oid), ...(critical ? [boolean(true)] : []), octetString(value));
}

/** SHA-1 of the DER public key info: unique per key, which is all a key identifier needs. */
function keyIdentifier(publicKey: KeyObject): Buffer {
  return crypto
    .createHash("sha1")
    .update(publicKey.export({ type: "spki", format: "der" }))
    .digest();
}

function toPem(label: string, der: Buffer): string {
  const lines = der.toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}
