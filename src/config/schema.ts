import bytes from "bytes";
import ipaddr from "ipaddr.js";
import { z } from "zod";

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
  })
  .strict();

export const limitsSchema = z
  .object({
    connections: z.number().int().positive().default(3).describe("open upstream connections at any instant"),
    messagesPerMinute: z.number().int().positive().default(30).describe("messages per sliding minute"),
    recipientsPerDay: z.number().int().positive().default(10_000).describe("recipients per sliding 24 hours"),
    recipientsPerMessage: z
      .number()
      .int()
      .positive()
      .default(500)
      .describe("recipients per upstream transaction"),
  })
  .strict();

export const mailboxSchema = z
  .object({
    password: z
      .string()
      .min(1)
      .describe("password for upstream AUTH, e.g. ${SCANNER_PASSWORD} taken from the environment"),
    limits: limitsSchema.partial().optional().describe("overrides of defaults.limits for this mailbox"),
    aliases: z
      .array(email)
      .default([])
      .describe("other From addresses this mailbox may send as (proxy addresses, SendAs rights)"),
  })
  .strict();

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
  })
  .strict()
  .superRefine((client, ctx) => {
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
      ctx.addIssue({
        code: "custom",
        message: "give mailbox or mailboxes, not both",
        path: ["mailboxes"],
      });
    }
  });

export const upstreamSchema = z
  .object({
    host: z.string().min(1).default("smtp.office365.com"),
    port: z.number().int().min(1).max(65535).default(587),
    tls: tlsMode
      .default("starttls")
      .describe("starttls (required, never falls back to clear text) | implicit | none"),
    ca: z.string().optional().describe("file with extra trusted CA certificates (PEM)"),
    connectionTimeout: z.number().int().positive().default(30_000),
    socketTimeout: z.number().int().positive().default(120_000),
    idleTimeout: z
      .number()
      .int()
      .positive()
      .default(5_000)
      .describe("close a reused connection idle this long (ms)"),
    maxMessagesPerConnection: z.number().int().positive().default(100),
  })
  .strict();

export const retrySchema = z
  .object({
    firstDelay: z.number().int().positive().default(30_000).describe("delay before the first retry (ms)"),
    factor: z.number().min(1).default(2),
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

export const configSchema = z
  .object({
    listen: z
      .array(listenerSchema)
      .min(1)
      .default([listenerSchema.parse({ port: 2525 })]),
    tls: z
      .object({ cert: z.string().describe("PEM certificate file"), key: z.string().describe("PEM key file") })
      .strict()
      .optional(),
    redis: z
      .string()
      .regex(/^rediss?:\/\//, "must start with redis:// or rediss://")
      .optional()
      .describe("external Redis URL; omitted: an embedded redis-server under dataDir"),
    redisPrefix: z
      .string()
      .min(1)
      .default("sluice")
      .describe("key prefix, shared by every relay of one cluster"),
    dataDir: z.string().default("./data"),
    hostname: z
      .string()
      .optional()
      .describe("name used in greetings and Received headers (default: os.hostname())"),
    maxMessageSize: size.default(35 * 1024 * 1024),
    shutdownTimeout: z
      .number()
      .int()
      .positive()
      .default(30_000)
      .describe("ms to finish sessions and deliveries on SIGTERM"),
    upstream: upstreamSchema.default(upstreamSchema.parse({})),
    retry: retrySchema.default(retrySchema.parse({})),
    leaseTtl: z
      .number()
      .int()
      .min(1_000)
      .default(30_000)
      .describe(
        "lifetime of a connection lease unless renewed (ms): a killed relay's slots free up after this",
      ),
    defaults: z
      .object({ limits: limitsSchema.default(limitsSchema.parse({})) })
      .strict()
      .default({ limits: limitsSchema.parse({}) }),
    mailboxes: z.record(email, mailboxSchema).default({}),
    clients: z.array(clientSchema).default([]),
  })
  .strict()
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
  });

export type Config = z.output<typeof configSchema>;
export type ListenerConfig = Config["listen"][number];
export type ClientConfig = Config["clients"][number];
export type MailboxConfig = Config["mailboxes"][string];
export type Limits = z.output<typeof limitsSchema>;
