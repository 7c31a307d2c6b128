// Drives the page's token field in headless Chromium against the berth with a tokens file and
// TLS that scripts/test-sdks.sh starts beside the plain one: without a token the list fails with
// UNAUTHENTICATED; with the admin token typed in, the list loads and every grpc-web request
// carries `authorization: Bearer <token>`; the token survives a reload of the tab (and is never
// in the URL); a read-only token's create fails with PERMISSION_DENIED. Saves
// artifacts/auth.png. (Chromium does not know the test CA: the context ignores certificate
// errors; the SDK and CLI suites check the certificate itself.)
//
// Environment: BERTH_TEST_TLS_SERVER (https://localhost:PORT), BERTH_TEST_TOKEN (admin),
// BERTH_TEST_READ_TOKEN (read on sdk-tls-reader only), CHROMIUM (default /usr/bin/chromium),
// BERTH_TEST_WEB_PORT (default 8080; that berth allows the origin http://127.0.0.1:PORT).

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { launchPage } from "./browser.mjs";
import { serve } from "./serve.mjs";

function requireEnv(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set (see scripts/test-sdks.sh)`);
  return value;
}

const berthUrl = requireEnv("BERTH_TEST_TLS_SERVER");
const token = requireEnv("BERTH_TEST_TOKEN");
const readToken = requireEnv("BERTH_TEST_READ_TOKEN");
const here = fileURLToPath(new URL(".", import.meta.url));
const artifacts = join(here, "artifacts");
const log = (...args) => console.log("[web-auth-test]", ...args);

mkdirSync(artifacts, { recursive: true });
const httpServer = await serve(Number(process.env.BERTH_TEST_WEB_PORT || 8080));
const pageUrl = `http://127.0.0.1:${httpServer.address().port}/?server=${encodeURIComponent(berthUrl)}`;
const userDataDir = mkdtempSync(join(tmpdir(), "berth-web-auth-"));
let context;
let page;
let failed = false;

try {
  ({ context, page } = await launchPage(userDataDir, {
    log,
    timeout: 30_000,
    viewport: { width: 1200, height: 700 },
    ignoreHTTPSErrors: true,
  }));
  // The authorization header of every grpc-web call the page makes.
  const sent = [];
  page.on("request", async (request) => {
    if (request.method() !== "POST" || !request.url().startsWith(berthUrl)) return;
    sent.push({ path: new URL(request.url()).pathname, authorization: (await request.allHeaders()).authorization });
  });
  const errorBox = page.locator("#error");
  const refreshed = () => page.locator("#status", { hasText: /Refresh: (done|failed)/ }).waitFor();

  log(`page ${pageUrl}`);
  await page.goto(pageUrl);
  await refreshed();
  assert.match(await errorBox.textContent(), /Refresh failed: UNAUTHENTICATED UNAUTHENTICATED/);
  assert.ok(sent.length > 0 && sent.every((call) => call.authorization === undefined), "no token, no header");

  await page.fill("#token", token);
  sent.length = 0;
  await page.click("#token-use");
  await page.locator("#status", { hasText: "Refresh: done" }).waitFor();
  assert.equal(await errorBox.isHidden(), true, `no error: ${await errorBox.textContent()}`);
  const listed = sent.filter((call) => call.path.endsWith("/ListWorkspaces"));
  assert.ok(listed.length > 0, "the list was asked for");
  assert.ok(listed.every((call) => call.authorization === `Bearer ${token}`), JSON.stringify(listed));
  assert.ok(!page.url().includes(token), "the token is not in the URL");

  // Kept for the tab: a reload lists again without typing.
  await page.reload();
  await page.locator("#status", { hasText: "Refresh: done" }).waitFor();
  assert.equal(await page.inputValue("#token"), token);

  // A read-only token: the list still loads (it shows what the token may read), a create is refused.
  await page.fill("#token", readToken);
  await page.click("#token-use");
  await page.locator("#status", { hasText: "Refresh: done" }).waitFor();
  await page.fill("#create-id", "web-auth-refused");
  await page.click("#create-button");
  await page.locator("#status", { hasText: /Create web-auth-refused: failed/ }).waitFor();
  assert.match(await errorBox.textContent(), /PERMISSION_DENIED PERMISSION_DENIED: token "sdk-reader" may only read/);
  await page.screenshot({ path: join(artifacts, "auth.png"), fullPage: true });
} catch (err) {
  failed = true;
  console.error("[web-auth-test] FAIL:", err);
  if (page) await page.screenshot({ path: join(artifacts, "failure-auth.png"), fullPage: true }).catch(() => {});
} finally {
  await context?.close().catch(() => {});
  httpServer.close();
  rmSync(userDataDir, { recursive: true, force: true });
}

if (failed) process.exit(1);
log("PASS");
