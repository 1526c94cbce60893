/**
 * Reply texts of Exchange Online client submission (smtp.office365.com:587), from /work/shared/office365.md.
 * The text after the code starts with the enhanced status code, as Exchange sends it; the fake upstream
 * hands these to smtp-server as `responseCode` + message, so the wire shows e.g. "432 4.3.2 Concurrent ...".
 */
export interface SmtpReplySpec {
  code: number;
  message: string;
}

export const EXCHANGE_REPLIES = {
  authRequired: { code: 530, message: "5.7.57 Client not authenticated to send mail" },
  encryptionRequired: {
    code: 538,
    message: "5.7.11 Encryption required for requested authentication mechanism",
  },
  authFailed: { code: 535, message: "5.7.3 Authentication unsuccessful" },
  smtpAuthDisabled: {
    code: 535,
    message:
      "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.",
  },
  sendAsDenied: {
    code: 554,
    message:
      "5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException; Failed to process message due to a permanent exception",
  },
  concurrentConnections: { code: 432, message: "4.3.2 Concurrent connections limit exceeded." },
  messageTooBig: { code: 552, message: "5.3.4 Message size exceeds fixed maximum message size" },
  tooManyRecipients: { code: 452, message: "4.5.3 Too many recipients" },
  temporaryServerError: { code: 451, message: "4.7.0 Temporary server error. Please try again later" },
  serviceNotActive: { code: 421, message: "4.3.2 Service not active" },
  submissionQuotaExceeded: {
    code: 554,
    message:
      "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message",
  },
} as const satisfies Record<string, SmtpReplySpec>;

/** An Error carrying `responseCode`, the form smtp-server turns into the SMTP reply `code message`. */
export function replyError(reply: SmtpReplySpec): Error & { responseCode: number } {
  return Object.assign(new Error(reply.message), { responseCode: reply.code });
}

/** True when `text` already starts with an enhanced status code such as "4.3.2". */
export function hasEnhancedCode(text: string): boolean {
  return /^[245]\.\d{1,3}\.\d{1,3}(\s|$)/.test(text);
}
