// Drive the browser demo in headless Chromium and print what it decodes, as JSON on stdout.
//   node hosts/js/browser-check.mjs URL WORDS.json [BEAM]
// Used by tests/test_js_host.py; needs Debian's chromium (/usr/bin/chromium, or $CHROMIUM) and playwright-core.
import { readFileSync } from "node:fs";

import { chromium } from "playwright-core";

const [url, wordsFile, beam = "1"] = process.argv.slice(2);
const words = JSON.parse(readFileSync(wordsFile, "utf8"));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (err) => problems.push(err.message));
  await page.goto(url);
  await page.waitForFunction(() => window.seq2edge !== undefined, null, { timeout: 120000 });
  if (!(await page.evaluate(() => window.seq2edge.ready))) {
    throw new Error(`the page did not load the model: ${await page.textContent("#status")} ${problems.join("; ")}`);
  }
  const results = await page.evaluate(([w, b]) => window.seq2edge.pronounce(w, b), [words, Number(beam)]);
  process.stdout.write(JSON.stringify({ status: await page.textContent("#status"), results }));
} finally {
  await browser.close();
}
