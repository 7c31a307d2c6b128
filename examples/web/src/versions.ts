// The Versions panel of the selected workspace: its history as ListVersions returns it (each
// version's number, reason, snapshot, image and time; the newest first, the current one marked)
// and, for every version that names a snapshot, "Restore this version" (RestoreSnapshot by
// version), which creates a new version with reason RESTORE.
//
// Versions of reason IMAGE_CHANGE name the SYSTEM snapshot that kept the state before the
// change: restoring one moves the workspace back onto the image it ran on then.

import { VersionReason, WorkspaceState, type BerthClient, type Version, type Workspace } from "@berth/sdk/web";
import { ActionRunner, findIn } from "./actions.js";
import { formatTime, shortDigest } from "./format.js";

/** Versions per ListVersions page; the panel reads them all. */
const PAGE_SIZE = 100;

const reasonName = (r: VersionReason) => VersionReason[r] ?? `REASON_${r}`;

export class VersionsPanel {
  private workspace: Workspace | undefined;
  private versions: Version[] = [];
  private currentVersion = 0n;
  private readonly runner;
  private readonly el;

  constructor(
    private readonly berth: BerthClient,
    root: HTMLElement,
    /** Called after a restore changed the workspace (its version, its state, maybe its image). */
    private readonly workspaceChanged: (workspaceId: string) => Promise<void>,
  ) {
    const find = findIn(root, "versions panel");
    this.el = {
      section: root,
      refresh: find<HTMLButtonElement>("versions-refresh"),
      rows: find<HTMLTableSectionElement>("version-rows"),
      current: find("versions-current"),
      result: find("versions-result"),
      error: find("versions-error"),
      status: find("versions-status"),
    };
    this.runner = new ActionRunner(this.el, () => this.updateButtons());
    this.el.refresh.addEventListener("click", () => this.reload());
  }

  /** Shows the panel for the selected workspace (any state: the server says what it refuses). */
  show(ws: Workspace | undefined): void {
    this.el.section.hidden = !ws;
    const changed = ws?.workspaceId !== this.workspace?.workspaceId;
    this.workspace = ws;
    if (!changed) return;
    this.runner.reset();
    this.versions = [];
    this.currentVersion = 0n;
    this.showResult("");
    this.render();
    if (ws) this.reload();
  }

  /** Lists the history again (after another panel changed it). */
  reload(): void {
    void this.runner.run("List versions", () => this.load());
  }

  private target(): Workspace {
    if (!this.workspace) throw new Error("no workspace is selected");
    return this.workspace;
  }

  private async load(): Promise<void> {
    const { workspaceId } = this.target();
    const all: Version[] = [];
    let current = 0n;
    let pageToken = "";
    do {
      const page = await this.berth.workspaces.listVersions({ workspaceId, pageSize: PAGE_SIZE, pageToken });
      all.push(...page.versions);
      current = page.currentVersion;
      pageToken = page.nextPageToken;
    } while (pageToken);
    if (workspaceId !== this.workspace?.workspaceId) return; // another one was selected meanwhile
    this.versions = all;
    this.currentVersion = current;
    this.render();
  }

  private async restore(version: Version): Promise<void> {
    const { workspaceId } = this.target();
    const restored = await this.berth.workspaces.restoreSnapshot({
      workspaceId,
      target: { case: "version", value: version.version },
    });
    const now = restored.version?.version ?? restored.workspace?.currentVersion;
    this.showResult(`Restored version ${version.version} (snapshot ${version.snapshotName}): now version ${now ?? "?"}`, {
      restored: String(version.version),
      version: String(now ?? ""),
    });
    await this.load();
    await this.workspaceChanged(workspaceId);
  }

  // ---- rendering ----

  private render(): void {
    this.el.current.textContent = this.currentVersion ? `current: version ${this.currentVersion}` : "";
    // Newest first: the current state and what led to it are at the top.
    this.el.rows.replaceChildren(...[...this.versions].reverse().map((v) => this.row(v)));
    this.updateButtons();
  }

  private row(version: Version): HTMLTableRowElement {
    const tr = document.createElement("tr");
    const current = version.version === this.currentVersion;
    const reason = reasonName(version.reason);
    Object.assign(tr.dataset, { version: String(version.version), reason, snapshot: version.snapshotName });
    tr.classList.toggle("current", current);
    if (current) tr.setAttribute("aria-current", "true");

    const cell = (cls: string, text: string, title?: string) => {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = text;
      if (title) td.title = title;
      return td;
    };
    const number = cell("version", String(version.version));
    if (current) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "current";
      number.append(" ", badge);
    }
    const actions = document.createElement("td");
    actions.className = "actions-cell";
    if (version.snapshotName) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "restore";
      button.textContent = "Restore this version";
      button.addEventListener("click", () => {
        const running = this.workspace?.state === WorkspaceState.RUNNING;
        const prompt =
          `Restore version ${version.version} (snapshot ${version.snapshotName})? Every change since is discarded` +
          `${running ? " and the workspace restarts" : ""}.`;
        if (!confirm(prompt)) return;
        void this.runner.run(`Restore version ${version.version}`, () => this.restore(version));
      });
      actions.append(button);
    }
    tr.append(
      number,
      cell("reason", reason),
      cell("snapshot", version.snapshotName || "—"),
      cell("image", `${version.image}${version.imageDigest ? ` @ ${shortDigest(version.imageDigest)}` : ""}`, version.imageDigest),
      cell("time", formatTime(version.createTime)),
      actions,
    );
    return tr;
  }

  /** The outcome of the last restore, also as data attributes (for scripts and tests). */
  private showResult(text: string, data: Record<string, string> = {}): void {
    this.el.result.textContent = text;
    Object.assign(this.el.result.dataset, data);
  }

  private updateButtons(): void {
    const idle = !this.runner.busy && !!this.workspace;
    this.el.refresh.disabled = !idle;
    for (const button of this.el.rows.querySelectorAll<HTMLButtonElement>("button.restore")) button.disabled = !idle;
  }
}
