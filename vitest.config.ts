import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/support/global-setup.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // most tests wait on sockets and timers, not the CPU: three files at a time keep CI well under 15 minutes
    maxWorkers: 3,
  },
});
