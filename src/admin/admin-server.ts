import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Redis } from "ioredis";
import type { AdminConfig } from "../config/schema.js";
import { parseListenAddress } from "../config/schema.js";
import { unlimitedAsWord } from "../limits/unlimited.js";
import type { Logger } from "../logger.js";
import { DASHBOARD_HTML } from "./dashboard-page.js";
import {
  MESSAGE_STATES,
  MessageNotFound,
  type MessageState,
  type QueueControl,
  UnknownMailbox,
  WrongMessageState,
} from "./queue-control.js";
import { type RelayMetrics, redisAnswers } from "./relay-metrics.js";

export interface AdminServerOptions {
  config: AdminConfig;
  queues: QueueControl;
  metrics: RelayMetrics;
  /** A connection that fails fast while Redis is away (for /readyz). */
  redis: Redis;
  /** true while every SMTP listener is up. */
  listenersUp(): boolean;
  logger: Logger;
}

/** A request the API cannot serve; the status and message go back as JSON. */
class HttpProblem extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "HttpProblem";
  }
}

const MAX_BODY_BYTES = 64 * 1024;

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}

/** Constant-time comparison (hashing first makes the lengths equal). */
export function tokenMatches(given: string, expected: string): boolean {
  return timingSafeEqual(digest(given), digest(expected));
}

/** Parses durations such as 7d, 12h, 30m, 45s or plain milliseconds. */
export function parseDuration(value: string): number | null {
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?$/.exec(value.trim());
  if (!match) return null;
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[
    (match[2] ?? "ms") as "ms"
  ];
  return Math.round(Number(match[1]) * unit);
}

/**
 * The admin HTTP server: /healthz, /readyz, /metrics, a JSON API over QueueControl and the dashboard.
 * With a token, every request but the health checks needs `Authorization: Bearer <token>`.
 */
export class AdminServer {
  private readonly server: Server;

  constructor(private readonly options: AdminServerOptions) {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: Error) => this.fail(res, err));
    });
  }

  async start(): Promise<void> {
    const address = parseListenAddress(this.options.config.listen);
    if (!address) throw new Error(`admin.listen: not host:port: ${this.options.config.listen}`);
    await new Promise<void>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(address.port, address.host, () => {
        this.server.off("error", reject);
        resolve();
      });
    });
    this.options.logger.info(
      { ...this.address(), token: Boolean(this.options.config.token) },
      "admin server ready",
    );
  }

  address(): { host: string; port: number } {
    const info = this.server.address() as AddressInfo;
    return { host: info.address, port: info.port };
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private send(res: ServerResponse, status: number, body: string, type: string): void {
    res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
    res.end(body);
  }

  private json(res: ServerResponse, status: number, value: unknown): void {
    this.send(
      res,
      status,
      `${JSON.stringify(value, unlimitedAsWord, 2)}\n`,
      "application/json; charset=utf-8",
    );
  }

  private fail(res: ServerResponse, err: Error): void {
    const status =
      err instanceof HttpProblem
        ? err.status
        : err instanceof MessageNotFound
          ? 404
          : err instanceof UnknownMailbox
            ? 404
            : err instanceof WrongMessageState
              ? 409
              : 500;
    if (status === 500) this.options.logger.error({ err: err.message }, "admin request failed");
    if (!res.headersSent) this.json(res, status, { error: err.message });
    else res.end();
  }

  private authorized(req: IncomingMessage): boolean {
    const { token } = this.options.config;
    if (!token) return true;
    const match = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? "");
    return match !== null && tokenMatches(match[1] as string, token);
  }

  private async body(req: IncomingMessage): Promise<Record<string, unknown>> {
    let size = 0;
    const chunks: Buffer[] = [];
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) throw new HttpProblem(413, "request body too large");
      chunks.push(chunk);
    }
    if (!size) return {};
    try {
      const value = JSON.parse(Buffer.concat(chunks).toString("utf8")) as unknown;
      if (value && typeof value === "object" && !Array.isArray(value))
        return value as Record<string, unknown>;
    } catch {}
    throw new HttpProblem(400, "the request body must be a JSON object");
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://admin");
    const path = url.pathname;
    const method = req.method ?? "GET";
    const { queues, metrics } = this.options;

    if (method === "GET" && path === "/healthz") return this.send(res, 200, "ok\n", "text/plain");
    if (method === "GET" && path === "/readyz") {
      const redis = await redisAnswers(this.options.redis);
      const listeners = this.options.listenersUp();
      const ready = redis && listeners;
      return this.json(res, ready ? 200 : 503, { ready, redis, listeners });
    }
    // the page holds no data; its API calls carry the token
    if (method === "GET" && (path === "/" || path === "/dashboard")) {
      return this.send(res, 200, DASHBOARD_HTML, "text/html; charset=utf-8");
    }
    if (!this.authorized(req)) {
      res.setHeader("www-authenticate", 'Bearer realm="sluice"');
      throw new HttpProblem(401, "missing or wrong bearer token (Authorization: Bearer <admin.token>)");
    }
    if (method === "GET" && path === "/metrics") {
      return this.send(res, 200, await metrics.text(), metrics.contentType);
    }

    const segments = path.split("/").filter(Boolean).map(decodeURIComponent);
    if (segments[0] !== "api") throw new HttpProblem(404, `no such page: ${path}`);
    const route = `${method} /${segments
      .slice(1)
      .map((s, i) => (i === 1 ? ":x" : s))
      .join("/")}`;
    const param = segments[2] as string;

    switch (route) {
      case "GET /status":
        return this.json(res, 200, { mailboxes: await queues.status() });
      case "GET /messages": {
        const state = url.searchParams.get("state") ?? undefined;
        if (state && !MESSAGE_STATES.includes(state as MessageState)) {
          throw new HttpProblem(400, `state must be one of ${MESSAGE_STATES.join(", ")}`);
        }
        const messages = await queues.list({
          mailbox: url.searchParams.get("mailbox") ?? undefined,
          state: state as MessageState | undefined,
          limit: Number(url.searchParams.get("limit") ?? 1000),
        });
        return this.json(res, 200, { messages });
      }
      case "GET /messages/:x":
        return this.json(res, 200, await queues.show(param));
      case "POST /messages/:x/retry":
        return this.json(res, 200, await queues.retry(param));
      case "DELETE /messages/:x":
      case "POST /messages/:x/purge":
        return this.json(res, 200, await queues.purge(param));
      case "POST /retry-failed": {
        const body = await this.body(req);
        const ids = await queues.retryFailed({ mailbox: optionalString(body.mailbox, "mailbox") });
        return this.json(res, 200, { retried: ids });
      }
      case "POST /purge-failed": {
        const body = await this.body(req);
        const olderThan = parseDuration(String(body.olderThan ?? ""));
        if (olderThan === null) throw new HttpProblem(400, 'olderThan is required, e.g. "7d"');
        const ids = await queues.purgeFailed({
          olderThanMs: olderThan,
          mailbox: optionalString(body.mailbox, "mailbox"),
        });
        return this.json(res, 200, { purged: ids });
      }
      case "POST /mailboxes/:x/pause": {
        const body = await this.body(req);
        return this.json(res, 200, await queues.pause(param, optionalString(body.reason, "reason")));
      }
      case "POST /mailboxes/:x/resume":
        return this.json(res, 200, await queues.resume(param));
      default:
        throw new HttpProblem(404, `no such API: ${method} ${path}`);
    }
  }
}

function optionalString(value: unknown, name: string): string | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  if (typeof value !== "string") throw new HttpProblem(400, `${name} must be a string`);
  return value;
}
