import { afterAll, afterEach, beforeAll, beforeEach, inject } from "vitest";
import { createTestPki, type TestPki } from "./certs.js";
import { type FakeUpstream, type FakeUpstreamOptions, startFakeUpstream } from "./fake-upstream.js";
import { startTestRelay, type TestRelay, tempFile } from "./relay.js";

/** A fake upstream shared by the tests of a file, and relays pointed at it that stop after each test. */
export interface UpstreamFixture {
  readonly upstream: FakeUpstream;
  readonly pki: TestPki;
  /** The test CA as a file, for `upstream.ca`. */
  readonly caFile: string;
  /** A relay on the shared Redis, delivering to the fake upstream; `raw` is merged over that. */
  relay(raw: Record<string, unknown>): Promise<TestRelay>;
}

/**
 * Registers the file's hooks: the fake upstream starts before all tests (STARTTLS with a test CA) and is reset
 * before each; the relays a test started are stopped after it.
 */
export function useFakeUpstream(options: Omit<FakeUpstreamOptions, "tls">): UpstreamFixture {
  let upstream: FakeUpstream | undefined;
  let pki: TestPki | undefined;
  let caFile = "";
  const relays: TestRelay[] = [];
  beforeAll(async () => {
    pki = await createTestPki();
    upstream = await startFakeUpstream({ tls: await pki.issue(["127.0.0.1"]), ...options });
    caFile = tempFile("ca.pem", pki.ca);
  });
  afterAll(async () => {
    await upstream?.stop();
  });
  beforeEach(() => upstream?.reset());
  afterEach(async () => {
    await Promise.all(relays.splice(0).map((r) => r.stop()));
  });
  const started = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error("useFakeUpstream: used before its beforeAll hook ran");
    return value;
  };
  return {
    get upstream() {
      return started(upstream);
    },
    get pki() {
      return started(pki);
    },
    get caFile() {
      return caFile;
    },
    async relay(raw) {
      const relay = await startTestRelay({
        redis: inject("redisUrl"),
        upstream: { host: "127.0.0.1", port: started(upstream).port, ca: caFile },
        ...raw,
      });
      relays.push(relay);
      return relay;
    },
  };
}
