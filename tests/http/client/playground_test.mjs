// The playground page in headless Debian Chromium: type code, click Run, read the streamed output and result.
import assert from "node:assert/strict";
import path from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "./server.mjs";

const artifacts = process.env.SPR_ARTIFACT_DIR || ".";
const server = await startServer(["--timeout", "20"]);
const browser = await chromium.launch({
  executablePath: process.env.SPR_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"],
});
let failed = false;
try {
  const page = await browser.newPage();
  const hosts = new Set();
  page.on("request", (req) => hosts.add(new URL(req.url()).host));
  await page.goto(server.url + "/");
  assert.equal(await page.title(), "safe-py-runner playground");

  // Record, as output appears, whether the result was still empty: streamed output comes first.
  await page.evaluate(() => {
    window.__streamedBeforeResult = null;
    new MutationObserver(() => {
      if (window.__streamedBeforeResult === null && document.getElementById("stdout").textContent)
        window.__streamedBeforeResult = document.getElementById("result").textContent === "";
    }).observe(document.getElementById("stdout"), { childList: true, characterData: true, subtree: true });
  });
  await page.fill("#code", "import time\nprint('hello from the browser', flush=True)\ntime.sleep(3)\n" +
                           "result = {'sum': sum(input_data['numbers'])}");
  await page.fill("#input", '{"numbers": [4, 5, 6]}');
  await page.fill("#timeout", "10");
  await page.selectOption("#isolation", "process");
  await page.click("#run");
  await page.waitForFunction(() => document.getElementById("status").textContent === "ok", null, { timeout: 60000 });
  assert.equal(await page.evaluate(() => window.__streamedBeforeResult), true, "output was not streamed");
  assert.deepEqual(JSON.parse(await page.textContent("#result")), { sum: 15 });
  assert.equal(await page.textContent("#stdout"), "hello from the browser\n");
  assert.equal(await page.textContent("#error"), "");
  assert.equal(await page.textContent("#error_kind"), "none");
  assert.ok(Number(await page.textContent("#duration_ms")) > 0);
  await page.screenshot({ path: path.join(artifacts, "playground.png"), fullPage: true });

  await page.fill("#code", "print('partial')\n1/0");
  await page.click("#run");
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("failed"), null,
                             { timeout: 60000 });
  assert.equal(await page.textContent("#status"), "failed: exception");
  assert.match(await page.textContent("#error"), /ZeroDivisionError/);
  assert.equal(await page.textContent("#stdout"), "partial\n");
  await page.screenshot({ path: path.join(artifacts, "playground-error.png"), fullPage: true });

  // Nothing was loaded from another host.
  assert.deepEqual([...hosts], [new URL(server.url).host]);
  console.log("ok   playground: typed code ran, output streamed, result and error shown; screenshots in " + artifacts);
} catch (e) {
  failed = true;
  console.log("FAIL playground\n" + e.stack);
} finally {
  await browser.close();
  assert.equal(await server.stop(), 0);
}
process.exit(failed ? 1 : 0);
