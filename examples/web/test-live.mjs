// Drives the page's live panels in headless Chromium against a live berth: the device picker of
// the create form (ListDevices of a fake CDI spec installed for the test, a malformed spec file
// as a warning), a create with the fake device checked (the info panel shows it and the device
// node works inside), the metrics panel (the CPU chart rises above 50 % of a core while a busy
// loop runs and falls when it stops; memory, pids and storage are shown; a stopped workspace
// leaves a gap; the stream is aborted when the workspace goes), the event log (the lifecycle
// events of the test's actions, newest on top; while the page is hidden both streams are closed,
// and the log catches up with after_event_id when it shows again; the selected workspace's log
// gets its DELETED). Saves artifacts/devices.png,
// artifacts/metrics.png and artifacts/events.png.
//
// Environment: BERTH_TEST_SERVER, BERTH_TEST_IMAGE_BUSYBOX, BERTH_TEST_CDI_SPEC_DIR (a directory
// the server reads with --cdi-spec-dir; the test writes its spec files there and removes them),
// CHROMIUM (default /usr/bin/chromium), BERTH_TEST_WEB_PORT (default 8080; berth must allow the
// origin http://127.0.0.1:PORT).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { launchPage } from "./browser.mjs";
import { berthErrorInfo, createBerthClient, runCommand } from "@berth/sdk";
import { serve } from "./serve.mjs";

function requireEnv(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set (see examples/web/test.sh)`);
  return value;
}

const berthUrl = requireEnv("BERTH_TEST_SERVER");
const image = requireEnv("BERTH_TEST_IMAGE_BUSYBOX");
const specDir = requireEnv("BERTH_TEST_CDI_SPEC_DIR");
const here = fileURLToPath(new URL(".", import.meta.url));
const artifacts = join(here, "artifacts");
const suffix = randomBytes(4).toString("hex");
const id = `web-live-${suffix}`;
const timeout = 60_000;

const log = (...args) => console.log("[web-live-test]", ...args);
const consoleErrors = [];
const sdk = createBerthClient({ baseUrl: berthUrl, transport: "grpc" });

async function shell(workspaceId, script) {
  const result = await runCommand(sdk, workspaceId, "sh", ["-c", script]);
  const stderr = Buffer.from(result.stderr).toString();
  assert.equal(result.exitCode, 0, `sh -c ${JSON.stringify(script)} exited with ${result.exitCode}: ${stderr}`);
  return Buffer.from(result.stdout).toString();
}

async function exists(workspaceId) {
  try {
    await sdk.workspaces.getWorkspace({ workspaceId });
    return true;
  } catch (err) {
    if (berthErrorInfo(err)?.reason === "WORKSPACE_NOT_FOUND") return false;
    throw err;
  }
}

// A fake CDI device, as tests/tests/devices.rs makes one: a char node with /dev/null's numbers
// (so writes to it work) and an env var; its kind is this run's own, so no other spec file of the
// directory defines the same name. Next to it a malformed file, which the picker names.
const vendor = "web.berth.test";
const deviceClass = `fake${suffix}`;
const deviceName = `${vendor}/${deviceClass}=fake0`;
const nullRdev = statSync("/dev/null").rdev;
const major = Number((BigInt(nullRdev) >> 8n) & 0xfffn);
const minor = Number(BigInt(nullRdev) & 0xffn);
const specPath = join(specDir, `web-${suffix}.json`);
const brokenPath = join(specDir, `web-${suffix}-broken.yaml`);
writeFileSync(
  specPath,
  JSON.stringify({
    cdiVersion: "0.6.0",
    kind: `${vendor}/${deviceClass}`,
    devices: [
      {
        name: "fake0",
        containerEdits: {
          deviceNodes: [{ path: "/dev/fake0", type: "c", major, minor, permissions: "rw" }],
          env: ["FAKE_DEVICE=fake0"],
        },
      },
    ],
  }),
);
writeFileSync(brokenPath, "cdiVersion: [");

mkdirSync(artifacts, { recursive: true });
const httpServer = await serve(Number(process.env.BERTH_TEST_WEB_PORT || 8080));
const pageUrl = `http://127.0.0.1:${httpServer.address().port}/?server=${encodeURIComponent(berthUrl)}`;
const userDataDir = mkdtempSync(join(tmpdir(), "berth-web-live-test-"));
let context;
let page;
let failed = false;

try {
  ({ context, page } = await launchPage(userDataDir, { log, timeout, consoleErrors }));
  // The streams still open: a WatchMetrics one while a workspace is shown, none once it is gone;
  // a WatchEvents one while the page shows.
  const openStreams = { WatchMetrics: new Set(), WatchEvents: new Set() };
  const streamOf = (req) => openStreams[req.url().split("/berth.workspace.v1.WorkspaceService/")[1]];
  page.on("request", (req) => streamOf(req)?.add(req));
  page.on("requestfinished", (req) => streamOf(req)?.delete(req));
  page.on("requestfailed", (req) => streamOf(req)?.delete(req));
  const openMetricsStreams = openStreams.WatchMetrics;
  const streamsOpen = async (method, count) => {
    for (let tries = 0; openStreams[method].size !== count; tries++) {
      assert.ok(tries < 100, `${count} ${method} streams are open (${openStreams[method].size} are)`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };
  // What the page sees of `document.hidden` (a headless page is always visible otherwise).
  const setPageHidden = (hidden) =>
    page.evaluate((h) => {
      Object.defineProperty(document, "hidden", { configurable: true, get: () => h });
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => (h ? "hidden" : "visible") });
      document.dispatchEvent(new Event("visibilitychange"));
    }, hidden);

  // The event log's rows of this test's workspace, newest first.
  const eventRow = (kind, hasText) => page.locator(`#event-rows tr[data-workspace="${id}"][data-kind="${kind}"]`, { hasText });
  const shownEventIds = () =>
    page.locator("#event-rows tr").evaluateAll((rows) => rows.map((tr) => Number(tr.dataset.eventId)));

  const errorBox = page.locator("#error:not([hidden])");
  const waitFor = async (locator, state = "visible") => {
    const errorShown = errorBox.waitFor().then(async () => {
      throw new Error(`the page shows an error: ${await errorBox.textContent()}`);
    });
    errorShown.catch(() => {});
    await Promise.race([locator.waitFor({ state }), errorShown]);
  };

  log(`page ${pageUrl}, workspace ${id}, device ${deviceName}`);
  await page.goto(pageUrl);
  await page.locator("#status", { hasText: /Refresh: (done|failed)/ }).waitFor();
  assert.equal(await page.locator("#events-scope").inputValue(), "all", "the log shows every workspace's events");
  await page.locator('#events-live[data-live="true"]').waitFor(); // the first heartbeat came

  // The picker lists the fake device with its vendor, class and spec file, and names the
  // malformed file.
  await page.locator("#devices-status", { hasText: "List devices: done" }).waitFor();
  const item = page.locator(`#devices-list li[data-device="${deviceName}"]`);
  await item.waitFor();
  assert.equal(await item.locator(".kind").textContent(), `${vendor} · ${deviceClass}`);
  assert.equal(await item.locator(".spec").textContent(), specPath);
  const warning = page.locator(`#devices-warnings li[data-path="${brokenPath}"]`);
  await warning.waitFor();
  log(`spec file warning: ${await warning.textContent()}`);
  assert.match(await warning.textContent(), /^skipped .*broken\.yaml: \S/);
  assert.equal(await item.locator("input").isChecked(), false);

  // Create with the device checked: the info panel shows it, and the node works inside.
  await page.fill("#create-id", id);
  await page.fill("#create-image", image);
  await item.locator("input").check();
  await page.click("#create-button");
  await waitFor(page.locator("#status", { hasText: `Create ${id}: done` }));
  await page.locator("#ws-state", { hasText: "RUNNING" }).waitFor();
  assert.equal(await page.locator("#ws-devices").textContent(), deviceName);
  const { workspace } = await sdk.workspaces.getWorkspace({ workspaceId: id });
  assert.deepEqual(workspace.cdiDevices, [deviceName], "the server has the device");
  assert.equal(await shell(id, "ls /dev/fake0"), "/dev/fake0\n");
  assert.equal(await shell(id, "echo written > /dev/fake0 && test -c /dev/fake0 && echo ok"), "ok\n");
  await page.screenshot({ path: join(artifacts, "devices.png"), fullPage: true });
  log("created with the fake device; /dev/fake0 works inside");
  await eventRow("CREATED").waitFor();

  // Metrics: live samples of the running workspace.
  const cpuChart = page.locator("#metrics-cpu-chart");
  const memoryChart = page.locator("#metrics-memory-chart");
  await page.locator('#metrics-live[data-live="true"]').waitFor();
  await page.waitForFunction(() => Number(document.querySelector("#metrics-cpu-chart")?.dataset.count) >= 2);
  assert.equal(openMetricsStreams.size, 1, "one WatchMetrics stream is open");
  assert.ok(Number(await memoryChart.getAttribute("data-last")) > 0, "the memory chart has a working set");
  assert.match(await page.locator("#metrics-pids").textContent(), /^[1-9][0-9]* \/ unlimited$/);
  assert.equal(await page.locator("#metrics-cpu-limit").textContent(), "unlimited");
  assert.match(await page.locator("#metrics-rootfs").textContent(), /^[0-9.]+ (B|KiB|MiB|GiB)$/);
  assert.match(await page.locator("#metrics-inodes").textContent(), /^[0-9]+$/);
  assert.match(await page.locator("#metrics-data").textContent(), /^[0-9.]+ (B|KiB|MiB|GiB)$/);
  const idleCpu = Number(await cpuChart.getAttribute("data-last"));
  log(`idle: cpu ${idleCpu} %, memory ${await page.locator("#metrics-memory").textContent()}`);

  // A busy loop (killed by timeout should the test die first): the CPU chart's last value rises
  // above 50 % of one core, and falls again once the loop is killed.
  const loopPid = (await shell(id, "timeout -s KILL 120 sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!")).trim();
  const cpuAbove = (percent) =>
    page.waitForFunction(
      (p) => Number(document.querySelector("#metrics-cpu-chart")?.dataset.last) > p,
      percent,
      { timeout: 20_000 },
    );
  const cpuBelow = (percent) =>
    page.waitForFunction(
      (p) => {
        const last = document.querySelector("#metrics-cpu-chart")?.dataset.last;
        return last !== "" && Number(last) < p;
      },
      percent,
      { timeout: 20_000 },
    );
  await cpuAbove(50);
  const busyCpu = Number(await cpuChart.getAttribute("data-last"));
  log(`busy loop ${loopPid}: cpu ${busyCpu} %, chart ${await cpuChart.getAttribute("data-count")} samples`);
  assert.match(await page.locator("#metrics-cpu").textContent(), /^[0-9.]+ % of one core$/);
  // A few more busy samples for the screenshot: the loop keeps the chart up.
  const busyCount = Number(await cpuChart.getAttribute("data-count"));
  await page.waitForFunction((n) => Number(document.querySelector("#metrics-cpu-chart")?.dataset.count) >= n, busyCount + 5);
  assert.ok(Number(await cpuChart.getAttribute("data-last")) > 50, "the chart stays up while the loop runs");
  await page.screenshot({ path: join(artifacts, "metrics.png"), fullPage: true });
  await shell(id, `kill ${loopPid}`);
  await cpuBelow(20);
  log(`loop killed: cpu ${await cpuChart.getAttribute("data-last")} %, max ${await cpuChart.getAttribute("data-max")} %`);

  // The page hides: both streams close. The workspace stops meanwhile (through the SDK); when
  // the page shows again the log resumes after the last event it showed and so gets the stop,
  // and the metrics resume without CPU, memory and pids (a gap), storage still measured.
  const lastShownBeforeHiding = Math.max(...(await shownEventIds()));
  await setPageHidden(true);
  await streamsOpen("WatchMetrics", 0);
  await streamsOpen("WatchEvents", 0);
  assert.equal(await page.locator("#metrics-live").textContent(), "paused while the page is hidden");
  await sdk.workspaces.stopWorkspace({ workspaceId: id });
  await setPageHidden(false);
  await streamsOpen("WatchMetrics", 1);
  await streamsOpen("WatchEvents", 1);
  assert.equal(
    await page.locator("#events-live").getAttribute("data-after-event-id"),
    String(lastShownBeforeHiding),
    "the reopened log resumes after the last event it showed",
  );
  await eventRow("STATE_CHANGED", "RUNNING → STOPPED").waitFor();
  await page.waitForFunction(() => document.querySelector("#metrics-cpu-chart")?.dataset.last === "");
  assert.equal(await page.locator("#metrics-cpu").textContent(), "—");
  assert.match(await page.locator("#metrics-pids").textContent(), /^— \//);
  assert.match(await page.locator("#metrics-rootfs").textContent(), /^[0-9.]+ (B|KiB|MiB|GiB)$/, "storage of a stopped workspace");
  log("hidden and shown again: the stop came through the replay; a gap in the charts, storage still shown");

  // Start and delete from the page: their events arrive too.
  await page.locator(`#workspace-rows tr[data-workspace-id="${id}"]`).click();
  await waitFor(page.locator("#ws-state", { hasText: "STOPPED" }));
  await page.click("#start");
  await waitFor(page.locator("#ws-state", { hasText: "RUNNING" }));
  await eventRow("STATE_CHANGED", "STOPPED → RUNNING").waitFor();
  const ids = await shownEventIds();
  assert.deepEqual(ids, [...ids].sort((a, b) => b - a), "newest on top");
  assert.equal(new Set(ids).size, ids.length, "no event is shown twice");
  const kinds = await page
    .locator(`#event-rows tr[data-workspace="${id}"]`)
    .evaluateAll((rows) => rows.map((tr) => `${tr.dataset.kind} ${tr.querySelector(".details").textContent}`).reverse());
  log(`events of ${id}: ${kinds.join(" | ")}`);
  assert.match(kinds[0], /^CREATED /);
  assert.match(kinds.at(-1), /^STATE_CHANGED STOPPED → RUNNING/);
  await page.screenshot({ path: join(artifacts, "events.png"), fullPage: true });

  // The log of the selected workspace only: a new log, filtered by the server.
  await page.selectOption("#events-scope", "selected");
  await page.locator("#event-rows tr").first().waitFor({ state: "detached" });
  await page.locator('#events-live[data-live="true"]').waitFor();
  await streamsOpen("WatchEvents", 1);

  // Delete: the panel goes and its stream is aborted.
  await page.click("#delete");
  await waitFor(page.locator("#status", { hasText: `Delete ${id}: done` }));
  assert.equal(await page.locator("#metrics-section").isHidden(), true);
  for (let tries = 0; openMetricsStreams.size > 0; tries++) {
    assert.ok(tries < 50, "the WatchMetrics stream ends with the selection");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(await exists(id), false);
  // The log stays on the deleted workspace, so its last event arrives.
  await eventRow("DELETED").waitFor();
  const workspacesShown = await page.locator("#event-rows tr").evaluateAll((rows) => rows.map((tr) => tr.dataset.workspace));
  assert.ok(workspacesShown.every((w) => w === id), `only ${id}'s events: ${workspacesShown.join(" ")}`);
  log(`the selected workspace's log: ${workspacesShown.length} events, the last DELETED`);
  assert.equal(await page.locator("#error").isHidden(), true, `no error left: ${await page.locator("#error").textContent()}`);
  for (const box of ["#devices-error", "#metrics-error", "#events-error"]) {
    assert.equal(await page.locator(box).isHidden(), true, `${box}: ${await page.locator(box).textContent()}`);
  }
  assert.deepEqual(consoleErrors, [], "no browser console errors");
} catch (err) {
  failed = true;
  console.error("[web-live-test] FAIL:", err);
  if (page) {
    await page.screenshot({ path: join(artifacts, "failure-live.png"), fullPage: true }).catch(() => {});
    console.error(`[web-live-test] page error box: ${await page.locator("#error").textContent().catch(() => "?")}`);
  }
} finally {
  if (consoleErrors.length) console.error(`[web-live-test] browser console errors:\n  ${consoleErrors.join("\n  ")}`);
  await context?.close().catch(() => {});
  httpServer.close();
  rmSync(userDataDir, { recursive: true, force: true });
  rmSync(specPath, { force: true });
  rmSync(brokenPath, { force: true });
  try {
    if (await exists(id)) await sdk.workspaces.deleteWorkspace({ workspaceId: id });
  } catch (err) {
    console.error(`[web-live-test] cleanup of ${id} failed:`, err);
    failed = true;
  }
}

if (failed) process.exit(1);
log("PASS");
