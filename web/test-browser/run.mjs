// Runs the Chromium suite: bundles test-browser/suite.ts with esbuild,
// starts the Go test server serving it on 127.0.0.1, opens it in headless
// Chromium (Debian's chromium, installed with apt-get when missing) through
// puppeteer-core, and fails unless every case passed. With --demo it also
// screenshots the demo page (docs/web-demo.png).
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createInterface } from "node:readline";
import { copyFileSync, existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import puppeteer from "puppeteer-core";
import { startServer } from "../dist/test/server.js";

const here = dirname(fileURLToPath(import.meta.url));

function chromiumPath() {
  for (const p of [process.env.CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser"]) {
    if (p && existsSync(p)) return p;
  }
  console.log("chromium missing: apt-get install -y chromium");
  const r = spawnSync("sh", ["-c", "apt-get update -qq && apt-get install -y -qq chromium"], { stdio: "inherit" });
  if (r.status !== 0 || !existsSync("/usr/bin/chromium")) throw new Error("cannot install chromium (apt-get install chromium)");
  return "/usr/bin/chromium";
}

const www = mkdtempSync(join(tmpdir(), "tether-chromium-"));
await build({
  entryPoints: [join(here, "suite.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  outfile: join(www, "suite.js"),
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(www, "index.html"));

const srv = await startServer(["-static", www]);
const browser = await puppeteer.launch({
  executablePath: chromiumPath(),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
let failed = 0;
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.log("page:", m.text()));
  page.on("pageerror", (e) => console.log("page error:", e.message));
  await page.goto(`${srv.http}/index.html?proxied=${encodeURIComponent(srv.proxied)}`);
  await page.waitForFunction("window.__done === true", { timeout: 150_000, polling: 200 });
  const results = await page.evaluate("window.__results");
  const bench = await page.evaluate("window.__bench");
  for (const r of results) {
    console.log(`${r.ok ? "ok  " : "FAIL"} ${r.name} (${Math.round(r.ms)} ms)${r.error ? "\n     " + r.error : ""}`);
    if (!r.ok) failed++;
  }
  const version = await browser.version();
  console.log(`${version}: ${JSON.stringify(bench)}`);
  writeFileSync(join(here, "..", "dist", "chromium-bench.json"), JSON.stringify({ version, ...bench }, null, 2));
  failed += await demo(browser);
} finally {
  await browser.close();
  await srv.stop();
}
// demo checks the page of `tether demo web` (a bidi chat with the
// generated client) and screenshots it: dist/web-demo.png, or
// docs/web-demo.png (the README's) with --screenshot.
async function demo(browser) {
  const bin = join(www, "tether");
  // cmd/tether is a Go module of its own (README, "Layout").
  execFileSync("go", ["build", "-o", bin, "."], { cwd: join(here, "..", "..", "cmd", "tether"), stdio: "inherit" });
  const p = spawn(bin, ["demo", "web", "-addr", "127.0.0.1:0", "-stdin"], { stdio: ["pipe", "pipe", "inherit"] });
  try {
    const line = await new Promise((res, rej) => {
      createInterface({ input: p.stdout }).once("line", res);
      p.once("exit", (c) => rej(new Error(`demo web exited with ${c}`)));
    });
    const url = /open (http:\/\/\S+)/.exec(line)[1];
    const page = await browser.newPage();
    await page.setViewport({ width: 760, height: 560 });
    await page.goto(url);
    await page.waitForFunction(() => document.querySelectorAll("#log li").length >= 3, { timeout: 30_000 });
    await page.evaluate(() => window.__demo.send("hello, tether"));
    await page.waitForFunction(() => [...document.querySelectorAll("#log .server")].some((li) => li.textContent === "echo: hello, tether"), { timeout: 30_000 });
    await page.evaluate(() => window.__demo.send("bidi streaming from a browser tab"));
    await page.waitForFunction(() => document.querySelectorAll("#log .server").length >= 2, { timeout: 30_000 });
    const shot = process.argv.includes("--screenshot") ? join(here, "..", "..", "docs", "web-demo.png") : join(here, "..", "dist", "web-demo.png");
    await page.screenshot({ path: shot });
    console.log(`ok   demo web: chat round trips; screenshot ${shot}`);
    return 0;
  } catch (e) {
    console.log(`FAIL demo web: ${e}`);
    return 1;
  } finally {
    p.stdin.end();
  }
}

if (failed) {
  console.log(`${failed} Chromium case(s) failed`);
  process.exit(1);
}
console.log("Chromium suite passed");
