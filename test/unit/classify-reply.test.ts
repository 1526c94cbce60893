import { describe, expect, it } from "vitest";
import { classifyReply, hintForReply } from "../../src/outbound/classify-reply.js";
import { retryDelay } from "../../src/outbound/retry-schedule.js";

function reply(response: string, code = "EENVELOPE") {
  return Object.assign(new Error(response), { responseCode: Number(response.slice(0, 3)), response, code });
}

describe("what an upstream reply means (Exchange Online's real reply texts)", () => {
  it.each([
    ["432 4.3.2 Concurrent connections limit exceeded.", "reduce-connections"],
    [
      "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname=AM0PR01MB1234]",
      "reduce-connections",
    ],
    ["421 4.3.2 Service not active", "retry"],
    ["451 4.7.0 Temporary server error. Please try again later. PRX4", "retry"],
    ["451 4.3.111 Temporary server error", "retry"],
    ["450 4.7.500 Access denied, please try again later", "retry"],
    ["450 4.7.699 Access denied, please try again later", "retry"],
    ["452 4.5.3 Too many recipients", "split-batch"],
    [
      "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]",
      "park-quota",
    ],
    ["535 5.7.3 Authentication unsuccessful [SN4PR0601CA0001.namprd06.prod.outlook.com]", "pause-auth"],
    [
      "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
      "pause-auth",
    ],
    ["550 5.7.30 Basic authentication is not supported for Client Submission.", "pause-auth"],
    ["530 5.7.57 Client not authenticated to send mail. Error: 535 5.7.139", "pause-auth"],
    [
      "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception",
      "fail",
    ],
    ["554 5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException", "fail"],
    ["550 5.2.252 SendAsDenied; mailbox blocked for continuous errors", "fail"],
    [
      "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2.",
      "retry",
    ],
    ["550 5.7.233 Tenant external recipient limit exceeded", "fail"],
  ])("%s -> %s", (response, action) => {
    expect(classifyReply(reply(response)).action).toBe(action);
  });

  it("retries connection failures and TLS failures, even when they carry a reply code", () => {
    expect(
      classifyReply(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNECTION" })).action,
    ).toBe("retry");
    expect(classifyReply(reply("502 5.5.1 STARTTLS not available", "ETLS")).action).toBe("retry");
  });

  it("gives an actionable hint for SMTP AUTH being disabled", () => {
    const verdict = classifyReply(
      reply("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled"),
    );
    expect(verdict.hint).toMatch(/Set-CASMailbox .* -SmtpClientAuthenticationDisabled \$false/);
  });
});

describe("the advice shown with a failed message's kept reply", () => {
  it("is the reply table's hint, found again from the reply's text", () => {
    expect(
      hintForReply(
        "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException; Failed to process message due to a permanent exception",
      ),
    ).toMatch(/give it SendAs rights/);
    expect(
      hintForReply(
        "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.",
      ),
    ).toMatch(/SmtpClientAuthenticationDisabled \$false/);
    // a reply the table has no advice for, text that is not a reply, nothing
    expect(hintForReply("550 5.1.1 RESOLVER.ADR.RecipNotFound; not found")).toBeUndefined();
    expect(hintForReply("expired: not delivered within 48 h")).toBeUndefined();
    expect(hintForReply(undefined)).toBeUndefined();
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
