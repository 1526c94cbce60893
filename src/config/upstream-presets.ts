/**
 * Known submission services: where to connect, where tokens come from, and the service's own default limits.
 * Sources and how sure each number is: docs/upstream-presets.md.
 */
export interface UpstreamPreset {
  host: string;
  port: number;
  tls: "starttls" | "implicit" | "none";
  /** OAuth2 authority (identity platform host) for client-credentials tokens. */
  authority: string;
  /** OAuth2 scope of the token the service accepts for XOAUTH2. */
  scope: string;
  /** Per-mailbox (per sending identity) defaults; `defaults.limits` and `mailboxes.<a>.limits` override them. */
  limits: {
    connections: number;
    messagesPerMinute: number;
    recipientsPerDay: number;
    recipientsPerMessage: number;
  };
}

const EXCHANGE_ONLINE_LIMITS = {
  connections: 3,
  messagesPerMinute: 30,
  recipientsPerDay: 10_000,
  recipientsPerMessage: 500,
};

const COMMERCIAL_AUTHORITY = "https://login.microsoftonline.com";
const OUTLOOK_SCOPE = "https://outlook.office365.com/.default";

export const UPSTREAM_PRESETS = {
  office365: {
    host: "smtp.office365.com",
    port: 587,
    tls: "starttls",
    authority: COMMERCIAL_AUTHORITY,
    scope: OUTLOOK_SCOPE,
    limits: EXCHANGE_ONLINE_LIMITS,
  },
  "office365-legacy-tls": {
    host: "smtp-legacy.office365.com",
    port: 587,
    tls: "starttls",
    authority: COMMERCIAL_AUTHORITY,
    scope: OUTLOOK_SCOPE,
    limits: EXCHANGE_ONLINE_LIMITS,
  },
  hve: {
    host: "smtp.hve.mx.microsoft",
    port: 587,
    tls: "starttls",
    authority: COMMERCIAL_AUTHORITY,
    scope: OUTLOOK_SCOPE,
    // built for volume: the per-day figure is HVE's tenant allowance (uncertain); the rest kept at Exchange's
    limits: { connections: 3, messagesPerMinute: 30, recipientsPerDay: 100_000, recipientsPerMessage: 500 },
  },
  acs: {
    host: "smtp.azurecomm.net",
    port: 587,
    tls: "starttls",
    authority: COMMERCIAL_AUTHORITY,
    scope: "https://communication.azure.com/.default",
    // ACS's default quota for a custom domain is 30 mails a minute and 100 an hour, 50 recipients per mail
    limits: { connections: 3, messagesPerMinute: 30, recipientsPerDay: 2_400, recipientsPerMessage: 50 },
  },
  "gcc-high": {
    host: "smtp.office365.us",
    port: 587,
    tls: "starttls",
    authority: "https://login.microsoftonline.us",
    scope: "https://outlook.office365.us/.default",
    limits: EXCHANGE_ONLINE_LIMITS,
  },
} as const satisfies Record<string, UpstreamPreset>;

export type UpstreamPresetName = keyof typeof UPSTREAM_PRESETS;
export const UPSTREAM_PRESET_NAMES = Object.keys(UPSTREAM_PRESETS) as [
  UpstreamPresetName,
  ...UpstreamPresetName[],
];
export const DEFAULT_UPSTREAM_PRESET: UpstreamPresetName = "office365";
