// The Data part of the workspace panel: Export downloads the workspace's data directory as one
// archive (.tar.gz or .tar.zst), Import extracts a picked archive into it, both with a progress
// bar, for a RUNNING or STOPPED workspace.
//
// Export reads the ExportData stream with the SDK's `exportData`, which checks the bytes against
// the stream's trailer (size and SHA-256) before the page offers the download; the page shows
// the trailer. Import goes through the SDK's `importData`: a browser cannot stream requests, so
// it uploads the file in ImportDataChunk calls of at most 3 MiB under one upload id, read from
// the file as they go out, and the server extracts the archive when the last chunk arrives
// (nothing changes in the workspace before that).

import {
  ArchiveFormat,
  exportData,
  importData,
  WorkspaceState,
  type BerthClient,
  type Workspace,
} from "@berth/sdk/web";
import { describeError, formatBytes } from "./format.js";

/** Where a workspace's data lives when the server does not say (servers before `data_path`). */
const DEFAULT_DATA_PATH = "/data";

/** Whether the panel can work on a workspace in this state (running, or stopped through a mount). */
function available(ws: Workspace | undefined): ws is Workspace {
  return ws?.state === WorkspaceState.RUNNING || ws?.state === WorkspaceState.STOPPED;
}

/** Saves `blob` as a download named `name`. */
function download(blob: Blob, name: string): void {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  // The download has started from the URL by now; a minute covers slow disks.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

export class DataPanel {
  private workspaceId: string | undefined;
  private dataPath = DEFAULT_DATA_PATH;
  private busy = false;
  // Each workspace selection is a session: switching aborts the transfer of the previous one.
  private session = 0;
  private abort = new AbortController();

  private readonly el;

  constructor(
    private readonly berth: BerthClient,
    root: HTMLElement,
  ) {
    const find = <T extends HTMLElement = HTMLElement>(id: string): T => {
      const found = root.querySelector<T>(`#${id}`);
      if (!found) throw new Error(`#${id} is missing from the data panel`);
      return found;
    };
    this.el = {
      section: root,
      path: find("data-path"),
      exportButton: find<HTMLButtonElement>("data-export"),
      format: find<HTMLSelectElement>("data-format"),
      importInput: find<HTMLInputElement>("data-import"),
      replace: find<HTMLInputElement>("data-replace"),
      bar: find<HTMLProgressElement>("data-bar"),
      transfer: find("data-transfer-text"),
      result: find("data-result"),
      error: find("data-error"),
      status: find("data-status"),
    };
    this.el.exportButton.addEventListener("click", () => void this.run(`Export ${this.dataPath}`, () => this.exportArchive()));
    this.el.importInput.addEventListener("change", () => {
      const file = this.el.importInput.files?.[0];
      this.el.importInput.value = ""; // picking the same file again is a change too
      if (!file) return;
      if (this.el.replace.checked && !confirm(`Replace everything in ${this.dataPath} with the contents of ${file.name}?`)) return;
      void this.run(`Import ${file.name}`, () => this.importArchive(file));
    });
    this.updateButtons();
  }

  /** Shows the panel for the selected workspace (running or stopped); hides it otherwise. */
  show(ws: Workspace | undefined): void {
    this.el.section.hidden = !available(ws);
    const workspaceId = available(ws) ? ws.workspaceId : undefined;
    if (workspaceId === this.workspaceId) return;
    this.abort.abort();
    this.abort = new AbortController();
    this.session++;
    this.busy = false;
    this.workspaceId = workspaceId;
    this.dataPath = ws?.dataPath || DEFAULT_DATA_PATH;
    this.el.path.textContent = this.dataPath;
    this.el.result.textContent = "";
    this.clearError();
    this.setStatus("");
    this.showTransfer("");
    this.updateButtons();
  }

  // Runs one transfer at a time, with the buttons disabled meanwhile, its outcome in the status
  // line and its error (code and reason) in the panel's error box.
  private async run(action: string, fn: () => Promise<void>): Promise<void> {
    if (this.busy || !this.workspaceId) return;
    const session = this.session;
    this.busy = true;
    this.clearError();
    this.updateButtons();
    this.setStatus(`${action}…`);
    try {
      await fn();
      if (session === this.session) this.setStatus(`${action}: done`);
    } catch (err) {
      if (session !== this.session) return; // another workspace was selected meanwhile
      this.el.error.textContent = describeError(action, err);
      this.el.error.hidden = false;
      console.warn(this.el.error.textContent); // in the browser console, and so in the test's log
      this.setStatus(`${action}: failed`);
    } finally {
      if (session === this.session) {
        this.busy = false;
        this.updateButtons();
        this.showTransfer("");
      }
    }
  }

  private async exportArchive(): Promise<void> {
    const workspaceId = this.target();
    const path = this.dataPath;
    const zstd = this.el.format.value === "zstd";
    this.el.result.textContent = "";
    const exported = exportData(this.berth, workspaceId, {
      path,
      format: zstd ? ArchiveFormat.TAR_ZSTD : ArchiveFormat.TAR_GZIP,
      signal: this.abort.signal,
      onProgress: (received) => this.showTransfer(`Exporting ${path}`, received),
    });
    const parts: Uint8Array[] = [];
    for await (const chunk of exported) parts.push(chunk);
    const trailer = exported.trailer;
    if (!trailer) throw new Error(`the export of ${path} ended without its trailer`);
    const name = `${workspaceId}${path.replaceAll("/", "-")}.${zstd ? "tar.zst" : "tar.gz"}`;
    download(new Blob(parts as BlobPart[], { type: zstd ? "application/zstd" : "application/gzip" }), name);
    this.showResult(
      `Exported ${path} as ${name}: ${formatBytes(trailer.sizeBytes)}, ${trailer.entryCount} entries, sha256 ${trailer.sha256}`,
      { sizeBytes: String(trailer.sizeBytes), sha256: trailer.sha256, entryCount: String(trailer.entryCount) },
    );
  }

  private async importArchive(file: File): Promise<void> {
    const workspaceId = this.target();
    const path = this.dataPath;
    this.el.result.textContent = "";
    const imported = await importData(this.berth, workspaceId, file, {
      path,
      replace: this.el.replace.checked,
      signal: this.abort.signal,
      onProgress: (sent, total) => this.showTransfer(`Importing ${file.name}`, sent, total),
    });
    this.showResult(
      `Imported ${file.name} into ${path}: ${formatBytes(imported.sizeBytes)}, ${imported.entryCount} entries, sha256 ${imported.sha256}`,
      { sizeBytes: String(imported.sizeBytes), sha256: imported.sha256, entryCount: String(imported.entryCount) },
    );
  }

  private target(): string {
    if (!this.workspaceId) throw new Error("no workspace is selected");
    return this.workspaceId;
  }

  /** The outcome of the last transfer, also as data attributes (for scripts and tests). */
  private showResult(text: string, data: Record<string, string>): void {
    this.el.result.textContent = text;
    Object.assign(this.el.result.dataset, data);
  }

  /** A transfer's progress: a bar over `total`, or a moving one while the total is unknown. */
  private showTransfer(text: string, done = 0, total?: number): void {
    const bar = this.el.bar;
    bar.hidden = !text;
    if (!text) {
      bar.value = 0;
      this.el.transfer.textContent = "";
      return;
    }
    if (total === undefined) {
      bar.removeAttribute("value"); // indeterminate: an export's size is known at its end only
      this.el.transfer.textContent = `${text}: ${formatBytes(done)}`;
    } else {
      bar.value = total ? (done / total) * 100 : 100;
      this.el.transfer.textContent = `${text}: ${formatBytes(done)} / ${formatBytes(total)}`;
    }
  }

  private clearError(): void {
    this.el.error.textContent = "";
    this.el.error.hidden = true;
  }

  private setStatus(text: string): void {
    this.el.status.textContent = text;
  }

  private updateButtons(): void {
    const idle = !this.busy && !!this.workspaceId;
    this.el.exportButton.disabled = !idle;
    this.el.format.disabled = !idle;
    this.el.importInput.disabled = !idle;
    this.el.replace.disabled = !idle;
  }
}
