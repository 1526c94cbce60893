import { readFileSync } from "node:fs";
import net from "node:net";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { uniquePrefix } from "../support/relay.js";
import { type RelayProcess, startRelayProcess, writeConfigFile } from "../support/relay-process.js";
import { mulberry32 } from "../support/seeded-random.js";
import { submit } from "../support/smtp-client.js";

const SEED = Number(process.env.SLUICE_FUZZ_SEED ?? 20261125);
const SESSIONS = Number(process.env.SLUICE_FUZZ_SESSIONS ?? 2_000);
const CONCURRENCY = 40;

type Random = ReturnType<typeof mulberry32>;
const pick = <T>(r: Random, items: readonly T[]): T => items[Math.floor(r() * items.length)] as T;

const COMMANDS = [
  "EHLO fuzz.example",
  "HELO fuzz",
  "MAIL FROM:<a@b.example>",
  "RCPT TO:<c@d.example>",
  "DATA",
  "RSET",
  "NOOP",
  "QUIT",
  "VRFY root",
  "EXPN staff",
  "HELP",
  "STARTTLS",
  "AUTH PLAIN",
  "AUTH LOGIN",
  "BDAT 10 LAST",
  "XCLIENT ADDR=1.2.3.4",
];

/** One hostile chunk of bytes. */
function chunk(r: Random): Buffer {
  switch (Math.floor(r() * 12)) {
    case 0:
      return Buffer.from(`${pick(r, COMMANDS)}\r\n`);
    case 1:
      return Buffer.from(Array.from({ length: 1 + Math.floor(r() * 200) }, () => Math.floor(r() * 256)));
    case 2:
      return Buffer.concat([Buffer.from("MAIL FROM:<a\0b@c.example>"), Buffer.from([0, 0, 13, 10])]);
    case 3:
      return Buffer.alloc(1024 * 1024 + Math.floor(r() * 1000), 0x41); // a 1 MB line, no CRLF
    case 4:
      return Buffer.from(`${pick(r, COMMANDS)}\n${pick(r, COMMANDS)}\r`); // bare LF and bare CR
    case 5:
      return Buffer.from("DATA\r\nSubject: unterminated\r\n\r\nno final dot"); // unterminated DATA
    case 6:
      return Buffer.from(`AUTH PLAIN ${pick(r, ["!!!notbase64", "=", "AGZvbwBiYXI", "%%%%", ""])}\r\n`);
    case 7:
      return Buffer.from("STARTTLS\r\nSTARTTLS\r\n");
    case 8:
      return Buffer.from("QUIT\r\nEHLO after.quit\r\nMAIL FROM:<a@b.example>\r\n");
    case 9:
      return Buffer.from(Array.from({ length: 20 }, () => `${pick(r, COMMANDS)}\r\n`).join("")); // pipelined burst
    case 10:
      return Buffer.from(
        `AUTH LOGIN\r\n${Buffer.from("x".repeat(Math.floor(r() * 5000))).toString("base64")}\r\n*\r\n`,
      );
    default:
      return Buffer.from(`${"EHLO ".repeat(Math.floor(r() * 50))}\r\n`);
  }
}

/** A session of random hostile chunks from a random loopback address; ends abruptly or politely. */
function fuzzSession(port: number, r: Random): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect({
      port,
      host: "127.0.0.1",
      localAddress: `127.0.${1 + Math.floor(r() * 200)}.${1 + Math.floor(r() * 250)}`,
    });
    const chunks = Array.from({ length: 1 + Math.floor(r() * 6) }, () => chunk(r));
    const done = () => {
      socket.destroy();
      resolve();
    };
    socket.on("error", done);
    socket.on("close", done);
    socket.setTimeout(3_000, done);
    socket.on("data", () => {});
    socket.once("connect", async () => {
      for (const c of chunks) {
        if (socket.destroyed) return;
        socket.write(c);
        await new Promise((res) => setTimeout(res, Math.floor(r() * 20)));
      }
      if (r() < 0.5) socket.end();
      else setTimeout(done, Math.floor(r() * 200));
    });
  });
}

function rssKb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

let relay: RelayProcess;
let port: number;

beforeAll(async () => {
  relay = startRelayProcess(
    writeConfigFile({
      listen: [{ port: 0, host: "127.0.0.1", maxClientsPerAddress: 1_000, socketTimeout: 2_000 }],
      redis: inject("redisUrl"),
      redisPrefix: uniquePrefix(),
      upstream: { host: "127.0.0.1", port: 9, tls: "none" },
      mailboxes: { "scanner@contoso.com": { password: "pw" } },
      clients: [{ name: "probe", networks: ["127.0.0.2/32"], from: "keep" }],
    }),
  );
  port = await relay.port();
});

afterAll(async () => {
  await relay?.stop();
});

describe("a seeded fuzzer at the SMTP front door", () => {
  it(`2 x ${SESSIONS} sessions of random and mutated input (seed ${SEED}): the relay never crashes, keeps serving others, and its memory returns to baseline`, async () => {
    const pid = relay.child.pid as number;
    const probe = async () =>
      submit({
        port,
        localAddress: "127.0.0.2",
        startTls: false,
        from: "p@example.com",
        to: ["ok@example.com"],
        raw: "Subject: probe\r\n\r\nprobe\r\n",
      });
    expect((await probe()).ok).toBe(true);
    const baseline = rssKb(pid);
    const r = mulberry32(SEED);
    const storm = async () => {
      let started = 0;
      await Promise.all(
        Array.from({ length: CONCURRENCY }, async () => {
          while (started < SESSIONS) {
            started++;
            await fuzzSession(port, r);
            if (started % 250 === 0) {
              const result = await probe();
              expect(result.ok, `probe after ${started} sessions: ${result.response}`).toBe(true);
            }
          }
        }),
      );
      expect(relay.child.exitCode).toBeNull();
      expect((await probe()).ok).toBe(true);
      await new Promise((res) => setTimeout(res, 1_000));
      return rssKb(pid);
    };
    const afterFirst = await storm();
    const afterSecond = await storm();
    console.log(
      `fuzz: 2 x ${SESSIONS} sessions, seed ${SEED}, rss kB: baseline ${baseline}, ${afterFirst}, ${afterSecond}`,
    );
    // the first storm grows the heap to its working size; a second one must not grow it further (no leak),
    // and neither may keep 1 MB lines or dead sessions around
    expect(afterFirst).toBeLessThan(baseline + 96 * 1024);
    expect(afterSecond).toBeLessThan(afterFirst + 32 * 1024);
  }, 300_000);
});
