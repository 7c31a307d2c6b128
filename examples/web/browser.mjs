// The headless Chromium every page test drives: Debian's chromium (CHROMIUM overrides it), a
// fresh profile in `userDataDir`, each console line logged and, when `consoleErrors` is given,
// console errors and page errors collected there for the test to report.

import { chromium } from "playwright-core";

const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

export async function launchPage(userDataDir, { log, timeout, consoleErrors, viewport, ignoreHTTPSErrors = false }) {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    ignoreHTTPSErrors,
    args: ARGS,
    viewport: viewport ?? { width: 1200, height: 860 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(timeout);
  page.on("console", (msg) => {
    const line = `console.${msg.type()}: ${msg.text()}`;
    if (consoleErrors && msg.type() === "error") consoleErrors.push(line);
    log(line);
  });
  if (consoleErrors) {
    page.on("pageerror", (err) => {
      consoleErrors.push(`pageerror: ${err.message}`);
      log(`pageerror: ${err.stack ?? err.message}`);
    });
  }
  return { context, page };
}
