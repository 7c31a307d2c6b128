// A page that manages berth workspaces from the browser over grpc-web, with @berth/sdk/web.
//
// The berth URL comes from the `server` query parameter (`?server=http://127.0.0.1:50051`); the
// selected workspace is kept in `workspace` (`&workspace=bot-1`), so a reload shows it again and
// re-attaches its terminal.

import "@xterm/xterm/css/xterm.css"; // bundled by esbuild into dist/app.css

import {
  berthErrorInfo,
  createBerthClient,
  DesiredState,
  LayerState,
  WorkspaceState,
  type CreateWorkspaceResponse_PullProgress,
  type LayerProgress,
  type Workspace,
} from "@berth/sdk/web";
import { DataPanel } from "./data.js";
import { DevicePicker } from "./devices.js";
import { EventLog } from "./events.js";
import { FilesPanel } from "./files.js";
import { describeError, formatBytes as bytes } from "./format.js";
import { ImagePanel } from "./image.js";
import { MetricsPanel } from "./metrics.js";
import { NetworkInfo, NetworkPanel, NetworkPolicyFields, type NetworkPolicyInit } from "./network.js";
import { SnapshotsPanel } from "./snapshots.js";
import { TerminalPanel } from "./terminal.js";
import { VersionsPanel } from "./versions.js";

const DEFAULT_SERVER = "http://127.0.0.1:50051";
const params = new URL(location.href).searchParams;
const server = params.get("server") || DEFAULT_SERVER;
const initialId = params.get("workspace") || undefined;
// The bearer token of a berth that checks tokens: typed into the header's field, kept for this
// tab only (sessionStorage, never in the URL) and sent as `authorization: Bearer …` with every
// call (berth's CORS allows the header). The SDK asks for it before each call, so a new one
// applies at once, to the streams that reconnect too.
const TOKEN_KEY = "berth-token";
let token: string | undefined = sessionStorage.getItem(TOKEN_KEY) || undefined;
const berth = createBerthClient({ baseUrl: server, token: () => token });

function $<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from the page`);
  return el as T;
}

const el = {
  server: $("server"),
  refresh: $<HTMLButtonElement>("refresh"),
  listBody: $<HTMLTableSectionElement>("workspace-rows"),
  listEmpty: $("workspaces-empty"),
  form: $<HTMLFormElement>("create-form"),
  createId: $<HTMLInputElement>("create-id"),
  createImage: $<HTMLInputElement>("create-image"),
  createButton: $<HTMLButtonElement>("create-button"),
  phase: $("phase"),
  bar: $<HTMLProgressElement>("pull-bar"),
  barText: $("pull-text"),
  layers: $<HTMLUListElement>("layers"),
  info: $("info"),
  infoNone: $("info-none"),
  wsId: $("ws-id"),
  wsState: $("ws-state"),
  wsDesired: $("ws-desired"),
  wsImage: $("ws-image"),
  wsDigest: $("ws-digest"),
  wsPid: $("ws-pid"),
  wsProcesses: $("ws-processes"),
  wsLabels: $("ws-labels"),
  wsDevices: $("ws-devices"),
  wsVersion: $("ws-version"),
  wsCreated: $("ws-created"),
  wsPreserved: $("ws-preserved"),
  wsDataPath: $("ws-data-path"),
  wsHostDataPath: $("ws-host-data-path"),
  start: $<HTMLButtonElement>("start"),
  stop: $<HTMLButtonElement>("stop"),
  preserve: $<HTMLInputElement>("preserve"),
  del: $<HTMLButtonElement>("delete"),
  terminalSection: $("terminal-section"),
  terminalOpen: $<HTMLButtonElement>("terminal-open"),
  terminalHost: $("terminal"),
  terminalStatus: $("terminal-status"),
  filesSection: $("files-section"),
  error: $("error"),
  status: $("status"),
  tokenForm: $<HTMLFormElement>("token-form"),
  tokenInput: $<HTMLInputElement>("token"),
};

let selectedId: string | undefined;
let busy = false;

const terminal = new TerminalPanel(berth, el.terminalHost, (text) => {
  el.terminalStatus.textContent = text;
});

declare global {
  interface Window {
    /** The terminal's buffer as text (for tests). */
    berthTerminalText?: () => string;
    /** The terminal's size in cells (for tests). */
    berthTerminalSize?: () => { cols: number; rows: number };
  }
}
const files = new FilesPanel(berth, el.filesSection);
const data = new DataPanel(berth, $("data-panel"));
const snapshots = new SnapshotsPanel(berth, $("snapshots-section"), workspaceChanged);
const versions = new VersionsPanel(berth, $("versions-section"), workspaceChanged);
const image = new ImagePanel(berth, $("image-panel"), workspaceChanged);
const metrics = new MetricsPanel(berth, $("metrics-section"));
const devices = new DevicePicker(berth, el.form);
const createNetwork = new NetworkPolicyFields(el.form, "create-network");
const networkInfo = new NetworkInfo(el.info);
const network = new NetworkPanel(berth, $("network-panel"), (ws) => {
  if (ws.workspaceId === selectedId) showInfo(ws);
});
const events = new EventLog(berth, $("events-section"));

window.berthTerminalText = () => terminal.text();
window.berthTerminalSize = () => terminal.size();

const stateName = (s: WorkspaceState) => WorkspaceState[s] ?? `STATE_${s}`;

function showError(action: string, err: unknown): void {
  el.error.textContent = describeError(action, err);
  el.error.hidden = false;
  // Visible in the browser console (and in the test's log).
  console.warn(el.error.textContent);
}

function clearError(): void {
  el.error.textContent = "";
  el.error.hidden = true;
}

function setStatus(text: string): void {
  el.status.textContent = text;
}

// Runs one user action at a time, with buttons disabled meanwhile and errors shown on the page.
async function run(action: string, fn: () => Promise<void>): Promise<void> {
  if (busy) return;
  busy = true;
  clearError();
  updateButtons();
  setStatus(`${action}…`);
  try {
    await fn();
    setStatus(`${action}: done`);
  } catch (err) {
    showError(action, err);
    setStatus(`${action}: failed`);
  } finally {
    busy = false;
    updateButtons();
  }
}

// ---- list ----

async function refreshList(): Promise<void> {
  const all: Workspace[] = [];
  let pageToken = "";
  do {
    const page = await berth.workspaces.listWorkspaces({ pageToken, pageSize: 100 });
    all.push(...page.workspaces);
    pageToken = page.nextPageToken;
  } while (pageToken);

  el.listBody.replaceChildren(
    ...all.map((ws) => {
      const tr = document.createElement("tr");
      tr.dataset.workspaceId = ws.workspaceId;
      if (ws.workspaceId === selectedId) tr.classList.add("selected");
      for (const [cls, text] of [
        ["id", ws.workspaceId],
        ["state", stateName(ws.state)],
        ["image", ws.image],
      ] as const) {
        const td = document.createElement("td");
        td.className = cls;
        td.textContent = text;
        if (cls === "state") td.dataset.state = text;
        tr.append(td);
      }
      tr.addEventListener("click", () => void run(`Get ${ws.workspaceId}`, () => select(ws.workspaceId)));
      return tr;
    }),
  );
  el.listEmpty.hidden = all.length > 0;
  if (selectedId && !all.some((w) => w.workspaceId === selectedId)) {
    showInfo(undefined);
  }
}

// ---- info ----

function showInfo(ws: Workspace | undefined): void {
  selectedId = ws?.workspaceId;
  rememberSelection(selectedId);
  showTerminal(ws);
  files.show(ws);
  data.show(ws);
  snapshots.show(ws);
  versions.show(ws);
  image.show(ws);
  network.show(ws);
  metrics.show(ws);
  events.select(ws?.workspaceId);
  el.info.hidden = !ws;
  el.infoNone.hidden = !!ws;
  for (const tr of el.listBody.querySelectorAll("tr")) {
    tr.classList.toggle("selected", tr.dataset.workspaceId === selectedId);
  }
  if (!ws) {
    updateButtons();
    return;
  }
  el.wsId.textContent = ws.workspaceId;
  el.wsState.textContent = stateName(ws.state);
  el.wsState.dataset.state = stateName(ws.state);
  el.wsDesired.textContent = DesiredState[ws.desiredState] ?? "";
  el.wsImage.textContent = ws.image;
  el.wsDigest.textContent = ws.imageDigest || "—";
  el.wsPid.textContent = ws.initPid ? String(ws.initPid) : "—";
  el.wsProcesses.textContent = String(ws.processCount);
  el.wsLabels.textContent =
    Object.entries(ws.labels)
      .map(([k, v]) => `${k}=${v}`)
      .join(", ") || "—";
  el.wsDevices.textContent = ws.cdiDevices.join(", ") || "—";
  networkInfo.show(ws.network);
  el.wsVersion.textContent = ws.currentVersion ? String(ws.currentVersion) : "—";
  el.wsCreated.textContent = ws.createTime ? new Date(Number(ws.createTime.seconds) * 1000).toLocaleString() : "—";
  el.wsPreserved.textContent = ws.hasPreservedData ? "yes" : "no";
  el.wsDataPath.textContent = ws.dataPath || "—";
  el.wsHostDataPath.textContent = ws.hostDataPath || "—";
  if (ws.failureReason) {
    el.wsState.textContent += ` (${ws.failureReason}: ${ws.failureMessage})`;
  }
  updateButtons();
}

async function select(workspaceId: string): Promise<void> {
  const { workspace } = await berth.workspaces.getWorkspace({ workspaceId });
  showInfo(workspace);
}

// After a snapshot, a restore or an image change (by one of the panels): the workspace's version,
// state and maybe image moved on, its files may be others, and the lists of the other panels
// changed (the acting one is busy still and has listed its own).
async function workspaceChanged(workspaceId: string): Promise<void> {
  if (selectedId !== workspaceId) return;
  await select(workspaceId);
  files.reload();
  snapshots.reload();
  versions.reload();
  await refreshList();
}

// Keeps the selection in the URL, so that a reload selects the workspace again.
function rememberSelection(workspaceId: string | undefined): void {
  const url = new URL(location.href);
  if (workspaceId) url.searchParams.set("workspace", workspaceId);
  else url.searchParams.delete("workspace");
  if (url.href !== location.href) history.replaceState(null, "", url);
}

// ---- terminal ----

// The panel is there for a RUNNING workspace only; another selection or state detaches it (the
// shell keeps running, and Open terminal re-attaches).
function showTerminal(ws: Workspace | undefined): void {
  const running = ws?.state === WorkspaceState.RUNNING;
  el.terminalSection.hidden = !running;
  if (!running || terminal.attachedTo !== ws?.workspaceId) {
    if (terminal.attachedTo) el.terminalStatus.textContent = "detached";
    terminal.close();
  }
}

function updateButtons(): void {
  const state = el.wsState.dataset.state;
  const none = !selectedId;
  el.createButton.disabled = busy;
  el.refresh.disabled = busy;
  el.start.disabled = busy || none || state === "RUNNING";
  el.stop.disabled = busy || none || state === "STOPPED";
  el.del.disabled = busy || none;
  el.terminalOpen.disabled = busy || none || state !== "RUNNING";
}

// ---- create with progress ----

function resetProgress(): void {
  el.bar.value = 0;
  el.barText.textContent = "";
  el.layers.replaceChildren();
  el.phase.textContent = "";
}

function showPullProgress(p: CreateWorkspaceResponse_PullProgress): void {
  // The overall bar is the sum of the layers' bytes.
  let offset = 0n;
  let total = 0n;
  for (const layer of p.layers) {
    offset += layer.offset;
    total += layer.total;
  }
  const percent = total > 0n ? (Number(offset) / Number(total)) * 100 : 0;
  el.bar.value = percent;
  el.barText.textContent = `${bytes(offset)} / ${bytes(total)} (${percent.toFixed(1)}%)`;
  el.layers.replaceChildren(...p.layers.map(layerItem));
}

function layerItem(layer: LayerProgress): HTMLLIElement {
  const li = document.createElement("li");
  const name = document.createElement("code");
  name.textContent = layer.digest.replace(/^sha256:/, "").slice(0, 12);
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = layer.total > 0n ? (Number(layer.offset) / Number(layer.total)) * 100 : 0;
  const text = document.createElement("span");
  text.textContent = `${bytes(layer.offset)} / ${bytes(layer.total)} ${LayerState[layer.state]?.toLowerCase() ?? ""}`;
  li.append(name, bar, text);
  return li;
}

async function create(
  workspaceId: string,
  image: string,
  cdiDevices: string[],
  networkPolicy: NetworkPolicyInit | undefined,
): Promise<void> {
  resetProgress();
  const phases: string[] = [];
  const phase = (text: string) => {
    phases.push(text);
    el.phase.textContent = phases.join(" → ");
  };
  for await (const res of berth.workspaces.createWorkspace({ workspaceId, image, cdiDevices, networkPolicy })) {
    const ev = res.event;
    switch (ev.case) {
      case "pulling":
        phase("pulling");
        el.barText.textContent = `${ev.value.totalLayers} layers, ${bytes(ev.value.totalBytes)}`;
        break;
      case "pullProgress":
        if (phases.at(-1) !== "downloading") phase("downloading");
        showPullProgress(ev.value);
        break;
      case "unpacking":
        if (phases.at(-1) !== "unpacking") phase("unpacking");
        el.phase.textContent = `${phases.join(" → ")} ${ev.value.layersDone}/${ev.value.totalLayers}`;
        break;
      case "creating":
        phase("creating");
        break;
      case "restoring":
        if (phases.at(-1) !== "restoring") phase("restoring");
        break;
      case "ready":
        phase("ready");
        // An image already present moves no bytes: the pull is complete all the same.
        el.bar.value = 100;
        if (ev.value.workspace) showInfo(ev.value.workspace);
        break;
    }
  }
  await refreshList();
}

// ---- wiring ----

el.server.textContent = server;
el.createImage.placeholder = "server's default image";

el.refresh.addEventListener("click", () => void run("Refresh", refreshList));

el.tokenInput.value = token ?? "";
el.tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  token = el.tokenInput.value.trim() || undefined;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  devices.reload();
  void run("Refresh", refreshList);
});

el.form.addEventListener("submit", (e) => {
  e.preventDefault();
  const id = el.createId.value.trim();
  const image = el.createImage.value.trim();
  const cdiDevices = devices.selected();
  const networkPolicy = createNetwork.policy();
  void run(`Create ${id}`, () => create(id, image, cdiDevices, networkPolicy));
});

el.start.addEventListener("click", () => {
  const id = selectedId;
  if (!id) return;
  void run(`Start ${id}`, async () => {
    const { workspace } = await berth.workspaces.startWorkspace({ workspaceId: id });
    showInfo(workspace);
    await refreshList();
  });
});

el.stop.addEventListener("click", () => {
  const id = selectedId;
  if (!id) return;
  void run(`Stop ${id}`, async () => {
    const { workspace } = await berth.workspaces.stopWorkspace({ workspaceId: id });
    showInfo(workspace);
    await refreshList();
  });
});

el.del.addEventListener("click", () => {
  const id = selectedId;
  if (!id) return;
  const preserveData = el.preserve.checked;
  void run(`Delete ${id}${preserveData ? " (preserving data)" : ""}`, async () => {
    await berth.workspaces.deleteWorkspace({ workspaceId: id, preserveData });
    showInfo(undefined);
    await refreshList();
  });
});

el.terminalOpen.addEventListener("click", () => {
  const id = selectedId;
  if (!id) return;
  void run(`Open terminal of ${id}`, () => terminal.open(id));
});

// After a reload: select the workspace of the URL again and, when its panel shell still runs,
// re-attach to it (Connect replays the screen).
async function reopen(workspaceId: string): Promise<void> {
  try {
    await select(workspaceId);
  } catch (err) {
    if (berthErrorInfo(err)?.reason !== "WORKSPACE_NOT_FOUND") throw err;
    showInfo(undefined); // deleted meanwhile: nothing to show
    return;
  }
  const running = selectedId === workspaceId && el.wsState.dataset.state === "RUNNING";
  if (running && (await terminal.shellRunning(workspaceId))) await terminal.open(workspaceId);
}

// Not showInfo(undefined): that would drop the workspace of the URL before reopen reads it.
updateButtons();
devices.reload();
events.select(initialId); // every workspace's events from now on (or, as picked, the selected one's)
void (async () => {
  await run("Refresh", refreshList);
  if (initialId) await run(`Open ${initialId}`, () => reopen(initialId));
})();
