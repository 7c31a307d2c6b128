// Drives the page in headless Chromium against a live berth: create with a live progress bar,
// RUNNING, a shell in the terminal panel that comes back after a reload, the file manager
// (browse, new folder and file, edit and save, a conflicting change inside the workspace,
// upload, download), the data panel (export as .tar.gz and .tar.zst, import with chunked
// uploads), snapshots and versions (take, restore by name and by version, SNAPSHOT_IN_USE,
// delete), an image change carrying /data over and its rollback, stop, start, delete with
// preserved data. Saves artifacts/screenshot.png, artifacts/terminal.png, artifacts/files.png,
// artifacts/data.png, artifacts/snapshots.png and artifacts/image-change.png.
//
// Environment: BERTH_TEST_SERVER (required), BERTH_TEST_IMAGE_MULTILAYER (required; the image
// the workspace is created from), BERTH_TEST_IMAGE_BUSYBOX (required; the image it moves onto),
// BERTH_TEST_SDK_NAMESPACE (required: the image is forgotten there first so its pull moves
// bytes), TESTBED_DIR (for forget-image.sh), CHROMIUM (default /usr/bin/chromium),
// BERTH_TEST_WEB_PORT (the port the page is served on, default 8080: berth must allow the origin
// http://127.0.0.1:PORT with --cors-origin, as `make run` does for 8080).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
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
const image = requireEnv("BERTH_TEST_IMAGE_MULTILAYER");
const otherImage = requireEnv("BERTH_TEST_IMAGE_BUSYBOX"); // the Change image form's target
const namespace = requireEnv("BERTH_TEST_SDK_NAMESPACE");
const here = fileURLToPath(new URL(".", import.meta.url));
const repoRoot = join(here, "../..");
const artifacts = join(here, "artifacts");
const id = `web-${randomBytes(4).toString("hex")}`;
const timeout = 60_000;

const log = (...args) => console.log("[web-test]", ...args);
const consoleErrors = [];
const sdk = createBerthClient({ baseUrl: berthUrl, transport: "grpc" });

// Runs a shell command inside the workspace and returns its stdout, failing on a non-zero exit.
async function shell(workspaceId, script) {
  const result = await runCommand(sdk, workspaceId, "sh", ["-c", script]);
  const stderr = Buffer.from(result.stderr).toString();
  assert.equal(result.exitCode, 0, `sh -c ${JSON.stringify(script)} exited with ${result.exitCode}: ${stderr}`);
  return Buffer.from(result.stdout);
}

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

async function exists(workspaceId) {
  try {
    await sdk.workspaces.getWorkspace({ workspaceId });
    return true;
  } catch (err) {
    if (berthErrorInfo(err)?.reason === "WORKSPACE_NOT_FOUND") return false;
    throw err;
  }
}

mkdirSync(artifacts, { recursive: true });
const httpServer = await serve(Number(process.env.BERTH_TEST_WEB_PORT || 8080));
const pageUrl = `http://127.0.0.1:${httpServer.address().port}/?server=${encodeURIComponent(berthUrl)}`;
const userDataDir = mkdtempSync(join(tmpdir(), "berth-web-test-"));
let context;
let page;
let failed = false;

try {
  ({ context, page } = await launchPage(userDataDir, { log, timeout, consoleErrors }));
  page.on("requestfailed", (req) => log(`request failed: ${req.url()} ${req.failure()?.errorText}`));

  // Record every value the overall progress bar takes (setting `.value` sets the attribute).
  // The same for the data panel's transfer bar.
  await page.addInitScript(() => {
    window.__pullBarValues = [];
    window.__dataBarValues = [];
    new MutationObserver((mutations) => {
      for (const m of mutations) {
        if (m.target.id === "pull-bar") window.__pullBarValues.push(Number(m.target.value));
        if (m.target.id === "data-bar") window.__dataBarValues.push(Number(m.target.value));
      }
    }).observe(document, { subtree: true, attributes: true, attributeFilter: ["value"] });
  });

  // Waits for `locator`, failing at once with the page's error box when an action fails.
  const errorBox = page.locator("#error:not([hidden])");
  const waitFor = async (locator, state = "visible") => {
    const errorShown = errorBox.waitFor().then(async () => {
      throw new Error(`the page shows an error: ${await errorBox.textContent()}`);
    });
    errorShown.catch(() => {}); // it matters only through the race below
    await Promise.race([locator.waitFor({ state }), errorShown]);
  };

  log(`page ${pageUrl}, workspace ${id}`);
  await page.goto(pageUrl);
  await page.locator("#status", { hasText: /Refresh: (done|failed)/ }).waitFor();
  assert.equal(await page.locator("#error").isHidden(), true, `listing works: ${await page.locator("#error").textContent()}`);
  assert.equal(await page.locator("#server").textContent(), berthUrl);

  // Create, with a cold pull.
  execFileSync("tests/testbed/forget-image.sh", [namespace, image], { cwd: repoRoot, stdio: "inherit" });
  await page.fill("#create-id", id);
  await page.fill("#create-image", image);
  const started = Date.now();
  await page.click("#create-button");
  await waitFor(page.locator("#status", { hasText: `Create ${id}: done` }));
  log(`created in ${Date.now() - started} ms; phases: ${await page.locator("#phase").textContent()}`);

  const values = await page.evaluate(() => window.__pullBarValues);
  const max = Math.max(0, ...values);
  const finalValue = await page.locator("#pull-bar").evaluate((bar) => bar.value);
  log(`progress bar values: ${values.map((v) => v.toFixed(1)).join(", ")}`);
  assert.ok(max > 0, `the progress bar advanced (max ${max})`);
  assert.equal(finalValue, 100, "the progress bar ends at 100%");
  const layerCount = await page.locator("#layers li").count();
  assert.ok(layerCount > 0, "per-layer progress is shown");
  log(`per-layer rows: ${layerCount}; pull text: ${await page.locator("#pull-text").textContent()}`);
  assert.match(await page.locator("#phase").textContent(), /pulling → downloading → unpacking.* → creating → ready/);

  // Info and list.
  await page.locator("#ws-state", { hasText: "RUNNING" }).waitFor();
  assert.equal(await page.locator("#ws-id").textContent(), id);
  assert.equal(await page.locator("#ws-image").textContent(), image);
  assert.match(await page.locator("#ws-digest").textContent(), /^sha256:[0-9a-f]{64}$/);
  assert.match(await page.locator("#ws-pid").textContent(), /^[1-9][0-9]*$/);
  const row = page.locator(`#workspace-rows tr[data-workspace-id="${id}"]`);
  await row.locator("td.state", { hasText: "RUNNING" }).waitFor();
  await page.screenshot({ path: join(artifacts, "screenshot.png"), fullPage: true });
  log(`screenshot: ${join(artifacts, "screenshot.png")}`);

  // A failing call shows its code and reason on the page (grpc-status-details-bin reaches the
  // browser): the same id with another image.
  await page.fill("#create-image", `${image}-other`);
  await page.click("#create-button");
  await page.locator("#error:not([hidden])").waitFor();
  const errorText = await page.locator("#error").textContent();
  log(`error shown: ${errorText}`);
  assert.match(errorText, /ALREADY_EXISTS WORKSPACE_ALREADY_EXISTS/);
  assert.equal(await page.locator("#ws-state").textContent(), "RUNNING");

  // The terminal: a shell on a PTY, typed into with the keyboard; after a reload the page selects
  // the workspace again (from the URL) and re-attaches, and the replay brings the screen back.
  const terminalRows = page.locator("#terminal .xterm-rows");
  const terminalShows = async (text, what) => {
    try {
      await waitFor(terminalRows.filter({ hasText: text }));
    } catch (err) {
      log(`terminal buffer (${what}):\n${await page.evaluate(() => window.berthTerminalText?.()).catch(() => "?")}`);
      throw err;
    }
  };
  await page.click("#terminal-open");
  await waitFor(page.locator("#status", { hasText: `Open terminal of ${id}: done` }));
  await page.click("#terminal");
  await page.keyboard.type("echo berth-$((6*7))");
  await page.keyboard.press("Enter");
  await terminalShows("berth-42", "typed");
  log(`terminal after typing:\n${await page.evaluate(() => window.berthTerminalText())}`);
  const shellsOf = async () =>
    (await sdk.processes.list({ workspaceId: id })).processes.filter((p) => p.tag === "web-terminal");
  const shells = await shellsOf();
  const size = await page.evaluate(() => window.berthTerminalSize());
  assert.equal(shells.length, 1, "one web-terminal shell runs");
  assert.ok(size.cols > 20 && size.rows > 5, `the panel has a usable size (${size.cols}x${size.rows})`);
  assert.deepEqual(
    { cols: shells[0].pty?.cols, rows: shells[0].pty?.rows },
    size,
    "the shell's PTY is sized to the panel",
  );
  log(`shell pid ${shells[0].pid}, pty ${size.cols}x${size.rows}`);

  // A narrower window narrows the panel: ResizePty gives the shell the new size (and back).
  // Waits until the panel's size passes `fits` and the shell's PTY has that size.
  const ptyFollows = async (viewport, fits) => {
    await page.setViewportSize(viewport);
    for (let tries = 0; ; tries++) {
      const want = await page.evaluate(() => window.berthTerminalSize());
      const pty = (await shellsOf())[0]?.pty;
      if (fits(want) && pty?.cols === want.cols && pty?.rows === want.rows) return want;
      const got = `${pty?.cols}x${pty?.rows}`;
      assert.ok(tries < 100, `the PTY follows the panel to ${want.cols}x${want.rows} (it is ${got})`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };
  const narrow = await ptyFollows({ width: 900, height: 860 }, (want) => want.cols < size.cols);
  log(`resized: pty ${narrow.cols}x${narrow.rows}`);
  await ptyFollows({ width: 1200, height: 860 }, (want) => want.cols === size.cols && want.rows === size.rows);

  await page.reload();
  await waitFor(page.locator("#status", { hasText: `Open ${id}: done` }));
  assert.match(page.url(), new RegExp(`[?&]workspace=${id}(&|$)`), "the URL keeps the selected workspace");
  assert.equal(await page.locator("#ws-id").textContent(), id);
  // xterm paints its rows only while the terminal is on screen; after the reload it may be below
  // the fold (the click on Open terminal scrolled to it the first time).
  await page.locator("#terminal").scrollIntoViewIfNeeded();
  await terminalShows("berth-42", "after reload");
  assert.match(await page.locator("#terminal-status").textContent(), /re-attached/);
  const after = await shellsOf();
  assert.deepEqual(after.map((p) => p.pid), [shells[0].pid], "the reload re-attached to the same shell");
  // The re-attached shell still takes input.
  await page.click("#terminal");
  await page.keyboard.type("echo again-$((6*7))");
  await page.keyboard.press("Enter");
  await terminalShows("again-42", "typed after reload");
  await page.screenshot({ path: join(artifacts, "terminal.png"), fullPage: true });
  log(`terminal re-attached after reload; screenshot: ${join(artifacts, "terminal.png")}`);

  // The info panel shows where the workspace's data lives, as GetWorkspace says.
  const { workspace: described } = await sdk.workspaces.getWorkspace({ workspaceId: id });
  assert.equal(described.dataPath, "/data");
  assert.ok(described.hostDataPath.startsWith("/"), `the server names the host data path (${described.hostDataPath})`);
  assert.equal(await page.locator("#ws-data-path").textContent(), "/data");
  assert.equal(await page.locator("#ws-host-data-path").textContent(), described.hostDataPath);

  // The file manager. Each action ends with "ACTION: done" in the panel's status line, or with
  // the panel's error box (code and reason).
  const filesStatus = page.locator("#files-status");
  const filesError = page.locator("#files-error:not([hidden])");
  const filesRow = (name) => page.locator(`#files-rows tr[data-name="${name}"]`);
  const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const filesDone = async (action) => {
    const failed = filesError.waitFor().then(async () => {
      throw new Error(`the files panel shows an error: ${await filesError.textContent()}`);
    });
    failed.catch(() => {});
    await Promise.race([
      filesStatus.filter({ hasText: new RegExp(`^${escapeRegExp(action)}: done$`) }).waitFor(),
      failed,
    ]);
  };
  const filesFails = async (action) => {
    const succeeded = filesStatus
      .filter({ hasText: new RegExp(`^${escapeRegExp(action)}: done$`) })
      .waitFor()
      .then(() => {
        throw new Error(`${action} succeeded, but it should have failed`);
      });
    succeeded.catch(() => {});
    await Promise.race([filesStatus.filter({ hasText: new RegExp(`^${escapeRegExp(action)}: failed$`) }).waitFor(), succeeded]);
    return filesError.textContent();
  };
  const currentDir = () => page.locator("#files-path [aria-current]").getAttribute("data-path");

  // It opens on the data directory; browse up to / and back down, into a new folder and back
  // through the breadcrumb.
  await page.locator("#files-section").waitFor();
  await filesDone("List /data");
  assert.equal(await currentDir(), "/data");
  await page.fill("#files-new-name", "notes");
  await page.click("#files-new-dir");
  await filesDone("New folder /data/notes");
  await filesRow("notes").waitFor();
  assert.equal(await filesRow("notes").getAttribute("data-type"), "directory");
  await page.fill("#files-new-name", "notes");
  await page.click("#files-new-dir");
  const existsError = await filesFails("New folder /data/notes");
  log(`files error shown: ${existsError}`);
  assert.match(existsError, /^New folder \/data\/notes failed: ALREADY_EXISTS PATH_ALREADY_EXISTS: /);
  await filesRow("notes").click();
  await filesDone("List /data/notes");
  assert.equal(await currentDir(), "/data/notes");
  await page.locator("#files-empty").waitFor();
  await page.click('#files-path button[data-path="/data"]');
  await filesDone("List /data");
  await filesRow("..").click();
  await filesDone("List /");
  assert.equal(await currentDir(), "/");
  assert.equal(await filesRow("bin").getAttribute("data-type"), "directory", "the root of the image is listed");
  await filesRow("data").click();
  await filesDone("List /data");
  assert.equal(await currentDir(), "/data");

  // A new file opens in the editor; edit and save it: the workspace has the new content.
  await page.fill("#files-new-name", "page.txt");
  await page.click("#files-new-file");
  await filesDone("New file /data/page.txt");
  assert.equal(await page.locator("#files-editor-path").textContent(), "/data/page.txt");
  assert.equal(await page.inputValue("#files-text"), "");
  assert.equal((await shell(id, "wc -c < /data/page.txt")).toString().trim(), "0");
  const firstVersion = "written by the page\nline two\n";
  await page.fill("#files-text", firstVersion);
  assert.equal(await page.locator("#files-editor-state").textContent(), "modified");
  await page.click("#files-save");
  await filesDone("Save /data/page.txt");
  assert.equal(await page.locator("#files-editor-state").textContent(), "");
  assert.equal((await shell(id, "cat /data/page.txt")).toString(), firstVersion, "the save reached the workspace");
  await filesRow("page.txt").locator("td.size", { hasText: `${firstVersion.length} B` }).waitFor();
  log("saved a file from the page's editor");

  // A change made inside the workspace meanwhile: the next save fails with REVISION_MISMATCH,
  // the page says so, and the workspace keeps its version.
  await shell(id, "echo x >> /data/page.txt");
  const changedInside = `${firstVersion}x\n`;
  await page.fill("#files-text", "a second version from the page\n");
  await page.click("#files-save");
  const conflictError = await filesFails("Save /data/page.txt");
  log(`conflict shown: ${conflictError}`);
  assert.match(conflictError, /^Save \/data\/page\.txt failed: ABORTED REVISION_MISMATCH: /);
  await page.locator("#files-conflict:not([hidden])").waitFor();
  assert.match(await page.locator("#files-conflict-text").textContent(), /ABORTED REVISION_MISMATCH: \/data\/page\.txt was changed/);
  assert.equal((await shell(id, "cat /data/page.txt")).toString(), changedInside, "the conflicting save changed nothing");
  await page.screenshot({ path: join(artifacts, "files-conflict.png"), fullPage: true });

  // Reload takes the workspace's version; saving after it works.
  await page.click("#files-conflict-reload");
  await filesDone("Open /data/page.txt");
  assert.equal(await page.locator("#files-conflict").isHidden(), true);
  assert.equal(await page.inputValue("#files-text"), changedInside);
  const thirdVersion = `${changedInside}edited after the reload\n`;
  await page.fill("#files-text", thirdVersion);
  await page.click("#files-save");
  await filesDone("Save /data/page.txt");
  assert.equal((await shell(id, "cat /data/page.txt")).toString(), thirdVersion);
  log("conflict shown, reloaded, saved again");

  // Another change inside; this time Overwrite keeps the page's version.
  await shell(id, "echo y >> /data/page.txt");
  const overwritten = "the page's version wins\n";
  await page.fill("#files-text", overwritten);
  await page.click("#files-save");
  assert.match(await filesFails("Save /data/page.txt"), /ABORTED REVISION_MISMATCH/);
  await page.click("#files-conflict-overwrite");
  await filesDone("Overwrite /data/page.txt");
  assert.equal(await page.locator("#files-conflict").isHidden(), true);
  assert.equal((await shell(id, "cat /data/page.txt")).toString(), overwritten);
  log("conflict overwritten");

  // Upload through the file input: more than 3 MiB, so several WriteFileChunk calls of at most
  // 3 MiB each; the workspace has exactly these bytes.
  const uploadBytes = randomBytes(7 * 1024 * 1024 + 12345);
  const chunkBodies = [];
  const recordChunk = (req) => {
    if (req.url().endsWith("/berth.workspace.v1.FilesystemService/WriteFileChunk")) {
      chunkBodies.push(req.postDataBuffer()?.length ?? 0);
    }
  };
  page.on("request", recordChunk);
  await page.setInputFiles("#files-upload", { name: "upload.bin", mimeType: "application/octet-stream", buffer: uploadBytes });
  await filesDone("Upload upload.bin");
  page.off("request", recordChunk);
  log(`upload request bodies: ${chunkBodies.join(", ")} bytes`);
  assert.equal(chunkBodies.length, 3, "7 MiB go up in three chunks");
  const grpcWebOverhead = 1024; // the frame header and the request's other fields
  for (const size of chunkBodies) assert.ok(size <= 3 * 1024 * 1024 + grpcWebOverhead, `a chunk of ${size} bytes`);
  await filesRow("upload.bin").waitFor();
  const uploaded = (await shell(id, "wc -c < /data/upload.bin && sha256sum /data/upload.bin")).toString().trim().split(/\s+/);
  assert.equal(Number(uploaded[0]), uploadBytes.length, "the upload's size in the workspace");
  assert.equal(uploaded[1], sha256(uploadBytes), "the upload's bytes in the workspace");
  log(`uploaded ${uploadBytes.length} bytes`);

  // Download a file made inside the workspace: the browser saves exactly its bytes.
  const made = (await shell(id, "head -c 2500000 /dev/urandom > /data/made-inside.bin && sha256sum /data/made-inside.bin"))
    .toString()
    .split(/\s+/)[0];
  await page.click("#files-refresh");
  await filesDone("List /data");
  const downloading = page.waitForEvent("download");
  await filesRow("made-inside.bin").locator("button.download").click();
  const download = await downloading;
  await filesDone("Download /data/made-inside.bin");
  assert.equal(download.suggestedFilename(), "made-inside.bin");
  const downloaded = readFileSync(await download.path());
  assert.equal(downloaded.length, 2500000, "the download's size");
  assert.equal(sha256(downloaded), made, "the download's bytes");

  // A symlink made inside opens what it points to, under its own path.
  await shell(id, "ln -s page.txt /data/page-link");
  await page.click("#files-refresh");
  await filesDone("List /data");
  assert.equal(await filesRow("page-link").getAttribute("data-type"), "symlink");
  await filesRow("page-link").click();
  await filesDone("Follow /data/page-link");
  assert.equal(await page.locator("#files-editor-path").textContent(), "/data/page-link");
  assert.equal(await page.inputValue("#files-text"), overwritten);
  const throughLink = "saved through the link\n";
  await page.fill("#files-text", throughLink);
  await page.click("#files-save");
  await filesDone("Save /data/page-link");
  assert.equal((await shell(id, "test -L /data/page-link && cat /data/page.txt")).toString(), throughLink);
  await page.screenshot({ path: join(artifacts, "files.png"), fullPage: true });
  log(`downloaded ${downloaded.length} bytes; screenshot: ${join(artifacts, "files.png")}`);

  // The data panel. Export downloads /data as one archive: its size and sha256 are those of the
  // trailer the page shows, and tar reads the files made above from it.
  const dataStatus = page.locator("#data-status");
  const dataError = page.locator("#data-error:not([hidden])");
  const dataResult = page.locator("#data-result");
  const dataEnds = async (action, outcome) => {
    const other = outcome === "done" ? "failed" : "done";
    const wrong = dataStatus
      .filter({ hasText: new RegExp(`^${escapeRegExp(action)}: ${other}$`) })
      .waitFor()
      .then(async () => {
        throw new Error(`${action} ${other}: ${await dataError.textContent().catch(() => "")}`);
      });
    wrong.catch(() => {});
    await Promise.race([dataStatus.filter({ hasText: new RegExp(`^${escapeRegExp(action)}: ${outcome}$`) }).waitFor(), wrong]);
  };
  await page.locator("#data-panel").waitFor();
  assert.equal(await page.locator("#data-path").textContent(), "/data");
  const exporting = page.waitForEvent("download");
  await page.click("#data-export");
  const exportDownload = await exporting;
  await dataEnds("Export /data", "done");
  assert.equal(exportDownload.suggestedFilename(), `${id}-data.tar.gz`);
  const exportedArchive = readFileSync(await exportDownload.path());
  log(`export shown: ${await dataResult.textContent()}`);
  assert.equal(Number(await dataResult.getAttribute("data-size-bytes")), exportedArchive.length, "the download's size is the trailer's");
  assert.equal(await dataResult.getAttribute("data-sha256"), sha256(exportedArchive), "the download's sha256 is the trailer's");
  const entriesInside = Number((await shell(id, "find /data -mindepth 1 | wc -l")).toString().trim());
  assert.equal(Number(await dataResult.getAttribute("data-entry-count")), entriesInside, "one entry per file, directory and link of /data");
  const exportedNames = execFileSync("tar", ["-tzf", "-"], { input: exportedArchive }).toString().split("\n");
  for (const name of ["page.txt", "upload.bin", "made-inside.bin", "page-link"]) {
    assert.ok(exportedNames.includes(name), `the export lists ${name}: ${exportedNames.join(" ")}`);
  }
  const exportedUpload = execFileSync("tar", ["-xzOf", "-", "upload.bin"], { input: exportedArchive, maxBuffer: 64 << 20 });
  assert.equal(sha256(exportedUpload), sha256(uploadBytes), "the export holds the uploaded bytes");
  const dataBarBeforeImport = (await page.evaluate(() => window.__dataBarValues)).length;

  // zstd, picked in the format menu.
  await page.selectOption("#data-format", "zstd");
  const exportingZstd = page.waitForEvent("download");
  await page.click("#data-export");
  const zstdDownload = await exportingZstd;
  await dataEnds("Export /data", "done");
  assert.equal(zstdDownload.suggestedFilename(), `${id}-data.tar.zst`);
  const zstdArchive = readFileSync(await zstdDownload.path());
  assert.equal(Number(await dataResult.getAttribute("data-size-bytes")), zstdArchive.length);
  assert.ok(execFileSync("tar", ["--zstd", "-tf", "-"], { input: zstdArchive }).toString().split("\n").includes("page.txt"));
  log(`exported ${exportedArchive.length} bytes (gzip) and ${zstdArchive.length} bytes (zstd)`);

  // Import an archive made on this machine: more than 3 MiB (its random file does not
  // compress), so several ImportDataChunk requests of at most 3 MiB, with the bar moving; its
  // files appear inside the workspace, next to the ones already there.
  const archiveDir = mkdtempSync(join(tmpdir(), "berth-web-import-"));
  let importArchive;
  const importedRandom = randomBytes(4 * 1024 * 1024 + 4321);
  try {
    mkdirSync(join(archiveDir, "imported"));
    writeFileSync(join(archiveDir, "imported", "hello.txt"), "hello from an archive\n");
    writeFileSync(join(archiveDir, "imported", "random.bin"), importedRandom);
    symlinkSync("hello.txt", join(archiveDir, "imported", "link"));
    execFileSync("tar", ["-czf", join(archiveDir, "import.tar.gz"), "-C", archiveDir, "imported"]);
    importArchive = readFileSync(join(archiveDir, "import.tar.gz"));
  } finally {
    rmSync(archiveDir, { recursive: true, force: true });
  }
  const importBodies = [];
  const recordImportChunk = (req) => {
    if (req.url().endsWith("/berth.workspace.v1.WorkspaceService/ImportDataChunk")) importBodies.push(req.postDataBuffer()?.length ?? 0);
  };
  page.on("request", recordImportChunk);
  await page.setInputFiles("#data-import", { name: "import.tar.gz", mimeType: "application/gzip", buffer: importArchive });
  await dataEnds("Import import.tar.gz", "done");
  page.off("request", recordImportChunk);
  log(`import shown: ${await dataResult.textContent()}; request bodies ${importBodies.join(", ")} bytes`);
  assert.equal(importBodies.length, Math.ceil(importArchive.length / (3 * 1024 * 1024)), "3 MiB chunks");
  for (const size of importBodies) assert.ok(size <= 3 * 1024 * 1024 + grpcWebOverhead, `a chunk of ${size} bytes`);
  const importBar = (await page.evaluate(() => window.__dataBarValues)).slice(dataBarBeforeImport);
  assert.ok(importBar.some((v) => v > 0 && v < 100), `the bar moved through the upload: ${importBar.map((v) => v.toFixed(1)).join(", ")}`);
  assert.ok(importBar.includes(100), "the bar reached 100%");
  assert.equal(Number(await dataResult.getAttribute("data-size-bytes")), importArchive.length);
  assert.equal(await dataResult.getAttribute("data-sha256"), sha256(importArchive));
  assert.equal(await dataResult.getAttribute("data-entry-count"), "4", "imported/, hello.txt, random.bin, link");
  assert.equal((await shell(id, "cat /data/imported/hello.txt")).toString(), "hello from an archive\n");
  assert.equal((await shell(id, "sha256sum /data/imported/random.bin")).toString().split(/\s+/)[0], sha256(importedRandom));
  assert.equal((await shell(id, "readlink /data/imported/link")).toString(), "hello.txt\n");
  assert.equal((await shell(id, "cat /data/page.txt")).toString(), throughLink, "the files already there stay");
  await page.click("#files-refresh");
  await filesDone("List /data");
  assert.equal(await filesRow("imported").getAttribute("data-type"), "directory", "the Files panel lists the import");

  // Something that is no archive: the error box shows the code and reason, nothing changes.
  await page.setInputFiles("#data-import", { name: "garbage.tar.gz", mimeType: "application/gzip", buffer: randomBytes(5000) });
  await dataEnds("Import garbage.tar.gz", "failed");
  const importError = await dataError.textContent();
  log(`import error shown: ${importError}`);
  assert.match(importError, /^Import garbage\.tar\.gz failed: FAILED_PRECONDITION DATA_ARCHIVE_FAILED: /);
  assert.equal(Number((await shell(id, "find /data -mindepth 1 | wc -l")).toString().trim()), entriesInside + 4);
  await page.screenshot({ path: join(artifacts, "data.png"), fullPage: true });
  log(`imported into the workspace; screenshot: ${join(artifacts, "data.png")}`);

  // Snapshots and versions. Each panel's action ends with "ACTION: done" or "ACTION: failed" in
  // its status line; restore and delete ask first (the dialog is checked and accepted).
  const panelEnds = (panel) => {
    const status = page.locator(`#${panel}-status`);
    const error = page.locator(`#${panel}-error`);
    return async (action, outcome) => {
      const other = outcome === "done" ? "failed" : "done";
      const wrong = status
        .filter({ hasText: new RegExp(`^${escapeRegExp(action)}: ${other}$`) })
        .waitFor()
        .then(async () => {
          throw new Error(`${action} ${other}: ${await error.textContent().catch(() => "")}`);
        });
      wrong.catch(() => {});
      await Promise.race([status.filter({ hasText: new RegExp(`^${escapeRegExp(action)}: ${outcome}$`) }).waitFor(), wrong]);
      return outcome === "failed" ? error.textContent() : undefined;
    };
  };
  const snapshotsEnd = panelEnds("snapshots");
  const versionsEnd = panelEnds("versions");
  const confirming = async (expected, click) => {
    let asked;
    const onDialog = (dialog) => {
      asked = dialog.message();
      void dialog.accept();
    };
    page.once("dialog", onDialog);
    await click();
    page.off("dialog", onDialog);
    assert.match(asked ?? "(no dialog)", expected, "the page asks first");
  };
  const snapshotRow = (name) => page.locator(`#snapshot-rows tr[data-name="${name}"]`);
  const versionRow = (version) => page.locator(`#version-rows tr[data-version="${version}"]`);
  const waitForVersion = async (version, reason, snapshot) => {
    const row = versionRow(version);
    await row.locator("td.reason", { hasText: reason }).waitFor();
    assert.equal(await row.getAttribute("data-snapshot"), snapshot);
    await page.locator("#version-rows tr.current").first().waitFor();
    assert.equal(await page.locator("#version-rows tr.current").count(), 1, "one version is marked current");
    assert.equal(await page.locator("#version-rows tr.current").getAttribute("data-version"), String(version), "the newest is current");
    assert.equal(await page.locator("#version-rows tr").first().getAttribute("data-version"), String(version), "newest first");
    await page.locator("#ws-version", { hasText: new RegExp(`^${version}$`) }).waitFor();
  };
  // The Files panel follows a restore by itself: the open page.txt shows the restored content
  // and after-snapshot.txt is listed only when the restored filesystem has it.
  const filesFollow = async (content, withNewFile) => {
    await page.waitForFunction((text) => document.querySelector("#files-text")?.value === text, content);
    assert.equal(await page.locator("#files-editor-path").textContent(), "/data/page.txt");
    await filesRow("after-snapshot.txt").waitFor({ state: withNewFile ? "visible" : "detached" });
  };
  const openInEditor = async (name) => {
    await page.click("#files-refresh");
    await filesDone("List /data");
    await filesRow(name).click();
    await filesDone(`Open /data/${name}`);
    return page.inputValue("#files-text");
  };

  // Before any snapshot: the image's layers, collapsed into one dimmed row, and version 1.
  await page.locator("#snapshots-section").waitFor();
  await snapshotsEnd("List snapshots", "done");
  const imageLayers = (await sdk.workspaces.listSnapshots({ workspaceId: id })).snapshots;
  assert.ok(imageLayers.length > 1, `the multilayer image has several layers (${imageLayers.length})`);
  const topLayer = imageLayers.at(-1).name;
  await page.locator("#snapshot-rows tr.image-summary", { hasText: `image: ${imageLayers.length} layers` }).waitFor();
  assert.equal(await page.locator("#snapshot-rows tr.image-layer").count(), imageLayers.length);
  assert.equal(await page.locator("#snapshot-rows tr.image-layer:visible").count(), 0, "image layers start collapsed");
  await page.locator("#snapshots-empty").waitFor();
  await page.click("#snapshot-rows button.layers-toggle");
  await page.locator("#snapshot-rows tr.image-layer").first().waitFor();
  assert.equal(await page.locator("#snapshot-rows tr.image-layer:visible").count(), imageLayers.length, "expanded");
  for (const layer of imageLayers) {
    assert.equal(await snapshotRow(layer.name).getAttribute("data-source"), "IMAGE");
    assert.equal(await snapshotRow(layer.name).getAttribute("data-parent"), layer.parent);
    assert.equal(await snapshotRow(layer.name).locator("button").count(), 0, "image layers have no buttons");
  }
  await versionsEnd("List versions", "done");
  await waitForVersion(1, "CREATE", "");
  assert.equal(await versionRow(1).locator("button.restore").count(), 0, "CREATE has no snapshot to restore");

  // Take a snapshot with a name and labels: USER, on the image's top layer, version 2; the
  // workspace runs again and the history says SNAPSHOT.
  const beforeEdit = (await shell(id, "cat /data/page.txt")).toString();
  assert.equal(beforeEdit, throughLink);
  await page.fill("#snapshot-name", "before-edit");
  await page.fill("#snapshot-labels", "purpose=web-test, step=1");
  await page.click("#snapshot-create");
  await snapshotsEnd("Create snapshot before-edit", "done");
  const taken = snapshotRow("before-edit");
  assert.equal(await taken.getAttribute("data-source"), "USER");
  assert.equal(await taken.getAttribute("data-parent"), topLayer, "taken on the image's top layer");
  assert.equal(await taken.getAttribute("data-version"), "2");
  assert.match(await taken.locator("td.name .labels").textContent(), /^purpose=web-test, step=1$/, "the labels, by key");
  assert.match(await taken.locator("td.size").textContent(), /^[0-9.]+ (B|KiB|MiB|GiB)$/);
  assert.notEqual(await taken.locator("td.time").textContent(), "—");
  assert.equal(await page.locator("#snapshots-empty").isHidden(), true);
  await waitForVersion(2, "SNAPSHOT", "before-edit");
  await page.locator("#ws-state", { hasText: "RUNNING" }).waitFor();
  const { snapshots: listed } = await sdk.workspaces.listSnapshots({ workspaceId: id });
  assert.deepEqual(listed.at(-1).labels, { purpose: "web-test", step: "1" }, "the labels reached the server");
  log("snapshot before-edit taken");

  // Change the file through the file manager, and add one inside; then an unnamed snapshot (v3).
  const edited = "changed after the snapshot\n";
  await openInEditor("page.txt");
  await page.fill("#files-text", edited);
  await page.click("#files-save");
  await filesDone("Save /data/page.txt");
  assert.equal((await shell(id, "cat /data/page.txt && echo new > /data/after-snapshot.txt")).toString(), edited);
  await page.click("#files-refresh");
  await filesDone("List /data");
  await filesRow("after-snapshot.txt").waitFor();
  await page.click("#snapshot-create");
  await snapshotsEnd("Create snapshot", "done");
  assert.equal(await page.locator("#snapshots-result").getAttribute("data-name"), "v3", "an unnamed snapshot is v + its version");
  assert.equal(await snapshotRow("v3").getAttribute("data-parent"), "before-edit");
  await waitForVersion(3, "SNAPSHOT", "v3");

  // Restore before-edit from the lineage: the file is back (inside, and in the Files panel),
  // the file made after it is gone, version 4 is a RESTORE.
  await confirming(/^Restore before-edit \(version 2\)\? .* the workspace restarts\.$/, () =>
    taken.locator("button.restore").click(),
  );
  await snapshotsEnd("Restore before-edit", "done");
  await waitForVersion(4, "RESTORE", "before-edit");
  await page.locator("#ws-state", { hasText: "RUNNING" }).waitFor();
  assert.equal((await shell(id, "cat /data/page.txt")).toString(), beforeEdit, "the restore brought the file back");
  assert.equal((await shell(id, "test -e /data/after-snapshot.txt || echo absent")).toString(), "absent\n");
  await filesFollow(beforeEdit, false);
  log("restored before-edit");

  // Deleting a snapshot something is built on fails with SNAPSHOT_IN_USE, naming it; the row stays.
  await confirming(/^Delete snapshot before-edit\?$/, () => taken.locator("button.delete").click());
  const inUse = await snapshotsEnd("Delete before-edit", "failed");
  log(`delete error shown: ${inUse}`);
  assert.match(inUse, /^Delete before-edit failed: FAILED_PRECONDITION SNAPSHOT_IN_USE: .*\bv3\b/);
  await taken.waitFor();

  // Restore by version (3, whose snapshot is v3) from the history: the edit is back.
  await confirming(/^Restore version 3 \(snapshot v3\)\?/, () => versionRow(3).locator("button.restore").click());
  await versionsEnd("Restore version 3", "done");
  await waitForVersion(5, "RESTORE", "v3");
  assert.equal(await page.locator("#versions-result").getAttribute("data-version"), "5");
  assert.equal((await shell(id, "cat /data/page.txt /data/after-snapshot.txt")).toString(), `${edited}new\n`);
  await filesFollow(edited, true);
  // The current filesystem is built on v3 now: it is in use too.
  await confirming(/^Delete snapshot v3\?$/, () => snapshotRow("v3").locator("button.delete").click());
  assert.match(await snapshotsEnd("Delete v3", "failed"), /^Delete v3 failed: FAILED_PRECONDITION SNAPSHOT_IN_USE: /);
  log("restored version 3");

  // Back to version 2 (before-edit), which leaves v3 free: its delete works and its row goes.
  await confirming(/^Restore version 2 \(snapshot before-edit\)\?/, () => versionRow(2).locator("button.restore").click());
  await versionsEnd("Restore version 2", "done");
  await waitForVersion(6, "RESTORE", "before-edit");
  assert.equal((await shell(id, "cat /data/page.txt")).toString(), beforeEdit);
  await filesFollow(beforeEdit, false);
  await confirming(/^Delete snapshot v3\?$/, () => snapshotRow("v3").locator("button.delete").click());
  await snapshotsEnd("Delete v3", "done");
  await snapshotRow("v3").waitFor({ state: "detached" });
  const remaining = (await sdk.workspaces.listSnapshots({ workspaceId: id })).snapshots.map((s) => s.name);
  assert.deepEqual(remaining, [...imageLayers.map((l) => l.name), "before-edit"], "v3 is gone on the server too");
  await taken.waitFor();
  await page.screenshot({ path: join(artifacts, "snapshots.png"), fullPage: true });
  log(`snapshots and versions done; screenshot: ${join(artifacts, "snapshots.png")}`);

  // Change image: onto busybox, /data carried over, the rest kept in a SYSTEM snapshot that the
  // IMAGE_CHANGE version names; restoring that version goes back onto the first image.
  const imageEnd = panelEnds("image");
  const dataBefore = (await shell(id, "cd /data && find . | sort && sha256sum page.txt upload.bin")).toString();
  await shell(id, "mkdir -p /opt && echo installed > /opt/web-marker");
  await page.locator("#image-panel").waitFor();
  assert.equal(await page.locator("#image-ref").getAttribute("placeholder"), image, "the current image as the placeholder");
  await page.fill("#image-ref", otherImage);
  await confirming(
    new RegExp(`^Move ${id} onto ${escapeRegExp(otherImage)}\\? /data is carried over; .* and the workspace restarts\\.$`),
    () => page.click("#image-change"),
  );
  await imageEnd(`Change image to ${otherImage}`, "done");
  const imageResult = page.locator("#image-result");
  log(`image change shown: ${await imageResult.textContent()}`);
  assert.equal(await imageResult.getAttribute("data-image"), otherImage);
  assert.equal(await imageResult.getAttribute("data-version"), "7");
  assert.equal(await imageResult.getAttribute("data-restarted"), "true", "a running workspace restarts");
  const systemSnapshot = await imageResult.getAttribute("data-snapshot");
  assert.ok(systemSnapshot, "the change names the snapshot of the state before");
  await page.locator("#ws-image", { hasText: otherImage }).waitFor();
  await page.locator("#ws-state", { hasText: "RUNNING" }).waitFor();
  await row.locator("td.image", { hasText: otherImage }).waitFor();
  await waitForVersion(7, "IMAGE_CHANGE", systemSnapshot);
  assert.match(await versionRow(7).locator("td.image").textContent(), new RegExp(`^${escapeRegExp(otherImage)} @ sha256:`));
  assert.equal(await snapshotRow(systemSnapshot).getAttribute("data-source"), "SYSTEM");
  assert.equal(
    (await shell(id, "cd /data && find . | sort && sha256sum page.txt upload.bin")).toString(),
    dataBefore,
    "/data came over to the new image: the same entries and bytes",
  );
  assert.equal((await shell(id, "test -e /opt/web-marker || echo absent")).toString(), "absent\n", "the rest is the new image's");
  await filesFollow(beforeEdit, false);
  await page.screenshot({ path: join(artifacts, "image-change.png"), fullPage: true });
  log(`moved onto ${otherImage}; screenshot: ${join(artifacts, "image-change.png")}`);

  await confirming(new RegExp(`^Restore version 7 \\(snapshot ${escapeRegExp(systemSnapshot)}\\)\\?`), () =>
    versionRow(7).locator("button.restore").click(),
  );
  await versionsEnd("Restore version 7", "done");
  await waitForVersion(8, "RESTORE", systemSnapshot);
  await page.locator("#ws-image", { hasText: new RegExp(`^${escapeRegExp(image)}$`) }).waitFor();
  await row.locator("td.image", { hasText: new RegExp(`^${escapeRegExp(image)}$`) }).waitFor();
  assert.equal((await shell(id, "cat /opt/web-marker")).toString(), "installed\n", "the old image's state is back");
  assert.equal((await shell(id, "cd /data && find . | sort && sha256sum page.txt upload.bin")).toString(), dataBefore);
  log(`rolled back onto ${image}`);

  // Stop, start.
  await page.click("#stop");
  await waitFor(page.locator("#ws-state", { hasText: "STOPPED" }));
  await waitFor(row.locator("td.state", { hasText: "STOPPED" }));
  assert.equal(await page.locator("#ws-pid").textContent(), "—");
  log("stopped");

  // A stopped workspace's files are still there to browse.
  await page.click("#files-refresh");
  await filesDone("List /data");
  await filesRow("page.txt").waitFor();
  await page.click("#files-close");
  assert.equal(await page.locator("#files-editor").isHidden(), true);
  await filesRow("page.txt").click();
  await filesDone("Open /data/page.txt");
  assert.equal(await page.inputValue("#files-text"), throughLink);
  log("browsed and opened a file of the stopped workspace");
  await page.click("#start");
  await waitFor(page.locator("#ws-state", { hasText: "RUNNING" }));
  await waitFor(row.locator("td.state", { hasText: "RUNNING" }));
  log("started");

  // Delete, preserving data.
  await page.check("#preserve");
  await page.click("#delete");
  await waitFor(page.locator("#status", { hasText: `Delete ${id} (preserving data): done` }));
  await waitFor(row, "detached");
  assert.equal(await page.locator("#info").isHidden(), true);
  assert.equal(await exists(id), false, "the workspace is gone on the server");
  log("deleted with preserved data");
  await page.screenshot({ path: join(artifacts, "screenshot-deleted.png"), fullPage: true });

  assert.equal(await page.locator("#error").isHidden(), true, `no error left: ${await page.locator("#error").textContent()}`);
  assert.deepEqual(consoleErrors, [], "no browser console errors");

  // The page asked for preserve_data: a restore finds the archive (and consumes it).
  let restoring = false;
  for await (const res of sdk.workspaces.createWorkspace({ workspaceId: id, image, restoreData: true })) {
    if (res.event.case === "restoring") restoring = true;
  }
  assert.ok(restoring, "the preserved data was restored");
  log("preserved data found and restored");
} catch (err) {
  failed = true;
  console.error("[web-test] FAIL:", err);
  if (page) {
    await page.screenshot({ path: join(artifacts, "failure.png"), fullPage: true }).catch(() => {});
    console.error(`[web-test] page error box: ${await page.locator("#error").textContent().catch(() => "?")}`);
  }
} finally {
  if (consoleErrors.length) {
    console.error(`[web-test] browser console errors:\n  ${consoleErrors.join("\n  ")}`);
  }
  await context?.close().catch(() => {});
  httpServer.close();
  rmSync(userDataDir, { recursive: true, force: true });
  try {
    if (await exists(id)) await sdk.workspaces.deleteWorkspace({ workspaceId: id });
  } catch (err) {
    console.error(`[web-test] cleanup of ${id} failed:`, err);
    failed = true;
  }
}

if (failed) process.exit(1);
log("PASS");
