/** Writes docs/configuration-reference.md from the config schema (`npm run docs:config`). */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { configurationReference } from "../src/config/reference.js";

const target = join(import.meta.dirname, "../docs/configuration-reference.md");
writeFileSync(target, configurationReference());
process.stdout.write(`wrote ${target}\n`);
