import { mkdtempSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { type BrowserContext, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ConnectionLeases } from "../src/limits/connection-leases.js";
import {
  adminUrl,
  MAILBOX,
  type OperationsFixture,
  startOperationsFixture,
} from "./support/admin-fixture.js";
import { EXCHANGE_REPLIES } from "./support/exchange-replies.js";
import { waitFor } from "./support/relay.js";

const redisUrl = inject("redisUrl");
let fx: OperationsFixture;
let browser: BrowserContext;
let profile: string;

beforeAll(async () => {
  fx = await startOperationsFixture(redisUrl);
  profile = mkdtempSync(join(tmpdir(), "sluice-chromium-"));
  // a fresh profile per run (playwright passes it as --user-data-dir)
  browser = await chromium.launchPersistentContext(profile, {
    headless: true,
    executablePath: "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

afterAll(async () => {
  await browser?.close();
  await fx?.stop();
  if (profile) await rm(profile, { recursive: true, force: true });
});

describe("the dashboard in headless Chromium", () => {
  it("shows a failed message with the upstream reply; Retry sends it once the upstream accepts, and it shows as delivered", async () => {
    const r = await fx.relay({ admin: { listen: "127.0.0.1:0" } });
    fx.upstream.script({ reply: EXCHANGE_REPLIES.sendAsDenied });
    const id = await fx.send(r, "alice@example.com");
    await waitFor(async () => (await r.spool.queue(MAILBOX).getJobState(id)) === "failed", 20_000, "failed");
    // a 432 lowered the mailbox's connections for a cool-down (as another relay process may have seen one)
    const redis = new Redis(redisUrl);
    await new ConnectionLeases(redis, r.config.redisPrefix).reduce(MAILBOX, 3);
    redis.disconnect();

    const page = await browser.newPage();
    const external: string[] = [];
    page.on("request", (req) => {
      if (!req.url().startsWith(adminUrl(r))) external.push(req.url());
    });
    try {
      await page.goto(adminUrl(r));
      const mailboxRow = page.locator(`#mailboxes tr[data-mailbox="${MAILBOX}"]`);
      await mailboxRow.waitFor();
      expect(await mailboxRow.textContent()).toContain("running");
      expect(await mailboxRow.textContent()).toMatch(/\d \/ 2 \(432 cool-down\)/);
      const failedRow = page.locator(`#failed tr[data-id="${id}"]`);
      await failedRow.waitFor();
      expect(await failedRow.textContent()).toContain("554 5.2.0 STOREDRV.Submission.Exception:SendAsDenied");
      expect(await failedRow.textContent()).toContain("alice@example.com");
      // what to do about it, on hovering the reply
      expect(await failedRow.locator("td.reply").getAttribute("title")).toMatch(/SendAs rights/);

      // the fake upstream accepts from now on (its fault script is used up)
      expect(fx.upstream.faultsLeft).toBe(0);
      await failedRow.getByRole("button", { name: "Retry" }).click();
      await page.locator(`#delivered tr[data-id="${id}"]`).waitFor({ timeout: 20_000 });
      await failedRow.waitFor({ state: "detached" });
      expect(fx.upstream.messages.map((m) => m.rcptTo)).toEqual([["alice@example.com"]]);
      expect(await page.locator("#error").textContent()).toBe("");
      expect(external).toEqual([]);
    } finally {
      await page.close();
    }
  });

  it("pauses and resumes a mailbox from its row, showing the reason", async () => {
    const r = await fx.relay({ admin: { listen: "127.0.0.1:0" } });
    const page = await browser.newPage();
    try {
      await page.goto(adminUrl(r));
      const row = page.locator(`#mailboxes tr[data-mailbox="${MAILBOX}"]`);
      await row.getByRole("button", { name: "Pause" }).click();
      await row.getByText("paused (manual): paused from the dashboard").waitFor();
      await row.getByRole("button", { name: "Resume" }).click();
      await row.getByText("running").waitFor();
    } finally {
      await page.close();
    }
  });
});
