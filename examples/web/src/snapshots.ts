// The Snapshots panel of the selected workspace: take a snapshot (an optional name and labels),
// the lineage as ListSnapshots returns it (the image's layers first, collapsed into one row
// until asked for, then the snapshots taken since, each indented under its parent), and per
// snapshot Restore and Delete.
//
// A snapshot commits the workspace's whole filesystem (installed software and /data) and a
// restore discards every change since, restarting a running workspace; both create a new
// version, so the page reloads the workspace and its version history after them. A snapshot
// that something is built on (a later snapshot, or the workspace's current filesystem) cannot
// be deleted: the server answers FAILED_PRECONDITION SNAPSHOT_IN_USE naming what, and the error
// box shows it.

import { SnapshotSource, WorkspaceState, type BerthClient, type Snapshot, type Workspace } from "@berth/sdk/web";
import { ActionRunner, findIn } from "./actions.js";
import { formatBytes, formatTime, shortDigest } from "./format.js";

/** Snapshots per ListSnapshots page; the panel reads them all. */
const PAGE_SIZE = 100;

const sourceName = (s: SnapshotSource) => SnapshotSource[s] ?? `SOURCE_${s}`;

/** `team=a, purpose=before upgrade` into labels; a part without `=` or with an empty key throws. */
export function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const part of text.split(",")) {
    if (!part.trim()) continue;
    const eq = part.indexOf("=");
    const key = eq < 0 ? "" : part.slice(0, eq).trim();
    if (!key) throw new Error(`label ${JSON.stringify(part.trim())} is not KEY=VALUE`);
    labels[key] = part.slice(eq + 1).trim();
  }
  return labels;
}

/** How deep each snapshot sits in its lineage: 0 for the image's base layer. */
function depths(snapshots: Snapshot[]): Map<string, number> {
  const byName = new Map(snapshots.map((s) => [s.name, s]));
  const depth = new Map<string, number>();
  const of = (s: Snapshot): number => {
    const known = depth.get(s.name);
    if (known !== undefined) return known;
    const parent = s.parent ? byName.get(s.parent) : undefined;
    depth.set(s.name, 0); // a cycle (never sent) ends here instead of recursing forever
    const d = parent ? of(parent) + 1 : 0;
    depth.set(s.name, d);
    return d;
  };
  for (const s of snapshots) of(s);
  return depth;
}

export class SnapshotsPanel {
  private workspace: Workspace | undefined;
  private snapshots: Snapshot[] = [];
  private layersShown = false;
  private readonly runner;
  private readonly el;

  constructor(
    private readonly berth: BerthClient,
    root: HTMLElement,
    /** Called after a snapshot or a restore changed the workspace (its version, its state). */
    private readonly workspaceChanged: (workspaceId: string) => Promise<void>,
  ) {
    const find = findIn(root, "snapshots panel");
    this.el = {
      section: root,
      form: find<HTMLFormElement>("snapshot-form"),
      name: find<HTMLInputElement>("snapshot-name"),
      labels: find<HTMLInputElement>("snapshot-labels"),
      create: find<HTMLButtonElement>("snapshot-create"),
      refresh: find<HTMLButtonElement>("snapshots-refresh"),
      rows: find<HTMLTableSectionElement>("snapshot-rows"),
      empty: find("snapshots-empty"),
      result: find("snapshots-result"),
      error: find("snapshots-error"),
      status: find("snapshots-status"),
    };
    this.runner = new ActionRunner(this.el, () => this.updateButtons());
    this.el.form.addEventListener("submit", (e) => {
      e.preventDefault();
      const name = this.el.name.value.trim();
      void this.runner.run(`Create snapshot${name ? ` ${name}` : ""}`, () => this.create(name, this.el.labels.value));
    });
    this.el.refresh.addEventListener("click", () => this.reload());
  }

  /** Shows the panel for the selected workspace (any state: the server says what it refuses). */
  show(ws: Workspace | undefined): void {
    this.el.section.hidden = !ws;
    const changed = ws?.workspaceId !== this.workspace?.workspaceId;
    this.workspace = ws;
    if (!changed) return;
    this.runner.reset();
    this.snapshots = [];
    this.layersShown = false;
    this.el.name.value = "";
    this.el.labels.value = "";
    this.showResult("");
    this.render();
    if (ws) this.reload();
  }

  /** Lists the lineage again (after another panel changed it). */
  reload(): void {
    void this.runner.run("List snapshots", () => this.load());
  }

  private target(): Workspace {
    if (!this.workspace) throw new Error("no workspace is selected");
    return this.workspace;
  }

  private async load(): Promise<void> {
    const { workspaceId } = this.target();
    const all: Snapshot[] = [];
    let pageToken = "";
    do {
      const page = await this.berth.workspaces.listSnapshots({ workspaceId, pageSize: PAGE_SIZE, pageToken });
      all.push(...page.snapshots);
      pageToken = page.nextPageToken;
    } while (pageToken);
    if (workspaceId !== this.workspace?.workspaceId) return; // another one was selected meanwhile
    this.snapshots = all;
    this.render();
  }

  private async create(name: string, labelText: string): Promise<void> {
    const { workspaceId } = this.target();
    const labels = parseLabels(labelText);
    const { snapshot } = await this.berth.workspaces.createSnapshot({ workspaceId, name, labels });
    if (!snapshot) throw new Error("CreateSnapshot answered without the snapshot");
    this.el.name.value = "";
    this.el.labels.value = "";
    this.showResult(`Snapshot ${snapshot.name} taken: version ${snapshot.version}, ${formatBytes(snapshot.sizeBytes)}`, {
      name: snapshot.name,
      version: String(snapshot.version),
    });
    await this.load();
    await this.workspaceChanged(workspaceId);
  }

  private async restore(snapshot: Snapshot): Promise<void> {
    const { workspaceId } = this.target();
    const { version } = await this.berth.workspaces.restoreSnapshot({
      workspaceId,
      target: { case: "snapshotName", value: snapshot.name },
    });
    this.showResult(`Restored ${snapshot.name}: now version ${version?.version ?? "?"}`, {
      name: snapshot.name,
      version: String(version?.version ?? ""),
    });
    await this.load();
    await this.workspaceChanged(workspaceId);
  }

  private async remove(snapshot: Snapshot): Promise<void> {
    const { workspaceId } = this.target();
    await this.berth.workspaces.deleteSnapshot({ workspaceId, name: snapshot.name });
    this.showResult(`Deleted ${snapshot.name}`, { name: snapshot.name, version: "" });
    await this.load();
  }

  private confirmRestore(snapshot: Snapshot): boolean {
    const running = this.workspace?.state === WorkspaceState.RUNNING;
    return confirm(
      `Restore ${snapshot.name} (version ${snapshot.version})? Every change since it was taken is discarded` +
        `${running ? " and the workspace restarts" : ""}.`,
    );
  }

  // ---- rendering ----

  private render(): void {
    const layers = this.snapshots.filter((s) => s.source === SnapshotSource.IMAGE);
    const taken = this.snapshots.filter((s) => s.source !== SnapshotSource.IMAGE);
    const depth = depths(this.snapshots);
    const imageDepth = layers.length; // the snapshots' indentation starts under the image
    const rows: HTMLTableRowElement[] = [];
    if (layers.length) rows.push(this.layersSummary(layers));
    for (const layer of layers) {
      const tr = this.row(layer, depth.get(layer.name) ?? 0);
      tr.classList.add("image-layer");
      tr.hidden = !this.layersShown;
      rows.push(tr);
    }
    for (const snapshot of taken) {
      rows.push(this.row(snapshot, Math.max(0, (depth.get(snapshot.name) ?? imageDepth) - imageDepth)));
    }
    this.el.rows.replaceChildren(...rows);
    this.el.empty.hidden = taken.length > 0;
    this.updateButtons();
  }

  /** One row standing for the image's layers: their count and size, and a toggle. */
  private layersSummary(layers: Snapshot[]): HTMLTableRowElement {
    const tr = document.createElement("tr");
    tr.className = "image-summary";
    const td = document.createElement("td");
    td.colSpan = 7;
    const total = layers.reduce((sum, l) => sum + l.sizeBytes, 0n);
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "layers-toggle";
    toggle.textContent = this.layersShown ? "hide" : "show";
    toggle.setAttribute("aria-expanded", String(this.layersShown));
    toggle.addEventListener("click", () => {
      this.layersShown = !this.layersShown;
      this.render();
    });
    td.append(`image: ${layers.length} layer${layers.length === 1 ? "" : "s"}, ${formatBytes(total)} `, toggle);
    tr.append(td);
    return tr;
  }

  private row(snapshot: Snapshot, depth: number): HTMLTableRowElement {
    const tr = document.createElement("tr");
    const source = sourceName(snapshot.source);
    Object.assign(tr.dataset, {
      name: snapshot.name,
      source,
      parent: snapshot.parent,
      version: String(snapshot.version),
    });
    const image = snapshot.source === SnapshotSource.IMAGE;

    const name = document.createElement("td");
    name.className = "name";
    name.style.paddingLeft = `${0.4 + depth}rem`;
    name.title = snapshot.name;
    name.textContent = `${depth > 0 ? "└ " : ""}${image ? shortDigest(snapshot.name) : snapshot.name}`;
    const labels = Object.entries(snapshot.labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    if (labels.length) {
      const small = document.createElement("div");
      small.className = "labels";
      small.textContent = labels.map(([k, v]) => `${k}=${v}`).join(", ");
      name.append(small);
    }

    const cell = (cls: string, text: string, title?: string) => {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = text;
      if (title) td.title = title;
      return td;
    };
    const actions = document.createElement("td");
    actions.className = "actions-cell";
    if (!image) {
      // Image layers are the image's own: neither restorable nor deletable on their own.
      actions.append(
        this.button("Restore", "restore", () => {
          if (!this.confirmRestore(snapshot)) return;
          void this.runner.run(`Restore ${snapshot.name}`, () => this.restore(snapshot));
        }),
        this.button("Delete", "delete danger", () => {
          if (!confirm(`Delete snapshot ${snapshot.name}?`)) return;
          void this.runner.run(`Delete ${snapshot.name}`, () => this.remove(snapshot));
        }),
      );
    }
    tr.append(
      name,
      cell("source", source),
      cell("parent", snapshot.parent ? shortDigest(snapshot.parent) : "—", snapshot.parent),
      cell("version", image ? "—" : String(snapshot.version)),
      cell("size", formatBytes(snapshot.sizeBytes)),
      cell("time", formatTime(snapshot.createTime)),
      actions,
    );
    return tr;
  }

  private button(text: string, cls: string, onClick: () => void): HTMLButtonElement {
    const button = document.createElement("button");
    button.type = "button";
    button.className = cls;
    button.textContent = text;
    button.addEventListener("click", onClick);
    return button;
  }

  /** The outcome of the last change, also as data attributes (for scripts and tests). */
  private showResult(text: string, data: Record<string, string> = {}): void {
    this.el.result.textContent = text;
    Object.assign(this.el.result.dataset, data);
  }

  private updateButtons(): void {
    const idle = !this.runner.busy && !!this.workspace;
    this.el.create.disabled = !idle;
    this.el.refresh.disabled = !idle;
    for (const button of this.el.rows.querySelectorAll<HTMLButtonElement>("button.restore, button.delete")) {
      button.disabled = !idle;
    }
  }
}
