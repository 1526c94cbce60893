import { describe, expect, it } from "vitest";
import { classifyReply } from "../../src/outbound/classify-reply.js";
import { retryDelay } from "../../src/outbound/retry-schedule.js";

function reply(response: string, code = "EENVELOPE") {
  return Object.assign(new Error(response), { responseCode: Number(response.slice(0, 3)), response, code });
}

describe("what an upstream reply means", () => {
  it.each([
    ["451 4.7.0 Temporary server error. Please try again later. PRX4", "retry"],
    ["421 4.3.2 Service not active", "retry"],
    ["432 4.3.2 Concurrent connections limit exceeded.", "retry"],
    ["550 5.7.1 Client does not have permissions to send as this sender", "fail"],
    ["554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException; Failed to process message", "fail"],
    ["535 5.7.3 Authentication unsuccessful", "fail"],
  ])("%s -> %s", (response, action) => {
    expect(classifyReply(reply(response)).action).toBe(action);
  });

  it("retries connection failures and TLS failures, even when they carry a reply code", () => {
    expect(
      classifyReply(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNECTION" })).action,
    ).toBe("retry");
    expect(classifyReply(reply("502 5.5.1 STARTTLS not available", "ETLS")).action).toBe("retry");
  });
});

describe("retry schedule", () => {
  const retry = { firstDelay: 30_000, factor: 2, maxDelay: 1_800_000, maxAge: 172_800_000 };
  it("doubles from the first delay up to the maximum, with jitter of at most 25%", () => {
    expect(retryDelay(retry, 1, () => 0.5)).toBe(30_000);
    expect(retryDelay(retry, 2, () => 0.5)).toBe(60_000);
    expect(retryDelay(retry, 20, () => 0.5)).toBe(1_800_000);
    expect(retryDelay(retry, 1, () => 0)).toBe(22_500);
    expect(retryDelay(retry, 1, () => 1)).toBe(37_500);
  });
});
