// Loads ferrogate's status page in headless Chromium (Debian's, driven by
// playwright-core) and checks what an operator would see: a wrong token is
// refused and shows nothing; with the token the request counter moves
// while the lab puts load through the VIP. Run by
// tests/tests/status_page_e2e.rs; prints `ok: …` lines and exits non-zero
// on the first failed check.
//
//   FG_URL=http://127.0.0.1:PORT FG_TOKEN=… FG_SHOT=/path/shot.png node status_page.mjs
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const base = process.env.FG_URL;
const token = process.env.FG_TOKEN;
const shot = process.env.FG_SHOT;
if (!base || !token || !shot) {
  console.error("FG_URL, FG_TOKEN and FG_SHOT are required");
  process.exit(2);
}

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  console.log("ok: " + what);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const number = (s) => Number(String(s).replace(/[^0-9.]/g, ""));

const profile = mkdtempSync(join(tmpdir(), "fg-chromium-"));
// The flags PLATFORM.md lists for Debian's chromium run as root, and a
// fresh profile (Playwright passes it as --user-data-dir).
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.FG_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
let failed = false;
try {
  const page = browser.pages()[0] || (await browser.newPage());
  page.on("pageerror", (e) => {
    console.error("page error: " + e.message);
    failed = true;
  });

  // A wrong token: the server refuses the page itself, nothing renders.
  const wrong = await page.goto(`${base}/ui?token=wrong-token-0123456789`);
  check(wrong.status() === 401, `a wrong token is refused (HTTP ${wrong.status()})`);
  check((await page.locator("#app").count()) === 0, "the refused page shows no dashboard");
  // Nor do the JSON endpoints answer without the header.
  const json = await page.evaluate(async () => (await fetch("/stats.json")).status);
  check(json === 401, `/stats.json without the token is refused (HTTP ${json})`);

  // The token on the first load, then only in the script's header.
  const ok = await page.goto(`${base}/ui?token=${encodeURIComponent(token)}`);
  check(ok.status() === 200, `the page loads with the token (HTTP ${ok.status()})`);
  await page.waitForSelector("#app:not([hidden])", { timeout: 15000 });
  check(!page.url().includes("token="), "the token is gone from the address bar");
  await page.waitForFunction(
    () => /\d/.test(document.getElementById("total-requests").textContent),
    null,
    { timeout: 15000 },
  );
  const first = number(await page.textContent("#total-requests"));
  // Two rates need two samples: wait for the page's next refreshes.
  await sleep(3500);
  const second = number(await page.textContent("#total-requests"));
  check(second > first, `the request counter moves (${first} -> ${second})`);
  await page.waitForFunction(
    () => Number(document.getElementById("rps").textContent.replace(/[^0-9.]/g, "")) > 0,
    null,
    { timeout: 10000 },
  );
  console.log("ok: requests/s shown: " + (await page.textContent("#rps")));
  const workers = await page.locator("#workers tbody tr").count();
  check(workers >= 1, `per-worker rows are shown (${workers})`);
  const pools = await page.textContent("#pools");
  check(/healthy/.test(pools), "the pool's endpoint is shown healthy");
  const version = await page.textContent("#version");
  check(/\d/.test(version), `the running version is shown (${version})`);
  await page.screenshot({ path: shot, fullPage: true });
  console.log("screenshot: " + shot);
} catch (e) {
  console.error(String(e.stack || e));
  failed = true;
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
if (failed) process.exit(1);
console.log("status page: all checks passed");
