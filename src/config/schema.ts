import bytes from "bytes";
import ipaddr from "ipaddr.js";
import { z } from "zod";
import { DEFAULT_LEASE_TTL_MS } from "../limits/connection-leases.js";
import { UNLIMITED, UNLIMITED_WORD } from "../limits/unlimited.js";
import {
  DEFAULT_UPSTREAM_PRESET,
  UPSTREAM_PRESET_NAMES,
  UPSTREAM_PRESETS,
  type UpstreamPresetName,
} from "./upstream-presets.js";

/** `35MB`-style strings or plain byte counts. */
const size = z.union([z.number().int().positive(), z.string()]).transform((value, ctx) => {
  const parsed = typeof value === "number" ? value : bytes.parse(value);
  if (parsed === null || !Number.isFinite(parsed) || parsed <= 0) {
    ctx.addIssue({
      code: "custom",
      message: `not a size: ${JSON.stringify(value)} (use e.g. 35MB or 36700160)`,
    });
    return z.NEVER;
  }
  return Math.floor(parsed);
});

const cidr = z.string().refine(
  (value) => {
    try {
      ipaddr.parseCIDR(value.includes("/") ? value : `${value}/${value.includes(":") ? 128 : 32}`);
      return true;
    } catch {
      return false;
    }
  },
  { message: "not an IPv4/IPv6 address or CIDR network (e.g. 10.0.2.0/24 or fd00:1::/64)" },
);

const email = z
  .string()
  .regex(/^[^\s@<>]+@[^\s@<>]+$/, "not an e-mail address")
  .transform((value) => value.toLowerCase());

const tlsMode = z.enum(["starttls", "implicit", "none"]);

const tlsVersion = z.enum(["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]);

/** Peers trusted to say who the real client is: IPv4/IPv6 addresses (not networks; smtp-server compares them). */
const trustedPeers = z.array(
  z.string().refine((value) => ipaddr.isValid(value), { message: "not an IPv4/IPv6 address" }),
);

export const listenerSchema = z
  .object({
    port: z.number().int().min(0).max(65535).describe("TCP port to listen on"),
    host: z.string().default("0.0.0.0").describe("address to bind"),
    tls: tlsMode
      .default("starttls")
      .describe(
        "starttls (with tls.cert, or a self-signed certificate made once in dataDir), implicit (TLS from the first byte), or none",
      ),
    allowInsecureAuth: z
      .boolean()
      .default(false)
      .describe("allow AUTH on a connection without TLS (old printers)"),
    minVersion: tlsVersion
      .default("TLSv1.2")
      .describe("oldest TLS version accepted on this listener; TLSv1 for old printers"),
    ciphers: z
      .string()
      .optional()
      .describe(
        "OpenSSL cipher list; default: Node's, with @SECLEVEL=0 added when minVersion is below TLSv1.2",
      ),
    proxyProtocol: trustedPeers
      .optional()
      .describe("load balancers that must send a PROXY protocol header (v1); others connect directly"),
    xclient: trustedPeers.optional().describe("peers allowed to use XCLIENT to name the real client"),
    maxClients: z
      .number()
      .int()
      .positive()
      .default(200)
      .describe("concurrent sessions on this listener; more get 421"),
    maxClientsPerAddress: z
      .number()
      .int()
      .positive()
      .default(50)
      .describe("concurrent sessions from one address; more get 421"),
    socketTimeout: z
      .number()
      .int()
      .positive()
      .default(60_000)
      .describe("close a session idle this long (ms)"),
    maxSessionTime: z
      .number()
      .int()
      .positive()
      .default(600_000)
      .describe("close a session open this long, even if it trickles data (ms)"),
  })
  .strict();

/** A message or recipient budget: a whole number above zero, or `unlimited` (switched off: UNLIMITED). */
const budgetLimit = z
  .union([z.number().int().positive(), z.literal(UNLIMITED_WORD)])
  .transform((value) => (value === UNLIMITED_WORD ? UNLIMITED : value));

const limitFields = {
  connections: z.number().int().positive().describe("open upstream connections at any instant"),
  messagesPerMinute: budgetLimit.describe("messages per sliding minute, or unlimited"),
  recipientsPerDay: budgetLimit.describe("recipients per sliding 24 hours, or unlimited"),
  recipientsPerMessage: z.number().int().positive().describe("recipients per upstream transaction"),
};

export const limitsSchema = z
  .object({
    connections: limitFields.connections.default(3),
    messagesPerMinute: limitFields.messagesPerMinute.default(30),
    recipientsPerDay: limitFields.recipientsPerDay.default(10_000),
    recipientsPerMessage: limitFields.recipientsPerMessage.default(500),
  })
  .strict();

/** Limits given explicitly (no defaults filled in), so the upstream preset's can apply to the rest. */
const limitsOverrideSchema = z.object(limitFields).partial().strict();

/** `user@domain` or `*@domain`, compared case-insensitively. */
const senderPattern = z
  .string()
  .regex(/^(\*|[^\s@<>*]+)@[^\s@<>*]+$/, "not an address or *@domain pattern")
  .transform((value) => value.toLowerCase());

export const clientSchema = z
  .object({
    name: z.string().min(1).describe("a name for logs and metrics"),
    networks: z.array(cidr).optional().describe("addresses allowed to submit without AUTH"),
    username: z.string().min(1).optional().describe("AUTH user name"),
    password: z.string().min(1).optional().describe("AUTH password"),
    senders: z
      .array(senderPattern)
      .min(1)
      .optional()
      .describe("envelope senders (MAIL FROM) this entry matches: addresses or *@domain"),
    mailbox: email
      .optional()
      .describe("mailbox this client's mail is sent as; may be left out when exactly one is configured"),
    mailboxes: z
      .array(email)
      .min(1)
      .optional()
      .describe("a pool: each message goes to the member with the most free budget"),
    from: z
      .enum(["keep", "rewrite", "reject"])
      .default("reject")
      .describe("From header policy: keep (SendAs), rewrite to the mailbox, reject anything else"),
    priority: z
      .enum(["interactive", "bulk"])
      .default("interactive")
      .describe("interactive mail of a mailbox always goes before bulk mail"),
    maxMessagesPerHour: z.number().int().positive().optional().describe("messages per sliding hour"),
    maxRecipientsPerDay: z.number().int().positive().optional().describe("recipients per sliding 24 hours"),
    maxRecipientsPerMessage: z.number().int().positive().optional().describe("recipients per message"),
    onFailure: z
      .enum(["none", "bounce", "webhook"])
      .default("none")
      .describe(
        "what to do when a message fails for good: none (it stays in the failed list), bounce (a delivery status notification to the envelope sender, sent through the mailbox), webhook (POST JSON to webhookUrl)",
      ),
    webhookUrl: z
      .url({ protocol: /^https?$/ })
      .optional()
      .describe("http(s) URL that receives a JSON POST per failed message when onFailure is webhook"),
  })
  .strict()
  .superRefine((client, ctx) => {
    if (client.onFailure === "webhook" && !client.webhookUrl) {
      ctx.addIssue({ code: "custom", message: "required when onFailure is webhook", path: ["webhookUrl"] });
    }
    if (!client.networks?.length && !client.username) {
      ctx.addIssue({
        code: "custom",
        message: client.senders
          ? "senders alone can be forged by anyone: give networks, or username and password, as well"
          : "give networks, or username and password",
        path: ["networks"],
      });
    }
    if (client.username && !client.password) {
      ctx.addIssue({ code: "custom", message: "required", path: ["password"] });
    }
    if (client.mailbox && client.mailboxes) {
      ctx.addIssue({ code: "custom", message: "give mailbox or mailboxes, not both", path: ["mailboxes"] });
    }
  });

const upstreamObjectSchema = z
  .object({
    preset: z
      .enum(UPSTREAM_PRESET_NAMES)
      .default(DEFAULT_UPSTREAM_PRESET)
      .describe(
        "the service whose host, port, token scope and default limits apply (see docs/upstream-presets.md)",
      ),
    host: z.string().min(1).optional().describe("the submission server; default: the preset's host"),
    port: z.number().int().min(1).max(65535).optional().describe("default: the preset's port"),
    tls: tlsMode
      .optional()
      .describe(
        "starttls (required, never falls back to clear text) | implicit | none; default: the preset's",
      ),
    ca: z.string().optional().describe("file with extra trusted CA certificates (PEM)"),
    connectionTimeout: z
      .number()
      .int()
      .positive()
      .default(30_000)
      .describe("ms to wait for the TCP connection and greeting"),
    socketTimeout: z
      .number()
      .int()
      .positive()
      .default(120_000)
      .describe("ms of silence before giving up on a reply"),
    idleTimeout: z
      .number()
      .int()
      .positive()
      .default(5_000)
      .describe("close a reused connection idle this long (ms)"),
    maxMessagesPerConnection: z
      .number()
      .int()
      .positive()
      // Postfix sets no such count by default, nodemailer's pool 100: every new connection is a TLS handshake and
      // an AUTH, which at 100 cost 1.5-2.5 points of the connection-cap ceiling (docs/performance.md)
      .default(1_000)
      .describe("close a connection and open a new one after this many messages"),
    pipelining: z
      .boolean()
      .default(true)
      // RFC 2920 3.1; a server that announces PIPELINING must take it. false for one that does not get it right
      .describe(
        "when the upstream announces PIPELINING, send a message's envelope right behind the end of data of the one before, without waiting for its reply (docs/limits.md)",
      ),
  })
  .strict();

/** A preset name (`office365`, `hve`, ...) or an explicit `{ host, port, tls, ca, ... }` object, resolved. */
export const upstreamSchema = z
  .preprocess((value) => (typeof value === "string" ? { preset: value } : value), upstreamObjectSchema)
  .transform((upstream) => {
    const preset = UPSTREAM_PRESETS[upstream.preset as UpstreamPresetName];
    return {
      ...upstream,
      host: upstream.host ?? preset.host,
      port: upstream.port ?? preset.port,
      tls: upstream.tls ?? preset.tls,
      /** OAuth2 authority and scope the preset's service uses (oauth2.authority / oauth2.scope override). */
      oauth2: { authority: preset.authority, scope: preset.scope },
      /** The service's default limits (defaults.limits and mailboxes.<a>.limits override). */
      limits: { ...preset.limits },
    };
  });

export const oauth2Schema = z
  .object({
    tenant: z.string().min(1).describe("directory (tenant) id or name, e.g. contoso.onmicrosoft.com"),
    clientId: z.string().min(1).describe("application (client) id of the app registration"),
    clientSecret: z.string().min(1).optional().describe("client secret, e.g. ${SLUICE_CLIENT_SECRET}"),
    certificate: z
      .object({
        key: z.string().min(1).describe("PEM file of the certificate's private key"),
        cert: z.string().min(1).describe("PEM file of the certificate uploaded to the app registration"),
      })
      .strict()
      .optional()
      .describe("certificate credential instead of a client secret"),
    authority: z
      .string()
      .regex(/^https:\/\/[^/]+\/?$/, "must be https://host (e.g. https://login.microsoftonline.us)")
      .optional()
      .describe("identity platform host; default: the upstream preset's (login.microsoftonline.com)"),
    scope: z.string().min(1).optional().describe("token scope; default: the upstream preset's"),
    ca: z
      .string()
      .optional()
      .describe("file with extra trusted CA certificates (PEM) for the token endpoint"),
    timeout: z
      .number()
      .int()
      .positive()
      .default(15_000)
      .describe("ms to wait for the token endpoint before the mailbox's mail waits and retries"),
  })
  .strict()
  .superRefine((oauth2, ctx) => {
    if (!oauth2.clientSecret && !oauth2.certificate) {
      ctx.addIssue({ code: "custom", path: ["clientSecret"], message: "required (or certificate)" });
    }
    if (oauth2.clientSecret && oauth2.certificate) {
      ctx.addIssue({
        code: "custom",
        path: ["certificate"],
        message: "give clientSecret or certificate, not both",
      });
    }
  });

export const mailboxSchema = z
  .object({
    password: z
      .string()
      .min(1)
      .optional()
      .describe("password for upstream AUTH, e.g. ${SCANNER_PASSWORD}; or give oauth2 instead"),
    oauth2: oauth2Schema.optional().describe("OAuth2 app-only (client credentials) instead of a password"),
    username: z
      .string()
      .min(1)
      .optional()
      .describe(
        "user name for upstream AUTH when it is not the mailbox address (ACS: <resource>.<appId>.<tenantId>)",
      ),
    upstream: upstreamSchema.optional().describe("this mailbox's upstream when it differs from `upstream`"),
    limits: limitsOverrideSchema.optional().describe("overrides of defaults.limits for this mailbox"),
    aliases: z
      .array(email)
      .default([])
      .describe("other From addresses this mailbox may send as (proxy addresses, SendAs rights)"),
  })
  .strict()
  .superRefine((mailbox, ctx) => {
    if (!mailbox.password && !mailbox.oauth2) {
      ctx.addIssue({ code: "custom", path: ["password"], message: "required" });
    }
    if (mailbox.password && mailbox.oauth2) {
      ctx.addIssue({ code: "custom", path: ["oauth2"], message: "give password or oauth2, not both" });
    }
  });

export const retrySchema = z
  .object({
    firstDelay: z.number().int().positive().default(30_000).describe("delay before the first retry (ms)"),
    factor: z.number().min(1).default(2).describe("each retry waits this many times longer (±25% jitter)"),
    maxDelay: z
      .number()
      .int()
      .positive()
      .default(30 * 60_000)
      .describe("longest delay between retries (ms)"),
    maxAge: z
      .number()
      .int()
      .positive()
      .default(48 * 3600_000)
      .describe("fail a message as expired after (ms)"),
    authRetryInterval: z
      .number()
      .int()
      .positive()
      .default(5 * 60_000)
      .describe(
        "after an authentication failure the mailbox is paused this long before AUTH is tried again (ms)",
      ),
  })
  .strict();

/** `host:port` or `[v6]:port`; the host and port it names. */
export function parseListenAddress(value: string): { host: string; port: number } | null {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(value);
  const port = Number(match?.[3]);
  if (!match || port > 65535) return null;
  return { host: (match[1] ?? match[2]) as string, port };
}

function isLoopback(host: string): boolean {
  if (host === "localhost") return true;
  try {
    return ipaddr.process(host).range() === "loopback";
  } catch {
    return false;
  }
}

export const adminSchema = z
  .object({
    listen: z
      .string()
      .default("127.0.0.1:8025")
      .refine((value) => parseListenAddress(value) !== null, {
        message: "not host:port (e.g. 127.0.0.1:8025 or [::1]:8025)",
      })
      .describe("address of the admin HTTP server (metrics, health, queue API, dashboard)"),
    token: z
      .string()
      .min(16, "use at least 16 characters, e.g. openssl rand -hex 32")
      .optional()
      .describe(
        "bearer token for every admin request except /healthz and /readyz; required unless listen is a loopback address",
      ),
  })
  .strict()
  .superRefine((admin, ctx) => {
    const address = parseListenAddress(admin.listen);
    if (address && !isLoopback(address.host) && !admin.token) {
      ctx.addIssue({
        code: "custom",
        path: ["token"],
        message: `required when admin.listen is not a loopback address (${admin.listen}): set token: \${SLUICE_ADMIN_TOKEN}`,
      });
    }
  });

/** The configuration object before cross-key checks and limit resolution (for the generated reference). */
export const configObjectSchema = z
  .object({
    listen: z
      .array(listenerSchema)
      .min(1)
      .default([listenerSchema.parse({ port: 2525 })])
      .describe("SMTP listeners, one per entry"),
    tls: z
      .object({ cert: z.string().describe("PEM certificate file"), key: z.string().describe("PEM key file") })
      .strict()
      .optional()
      .describe("the relay's own certificate for inbound STARTTLS or implicit TLS"),
    redis: z
      .union([
        z.string().regex(/^rediss?:\/\//, "must start with redis:// or rediss://"),
        z
          .object({
            sentinels: z
              .array(z.string().regex(/^[^\s:]+:\d+$/, "host:port"))
              .min(1)
              .describe("Redis Sentinel addresses, host:port"),
            name: z.string().min(1).describe("the monitored primary's name (sentinel monitor <name>)"),
            password: z.string().optional().describe("password of the Redis servers"),
            sentinelPassword: z.string().optional().describe("password of the sentinels"),
          })
          .strict(),
      ])
      .optional()
      .describe(
        "external Redis: a redis:// or rediss:// URL, or { sentinels, name } for high availability; omitted: an embedded redis-server under dataDir",
      ),
    replication: z
      .object({
        minReplicas: z
          .number()
          .int()
          .min(0)
          .optional()
          .describe(
            "replicas that must have a submission (Redis WAIT) before it is acknowledged; default 1 with sentinels, else 0",
          ),
        timeoutMs: z
          .number()
          .int()
          .positive()
          .default(2_000)
          .describe("how long to wait for them before answering 451 (ms)"),
      })
      .strict()
      .default({ timeoutMs: 2_000 })
      .describe("acknowledge only what replicas have too (replication is asynchronous)"),
    redisPrefix: z
      .string()
      .min(1)
      .default("sluice")
      .describe("key prefix, shared by every relay of one cluster"),
    dataDir: z.string().default("./data").describe("embedded Redis data (append-only file) and socket"),
    hostname: z
      .string()
      .optional()
      .describe("name used in greetings and Received headers (default: os.hostname())"),
    maxMessageSize: size
      .default(35 * 1024 * 1024)
      .describe("largest message accepted (35MB-style string or bytes); larger mail gets 552 5.3.4"),
    shutdownTimeout: z
      .number()
      .int()
      .positive()
      .default(30_000)
      .describe("ms to finish sessions and deliveries on SIGTERM"),
    upstream: upstreamSchema
      .default(upstreamSchema.parse(DEFAULT_UPSTREAM_PRESET))
      .describe("where mail is delivered: a preset name or { host, port, tls, ca, ... }"),
    retry: retrySchema.default(retrySchema.parse({})).describe("when failed deliveries are tried again"),
    keepDelivered: z
      .object({
        maxAge: z
          .number()
          .int()
          .min(1_000)
          .default(24 * 3600_000)
          .describe("how long a delivered message stays listed (ms, rounded up to whole seconds)"),
        maxCount: z
          .number()
          .int()
          .min(0)
          .default(10_000)
          .describe("most delivered messages listed per mailbox; 0: none are kept"),
      })
      .strict()
      .default({ maxAge: 24 * 3600_000, maxCount: 10_000 })
      .describe(
        "delivered messages kept in Redis for `sluice queue ls --state delivered` and the dashboard, about 2-3 KB each (the body is never kept)",
      ),
    authThrottle: z
      .object({
        maxFailures: z
          .number()
          .int()
          .positive()
          .default(5)
          .describe("failed AUTH from one address before it is refused"),
        windowMs: z
          .number()
          .int()
          .positive()
          .default(600_000)
          .describe("window in which failures are counted (ms)"),
        blockMs: z
          .number()
          .int()
          .positive()
          .default(900_000)
          .describe("how long the address is refused (ms)"),
        delayStepMs: z
          .number()
          .int()
          .min(0)
          .default(1_000)
          .describe("extra delay per earlier failure (ms, max 5 s)"),
      })
      .strict()
      .default({ maxFailures: 5, windowMs: 600_000, blockMs: 900_000, delayStepMs: 1_000 })
      .describe("failed AUTH attempts: slowed, then the address is refused for a while"),
    deliveryConcurrency: z
      .number()
      .int()
      .positive()
      .default(200)
      .describe(
        "deliveries in progress at once in this relay process, all mailboxes together (each mailbox also stays within 2 x its connections); mailboxes take turns when it is reached",
      ),
    leaseTtl: z
      .number()
      .int()
      .min(1_000)
      .default(DEFAULT_LEASE_TTL_MS)
      .describe(
        "lifetime of a connection lease and of a delivery's queue lock unless renewed (ms): a killed relay's connection slots and in-flight messages are taken over after this",
      ),
    defaults: z
      .object({
        limits: limitsOverrideSchema
          .default({})
          .describe("defaults for every mailbox; unset keys come from the mailbox's upstream preset"),
      })
      .strict()
      .default({ limits: {} })
      .describe("settings shared by all mailboxes"),
    mailboxes: z
      .record(email, mailboxSchema)
      .default({})
      .describe("the upstream mailboxes mail is sent as, by address"),
    clients: z
      .array(clientSchema)
      .default([])
      .describe("who may submit: printers by network, applications by AUTH"),
    admin: adminSchema.optional().describe("admin HTTP server; off when absent"),
  })
  .strict();

export const configSchema = configObjectSchema
  .superRefine((config, ctx) => {
    const mailboxes = Object.keys(config.mailboxes);
    config.clients.forEach((client, index) => {
      for (const [key, names] of [
        ["mailbox", client.mailbox ? [client.mailbox] : []],
        ["mailboxes", client.mailboxes ?? []],
      ] as const) {
        for (const name of names) {
          if (!mailboxes.includes(name)) {
            ctx.addIssue({
              code: "custom",
              path: ["clients", index, key],
              message: `unknown mailbox ${name}: add it under mailboxes`,
            });
          }
        }
      }
      if (!client.mailbox && !client.mailboxes && mailboxes.length > 1) {
        ctx.addIssue({
          code: "custom",
          path: ["clients", index, "mailbox"],
          message: "required when more than one mailbox is configured (or give a pool in mailboxes)",
        });
      }
    });
    // One username may appear in several entries (e.g. with different senders), with one password.
    const passwords = new Map<string, string | undefined>();
    for (const client of config.clients) {
      if (!client.username) continue;
      if (passwords.has(client.username) && passwords.get(client.username) !== client.password) {
        ctx.addIssue({
          code: "custom",
          path: ["clients"],
          message: `username ${client.username} is used by two clients with different passwords`,
        });
      }
      passwords.set(client.username, client.password);
    }
  })
  .transform(({ defaults, mailboxes, ...config }) => {
    // limits: built-in < the upstream preset's < defaults.limits < the mailbox's own
    const limitsFor = (upstream: { limits: Limits }, own: Partial<Limits> = {}): Limits => ({
      ...limitsSchema.parse({}),
      ...upstream.limits,
      ...defaults.limits,
      ...own,
    });
    return {
      ...config,
      defaults: { limits: limitsFor(config.upstream) },
      mailboxes: Object.fromEntries(
        Object.entries(mailboxes).map(([address, mailbox]) => [
          address,
          { ...mailbox, limits: limitsFor(mailbox.upstream ?? config.upstream, mailbox.limits) },
        ]),
      ),
    };
  });

export type Config = z.output<typeof configSchema>;
export type ListenerConfig = Config["listen"][number];
export type ClientConfig = Config["clients"][number];
export type MailboxConfig = Config["mailboxes"][string];
export type Limits = z.output<typeof limitsSchema>;
export type AdminConfig = z.output<typeof adminSchema>;
export type UpstreamConfig = z.output<typeof upstreamSchema>;
export type OAuth2Config = z.output<typeof oauth2Schema>;
