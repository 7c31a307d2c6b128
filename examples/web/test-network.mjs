// Drives the page's network parts in headless Chromium against a live berth run with
// `--network none` (as scripts/test-sdks.sh runs it: that berth shares the host's network
// namespace, where no test may make a bridge): a create with the egress policy "none" shows NONE
// and "loopback only" in the info panel, with the DNS servers GetWorkspace reports; the Network
// policy form refuses an allowlist (FAILED_PRECONDITION NETWORK_DISABLED) and a malformed CIDR
// (INVALID_ARGUMENT INVALID_NETWORK_POLICY) in its error box and applies "none" and the server's
// default; a create with an allowlist of 203.0.113.0/24 shows NETWORK_DISABLED and one with a
// malformed CIDR INVALID_NETWORK_POLICY in the page's error box, and creates nothing. Saves
// artifacts/network.png.
//
// Environment: BERTH_TEST_SERVER, BERTH_TEST_IMAGE_BUSYBOX, CHROMIUM (default /usr/bin/chromium),
// BERTH_TEST_WEB_PORT (default 8080; berth must allow the origin http://127.0.0.1:PORT).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { launchPage } from "./browser.mjs";
import { berthErrorInfo, createBerthClient, NetworkMode } from "@berth/sdk";
import { serve } from "./serve.mjs";

function requireEnv(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set (see examples/web/test.sh)`);
  return value;
}

const berthUrl = requireEnv("BERTH_TEST_SERVER");
const image = requireEnv("BERTH_TEST_IMAGE_BUSYBOX");
const here = fileURLToPath(new URL(".", import.meta.url));
const artifacts = join(here, "artifacts");
const id = `web-net-${randomBytes(4).toString("hex")}`;
const refusedIds = [`${id}-allow`, `${id}-bad`];
const timeout = 60_000;

const log = (...args) => console.log("[web-network-test]", ...args);
const consoleErrors = [];
const sdk = createBerthClient({ baseUrl: berthUrl, transport: "grpc" });

async function exists(workspaceId) {
  try {
    await sdk.workspaces.getWorkspace({ workspaceId });
    return true;
  } catch (err) {
    if (berthErrorInfo(err)?.reason === "WORKSPACE_NOT_FOUND") return false;
    throw err;
  }
}

// The <option> values of the mode selects: NetworkMode numbers, 0 for the server's default.
const mode = (m) => String(m);

mkdirSync(artifacts, { recursive: true });
const httpServer = await serve(Number(process.env.BERTH_TEST_WEB_PORT || 8080));
const pageUrl = `http://127.0.0.1:${httpServer.address().port}/?server=${encodeURIComponent(berthUrl)}`;
const userDataDir = mkdtempSync(join(tmpdir(), "berth-web-network-test-"));
let context;
let page;
let failed = false;

try {
  ({ context, page } = await launchPage(userDataDir, { log, timeout, consoleErrors }));

  log(`page ${pageUrl}, workspace ${id}`);
  await page.goto(pageUrl);
  await page.locator("#status", { hasText: /Refresh: (done|failed)/ }).waitFor();
  assert.equal(await page.locator("#error").isHidden(), true, `listing works: ${await page.locator("#error").textContent()}`);

  // The CIDR list is for an allowlist or a denylist only.
  const createCidrs = page.locator("#create-network-cidrs");
  assert.equal(await page.inputValue("#create-network-mode"), mode(NetworkMode.UNSPECIFIED), "the server's default first");
  assert.equal(await createCidrs.isDisabled(), true);
  await page.selectOption("#create-network-mode", mode(NetworkMode.ALLOWLIST));
  assert.equal(await createCidrs.isEnabled(), true);

  // Create with "none": the info panel shows NONE and loopback only, and the DNS servers of the
  // workspace's resolv.conf as GetWorkspace reports them.
  await page.fill("#create-id", id);
  await page.fill("#create-image", image);
  await page.fill("#create-network-cidrs", "203.0.113.0/24"); // dropped: "none" takes no CIDRs
  await page.selectOption("#create-network-mode", mode(NetworkMode.NONE));
  assert.equal(await createCidrs.isDisabled(), true);
  await page.click("#create-button");
  await page.locator("#status", { hasText: new RegExp(`Create ${id}: (done|failed)`) }).waitFor();
  assert.equal(await page.locator("#error").isHidden(), true, `the create works: ${await page.locator("#error").textContent()}`);
  await page.locator("#ws-state", { hasText: "RUNNING" }).waitFor();
  const { workspace } = await sdk.workspaces.getWorkspace({ workspaceId: id });
  assert.equal(workspace.network?.policy?.mode, NetworkMode.NONE, "the server has the policy NONE");
  assert.deepEqual(workspace.network?.policy?.cidrs, []);
  assert.equal(workspace.network?.address, "");
  assert.equal(await page.locator("#ws-network").textContent(), "NONE");
  assert.equal(await page.locator("#ws-network").getAttribute("data-mode"), "NONE");
  assert.equal(await page.locator("#ws-address").textContent(), "loopback only");
  assert.equal(await page.locator("#ws-dns").textContent(), workspace.network.dnsServers.join(", ") || "—");
  log(`info panel: network ${await page.locator("#ws-network").textContent()}, address ${await page.locator("#ws-address").textContent()}, dns ${await page.locator("#ws-dns").textContent()}`);

  // The Network policy form starts at the policy in force. Each action ends with "ACTION: done"
  // or "ACTION: failed" in its status line.
  const networkStatus = page.locator("#network-status");
  const networkError = page.locator("#network-error");
  const applyPolicy = async (m, cidrs) => {
    await page.selectOption("#network-mode", mode(m));
    if (cidrs !== undefined) await page.fill("#network-cidrs", cidrs);
    await page.click("#network-apply");
    await networkStatus.filter({ hasText: /: (done|failed)$/ }).waitFor();
    return (await networkStatus.textContent()).endsWith(": done");
  };
  assert.equal(await page.locator("#network-panel").isVisible(), true);
  assert.equal(await page.inputValue("#network-mode"), mode(NetworkMode.NONE));
  assert.equal(await page.locator("#network-cidrs").isDisabled(), true);

  assert.equal(await applyPolicy(NetworkMode.ALLOWLIST, "203.0.113.0/24, 198.51.100.7"), false, "an allowlist is refused");
  assert.match(await networkError.textContent(), /FAILED_PRECONDITION NETWORK_DISABLED: /);
  log(`allowlist refused: ${await networkError.textContent()}`);
  assert.equal(await page.locator("#ws-network").textContent(), "NONE", "the info panel keeps NONE");
  await page.screenshot({ path: join(artifacts, "network.png"), fullPage: true });
  log(`screenshot: ${join(artifacts, "network.png")}`);

  assert.equal(await applyPolicy(NetworkMode.DENYLIST, "203.0.113.0/33"), false, "a malformed CIDR is refused");
  assert.match(await networkError.textContent(), /INVALID_ARGUMENT INVALID_NETWORK_POLICY: .*203\.0\.113\.0\/33/);
  log(`malformed CIDR refused: ${await networkError.textContent()}`);

  assert.equal(await applyPolicy(NetworkMode.NONE), true, `"none" applies: ${await networkError.textContent()}`);
  assert.equal(await networkError.isHidden(), true);
  assert.equal(await page.locator("#network-result").textContent(), "Now NONE, loopback only");
  assert.equal(await applyPolicy(NetworkMode.UNSPECIFIED), true, `the server's default applies: ${await networkError.textContent()}`);
  assert.equal(await page.locator("#network-result").textContent(), "Now NONE, loopback only", "the default of this server is NONE");
  assert.equal(await page.inputValue("#network-mode"), mode(NetworkMode.NONE), "the form shows the policy in force");
  const { workspace: updated } = await sdk.workspaces.getWorkspace({ workspaceId: id });
  assert.equal(updated.network?.policy?.mode, NetworkMode.NONE);
  assert.equal(updated.state, workspace.state, "no restart");
  assert.equal(updated.initPid, workspace.initPid, "the same init: no restart");

  // Creates with a policy this server cannot give, and with a malformed CIDR: the page's error
  // box shows the code and reason, and nothing was created.
  const createRefused = async (workspaceId, m, cidrs) => {
    await page.fill("#create-id", workspaceId);
    await page.selectOption("#create-network-mode", mode(m));
    await page.fill("#create-network-cidrs", cidrs);
    await page.click("#create-button");
    await page.locator("#status", { hasText: new RegExp(`Create ${workspaceId}: (done|failed)`) }).waitFor();
    assert.equal(await page.locator("#status").textContent(), `Create ${workspaceId}: failed`, "the create is refused");
    const text = await page.locator("#error").textContent();
    log(`create ${workspaceId} refused: ${text}`);
    assert.equal(await exists(workspaceId), false, `${workspaceId} was not created`);
    return text;
  };
  assert.match(
    await createRefused(refusedIds[0], NetworkMode.ALLOWLIST, "203.0.113.0/24"),
    new RegExp(`^Create ${refusedIds[0]} failed: FAILED_PRECONDITION NETWORK_DISABLED: `),
  );
  assert.match(
    await createRefused(refusedIds[1], NetworkMode.DENYLIST, "198.51.100.7, not-a-cidr"),
    new RegExp(`^Create ${refusedIds[1]} failed: INVALID_ARGUMENT INVALID_NETWORK_POLICY: .*not-a-cidr`),
  );
  assert.equal(await page.locator("#ws-id").textContent(), id, "the selection stays");

  await page.click("#delete");
  await page.locator("#status", { hasText: `Delete ${id}: done` }).waitFor();
  assert.equal(await exists(id), false, "the workspace is gone on the server");
  assert.equal(await page.locator("#network-panel").isHidden(), true, "no form without a workspace");
  assert.deepEqual(consoleErrors, [], "no browser console errors");
} catch (err) {
  failed = true;
  console.error("[web-network-test] FAIL:", err);
  if (page) {
    await page.screenshot({ path: join(artifacts, "failure-network.png"), fullPage: true }).catch(() => {});
    console.error(`[web-network-test] page error box: ${await page.locator("#error").textContent().catch(() => "?")}`);
  }
} finally {
  if (consoleErrors.length) console.error(`[web-network-test] browser console errors:\n  ${consoleErrors.join("\n  ")}`);
  await context?.close().catch(() => {});
  httpServer.close();
  rmSync(userDataDir, { recursive: true, force: true });
  for (const workspaceId of [id, ...refusedIds]) {
    try {
      if (await exists(workspaceId)) await sdk.workspaces.deleteWorkspace({ workspaceId });
    } catch (err) {
      console.error(`[web-network-test] cleanup of ${workspaceId} failed:`, err);
      failed = true;
    }
  }
}

if (failed) process.exit(1);
log("PASS");
