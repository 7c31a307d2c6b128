// The file manager panel: browse the directories of the selected workspace, open a text file,
// edit and save it, upload files and download them, over grpc-web (FilesystemService).
//
// A browser cannot stream requests, so every write (a save, an upload, a new file) goes through
// the unary WriteFileChunk: one random upload id per write, chunks of at most 3 MiB at the
// offsets received so far, and the last chunk replaces the file atomically. A save passes the
// revision the file had when it was opened as `expected_revision`: when something inside the
// workspace changed the file meanwhile, the save fails with ABORTED REVISION_MISMATCH, and the
// editor says so and offers Reload (take the workspace's version) or Overwrite (keep this one).

import {
  berthErrorInfo,
  FileType,
  WorkspaceState,
  type BerthClient,
  type EntryInfo,
  type Workspace,
} from "@berth/sdk/web";
import { describeError, formatBytes } from "./format.js";

/** The most WriteFileChunk takes in one chunk. */
const CHUNK_BYTES = 3 * 1024 * 1024;
/** Larger files are offered for download only: a textarea is no editor for them. */
const EDITABLE_BYTES = 2 * 1024 * 1024;
/** Entries per ListDir page; "Show more" fetches the next one. */
const PAGE_SIZE = 500;
/** Where a workspace's data lives when the server does not say (servers before `data_path`). */
const DEFAULT_DATA_PATH = "/data";

/** The file open in the editor. */
interface OpenFile {
  path: string;
  /** The revision the content was read or last saved at: the next save's `expected_revision`. */
  revision: string;
  /** The textarea's value when loaded or saved, to tell unsaved edits. */
  savedValue: string;
  /** A textarea turns CRLF into LF; files that use CRLF get it back on save. */
  lineEnding: "\n" | "\r\n";
}

/** Whether the panel can work on a workspace in this state (running, or stopped through a mount). */
function browsable(ws: Workspace | undefined): ws is Workspace {
  return ws?.state === WorkspaceState.RUNNING || ws?.state === WorkspaceState.STOPPED;
}

// ---- paths (the server resolves them again, inside the workspace's root) ----

function joinPath(dir: string, name: string): string {
  return dir === "/" ? `/${name}` : `${dir}/${name}`;
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash <= 0 ? "/" : path.slice(0, slash);
}

/** `drwxr-xr-x`, as `ls -l` shows type and permission bits. */
function modeString(entry: EntryInfo): string {
  const types: Partial<Record<FileType, string>> = { [FileType.DIRECTORY]: "d", [FileType.SYMLINK]: "l", [FileType.FILE]: "-" };
  const type = types[entry.type] ?? "?";
  const bits = "rwxrwxrwx";
  let perms = "";
  for (let i = 0; i < 9; i++) perms += entry.mode & (0o400 >> i) ? bits[i] : "-";
  return type + perms;
}

/** 128 random bits in hex: an upload id (`crypto.randomUUID` exists only in secure contexts). */
function randomUploadId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concatBytes(chunks: Uint8Array[]): Uint8Array {
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return all;
}

export class FilesPanel {
  private workspaceId: string | undefined;
  private cwd = "/";
  private entries: EntryInfo[] = [];
  // Whether `entries` are those of `cwd` (not so before its first listing, or after a failed one).
  private listed = false;
  private nextPageToken = "";
  private opened: OpenFile | undefined;
  private busy = false;
  // Each workspace selection is a session: switching aborts the calls of the previous one, and
  // their late results are dropped.
  private session = 0;
  private abort = new AbortController();

  private readonly el;

  constructor(
    private readonly berth: BerthClient,
    root: HTMLElement,
  ) {
    const find = <T extends HTMLElement = HTMLElement>(id: string): T => {
      const found = root.querySelector<T>(`#${id}`);
      if (!found) throw new Error(`#${id} is missing from the files panel`);
      return found;
    };
    this.el = {
      section: root,
      refresh: find<HTMLButtonElement>("files-refresh"),
      path: find("files-path"),
      error: find("files-error"),
      layout: find("files-layout"),
      rows: find<HTMLTableSectionElement>("files-rows"),
      empty: find("files-empty"),
      more: find<HTMLButtonElement>("files-more"),
      newName: find<HTMLInputElement>("files-new-name"),
      newFile: find<HTMLButtonElement>("files-new-file"),
      newDir: find<HTMLButtonElement>("files-new-dir"),
      upload: find<HTMLInputElement>("files-upload"),
      transferBar: find<HTMLProgressElement>("files-transfer-bar"),
      transferText: find("files-transfer-text"),
      editor: find("files-editor"),
      editorPath: find("files-editor-path"),
      editorState: find("files-editor-state"),
      conflict: find("files-conflict"),
      conflictText: find("files-conflict-text"),
      conflictReload: find<HTMLButtonElement>("files-conflict-reload"),
      conflictOverwrite: find<HTMLButtonElement>("files-conflict-overwrite"),
      text: find<HTMLTextAreaElement>("files-text"),
      save: find<HTMLButtonElement>("files-save"),
      reload: find<HTMLButtonElement>("files-reload"),
      close: find<HTMLButtonElement>("files-close"),
      revision: find("files-revision"),
      status: find("files-status"),
    };
    this.wire();
    this.updateButtons();
  }

  /**
   * Shows the panel for the selected workspace (running or stopped), listing its data directory
   * when the selection changes; hides it otherwise.
   */
  show(ws: Workspace | undefined): void {
    this.el.section.hidden = !browsable(ws);
    if (!browsable(ws)) {
      if (this.workspaceId) this.reset(undefined, "/");
      return;
    }
    if (ws.workspaceId === this.workspaceId) return;
    const dataPath = ws.dataPath || DEFAULT_DATA_PATH;
    this.reset(ws.workspaceId, dataPath);
    void this.run(`List ${dataPath}`, () => this.list(dataPath));
  }

  /**
   * Lists the current directory again and reopens the file in the editor unless it has unsaved
   * edits: for after a restore or an image change replaced the workspace's filesystem. Edits
   * stay in the editor; saving them checks the file's revision as always.
   */
  reload(): void {
    void this.run(`List ${this.cwd}`, async () => {
      await this.list(this.cwd);
      const opened = this.opened;
      if (!opened || this.dirty()) return;
      try {
        await this.openFile(opened.path);
      } catch (err) {
        if (berthErrorInfo(err)?.reason !== "PATH_NOT_FOUND") throw err;
        this.closeEditor(); // not in the restored filesystem
      }
    });
  }

  private reset(workspaceId: string | undefined, cwd: string): void {
    this.abort.abort();
    this.abort = new AbortController();
    this.session++;
    this.busy = false;
    this.workspaceId = workspaceId;
    this.cwd = cwd;
    this.entries = [];
    this.listed = false;
    this.nextPageToken = "";
    this.closeEditor();
    this.clearError();
    this.setStatus("");
    this.showTransfer("");
    this.renderPath();
    this.renderEntries();
  }

  private wire(): void {
    const el = this.el;
    el.refresh.addEventListener("click", () => void this.run(`List ${this.cwd}`, () => this.list(this.cwd)));
    el.more.addEventListener("click", () => void this.run(`List ${this.cwd}`, () => this.listMore()));
    el.newFile.addEventListener("click", () => {
      const path = this.newPath();
      if (path) void this.run(`New file ${path}`, () => this.createFile(path));
    });
    el.newDir.addEventListener("click", () => {
      const path = this.newPath();
      if (path) void this.run(`New folder ${path}`, () => this.createDir(path));
    });
    el.upload.addEventListener("change", () => {
      const files = Array.from(el.upload.files ?? []);
      el.upload.value = ""; // picking the same file again is a change too
      if (files.length) void this.run(`Upload ${files.map((f) => f.name).join(", ")}`, () => this.upload(files));
    });
    el.text.addEventListener("input", () => this.renderEditorState());
    el.save.addEventListener("click", () => {
      const opened = this.opened;
      if (opened) void this.run(`Save ${opened.path}`, () => this.save(opened, opened.revision));
    });
    el.reload.addEventListener("click", () => {
      const opened = this.opened;
      if (!opened || (this.dirty() && !confirm(`Discard your edits of ${opened.path}?`))) return;
      void this.run(`Open ${opened.path}`, () => this.openFile(opened.path));
    });
    el.conflictReload.addEventListener("click", () => {
      const opened = this.opened;
      if (opened) void this.run(`Open ${opened.path}`, () => this.openFile(opened.path));
    });
    el.conflictOverwrite.addEventListener("click", () => {
      const opened = this.opened;
      if (opened) void this.run(`Overwrite ${opened.path}`, () => this.overwrite(opened));
    });
    el.close.addEventListener("click", () => {
      if (this.opened && this.dirty() && !confirm(`Discard your edits of ${this.opened.path}?`)) return;
      this.closeEditor();
    });
  }

  // ---- running actions ----

  // Runs one action of the panel at a time, with its buttons disabled meanwhile, its outcome in
  // the status line and its error (code and reason) in the panel's error box.
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
      this.showError(describeError(action, err));
      this.setStatus(`${action}: failed`);
    } finally {
      if (session === this.session) {
        this.busy = false;
        this.updateButtons();
        this.showTransfer("");
      }
    }
  }

  /** The workspace of the running action, and the signal that aborts it when the selection changes. */
  private target(): { workspaceId: string; signal: AbortSignal } {
    if (!this.workspaceId) throw new Error("no workspace is selected");
    return { workspaceId: this.workspaceId, signal: this.abort.signal };
  }

  private showError(text: string): void {
    this.el.error.textContent = text;
    this.el.error.hidden = false;
    console.warn(text); // in the browser console, and so in the test's log
  }

  private clearError(): void {
    this.el.error.textContent = "";
    this.el.error.hidden = true;
  }

  private setStatus(text: string): void {
    this.el.status.textContent = text;
  }

  private updateButtons(): void {
    const el = this.el;
    const idle = !this.busy && !!this.workspaceId;
    for (const button of [el.refresh, el.more, el.newFile, el.newDir, el.conflictReload, el.conflictOverwrite]) {
      button.disabled = !idle;
    }
    el.upload.disabled = !idle;
    for (const button of [el.save, el.reload]) button.disabled = !idle || !this.opened;
    el.close.disabled = this.busy || !this.opened;
  }

  private showTransfer(text: string, done = 0, total = 0): void {
    this.el.transferText.textContent = text && total ? `${text}: ${formatBytes(done)} / ${formatBytes(total)}` : text;
    this.el.transferBar.hidden = !text;
    this.el.transferBar.value = total ? (done / total) * 100 : text ? 100 : 0;
  }

  // ---- browsing ----

  private async list(path: string): Promise<void> {
    const { workspaceId, signal } = this.target();
    const page = await this.berth.files.listDir({ workspaceId, path, pageSize: PAGE_SIZE }, { signal });
    this.cwd = path;
    this.entries = page.entries;
    this.listed = true;
    this.nextPageToken = page.nextPageToken;
    this.renderPath();
    this.renderEntries();
  }

  private async listMore(): Promise<void> {
    const { workspaceId, signal } = this.target();
    const path = this.cwd;
    const pageToken = this.nextPageToken;
    const page = await this.berth.files.listDir({ workspaceId, path, pageSize: PAGE_SIZE, pageToken }, { signal });
    this.entries.push(...page.entries);
    this.nextPageToken = page.nextPageToken;
    this.renderEntries();
  }

  /** Enters a directory, opens a file, follows a symlink to either. */
  private activate(entry: EntryInfo): void {
    switch (entry.type) {
      case FileType.DIRECTORY:
        void this.run(`List ${entry.path}`, () => this.list(entry.path));
        break;
      case FileType.FILE:
        if (this.opened && this.dirty() && !confirm(`Discard your edits of ${this.opened.path}?`)) return;
        void this.run(`Open ${entry.path}`, () => this.openFile(entry.path));
        break;
      case FileType.SYMLINK:
        void this.run(`Follow ${entry.path}`, () => this.follow(entry));
        break;
      default:
        this.setStatus(`${entry.path} is a device, FIFO or socket: the panel does not open those`);
    }
  }

  // ListDir and ReadFile follow a symlink at the end of a path (inside the workspace's root), so
  // the link's own path serves, as `cd` into a link does in a shell; Stat says which it is.
  private async follow(link: EntryInfo): Promise<void> {
    const { workspaceId, signal } = this.target();
    const { entry } = await this.berth.files.stat({ workspaceId, path: link.path, followSymlinks: true }, { signal });
    if (entry?.type === FileType.DIRECTORY) await this.list(link.path);
    else if (entry?.type === FileType.FILE) await this.openFile(link.path);
    else throw new Error(`${link.path} points to ${link.symlinkTarget}, which is neither a file nor a directory`);
  }

  private renderPath(): void {
    const crumbs: HTMLElement[] = [];
    const parts = this.cwd.split("/").filter(Boolean);
    const crumb = (label: string, path: string) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "crumb";
      button.textContent = label;
      button.dataset.path = path;
      if (path === this.cwd) button.setAttribute("aria-current", "location");
      else button.addEventListener("click", () => void this.run(`List ${path}`, () => this.list(path)));
      crumbs.push(button);
    };
    crumb("/", "/");
    parts.forEach((part, i) => {
      if (i > 0) {
        const sep = document.createElement("span");
        sep.className = "sep";
        sep.textContent = "/";
        crumbs.push(sep);
      }
      crumb(part, `/${parts.slice(0, i + 1).join("/")}`);
    });
    this.el.path.replaceChildren(...crumbs);
  }

  private renderEntries(): void {
    const rows: HTMLTableRowElement[] = [];
    if (this.cwd !== "/") {
      const up = this.row([".."]);
      up.className = "up";
      up.dataset.name = "..";
      const parent = parentOf(this.cwd);
      up.addEventListener("click", () => void this.run(`List ${parent}`, () => this.list(parent)));
      rows.push(up);
    }
    for (const entry of this.entries) {
      const type = FileType[entry.type]?.toLowerCase() ?? "other";
      const name =
        entry.type === FileType.DIRECTORY
          ? `${entry.name}/`
          : entry.type === FileType.SYMLINK
            ? `${entry.name} → ${entry.symlinkTarget}`
            : entry.name;
      const size = entry.type === FileType.FILE ? formatBytes(entry.sizeBytes) : "";
      const modified = entry.modifyTime ? new Date(Number(entry.modifyTime.seconds) * 1000).toLocaleString() : "";
      const tr = this.row([name, size, modeString(entry), modified]);
      tr.dataset.name = entry.name;
      tr.dataset.path = entry.path;
      tr.dataset.type = type;
      tr.title = entry.path;
      tr.addEventListener("click", () => this.activate(entry));
      if (entry.type === FileType.FILE) {
        const download = document.createElement("button");
        download.type = "button";
        download.className = "download";
        download.textContent = "Download";
        download.addEventListener("click", (e) => {
          e.stopPropagation(); // not an open
          void this.run(`Download ${entry.path}`, () => this.download(entry));
        });
        tr.cells[4]?.append(download);
      }
      rows.push(tr);
    }
    this.el.rows.replaceChildren(...rows);
    this.el.empty.hidden = !this.listed || this.entries.length > 0;
    this.el.more.hidden = !this.nextPageToken;
  }

  /** A row of the table: name, size, mode and modified time, and a cell for the row's buttons. */
  private row(cells: string[]): HTMLTableRowElement {
    const tr = document.createElement("tr");
    for (const [i, cls] of ["name", "size", "mode", "modified", "actions"].entries()) {
      const td = tr.insertCell();
      td.className = cls;
      td.textContent = cells[i] ?? "";
    }
    return tr;
  }

  // ---- new files and folders ----

  /** The path of the name typed for New file / New folder, in the current directory. */
  private newPath(): string | undefined {
    const name = this.el.newName.value.trim();
    if (!name || name === "." || name === ".." || name.includes("/")) {
      this.showError(`Type a name (without "/") for the new file or folder first`);
      return undefined;
    }
    return joinPath(this.cwd, name);
  }

  private async createFile(path: string): Promise<void> {
    // WriteFileChunk has no "must not exist" precondition: look first, so as not to empty a file.
    if (await this.exists(path)) throw new Error(`${path} already exists`);
    await this.write(path, new Blob([]), "");
    this.el.newName.value = "";
    await this.list(this.cwd);
    await this.openFile(path);
  }

  private async createDir(path: string): Promise<void> {
    const { workspaceId, signal } = this.target();
    await this.berth.files.makeDir({ workspaceId, path }, { signal });
    this.el.newName.value = "";
    await this.list(this.cwd);
  }

  private async exists(path: string): Promise<boolean> {
    const { workspaceId, signal } = this.target();
    try {
      await this.berth.files.stat({ workspaceId, path }, { signal });
      return true;
    } catch (err) {
      if (berthErrorInfo(err)?.reason === "PATH_NOT_FOUND") return false;
      throw err;
    }
  }

  // ---- reading and writing ----

  /**
   * Reads a whole file with ReadFile: its description (the first message) and its chunks. Fails
   * without reading the content when the file is larger than `limit` bytes.
   */
  private async read(
    path: string,
    limit = Infinity,
    progress?: (done: number, total: number) => void,
  ): Promise<{ entry: EntryInfo; chunks: Uint8Array[] }> {
    const { workspaceId, signal } = this.target();
    let entry: EntryInfo | undefined;
    const chunks: Uint8Array[] = [];
    let received = 0;
    // Leaving the loop (a throw) cancels the stream.
    for await (const message of this.berth.files.readFile({ workspaceId, path }, { signal })) {
      if (message.event.case === "entry") {
        entry = message.event.value;
        if (Number(entry.sizeBytes) > limit) {
          throw new Error(
            `${path} has ${formatBytes(entry.sizeBytes)}: the editor opens files up to ${formatBytes(limit)}; download it instead`,
          );
        }
      } else if (message.event.case === "chunk") {
        chunks.push(message.event.value);
        received += message.event.value.length;
        if (received > limit) throw new Error(`${path} grew beyond ${formatBytes(limit)} while being read; download it instead`);
        progress?.(received, Number(entry?.sizeBytes ?? 0));
      }
    }
    if (!entry) throw new Error(`the server sent no description of ${path}`);
    return { entry, chunks };
  }

  /**
   * Replaces `path` with `content` through WriteFileChunk and returns the written file (with its
   * new revision). `expectedRevision` "" writes unconditionally.
   */
  private async write(
    path: string,
    content: Blob,
    expectedRevision: string,
    progress?: (done: number, total: number) => void,
  ): Promise<EntryInfo> {
    const { workspaceId, signal } = this.target();
    const uploadId = randomUploadId();
    const total = content.size;
    let offset = 0;
    for (;;) {
      const end = Math.min(offset + CHUNK_BYTES, total);
      const data = new Uint8Array(await content.slice(offset, end).arrayBuffer());
      const last = end === total;
      const first = offset === 0;
      const response = await this.berth.files.writeFileChunk(
        {
          workspaceId,
          uploadId,
          offset: BigInt(offset),
          data,
          last,
          // Read from the first chunk only.
          path: first ? path : "",
          expectedRevision: first ? expectedRevision : "",
        },
        { signal },
      );
      if (Number(response.receivedBytes) !== end) {
        throw new Error(`the server has ${response.receivedBytes} bytes of ${path}, not the ${end} sent`);
      }
      progress?.(end, total);
      if (last) {
        if (!response.done || !response.entry) throw new Error(`the server did not confirm writing ${path}`);
        return response.entry;
      }
      offset = end;
    }
  }

  private async upload(files: File[]): Promise<void> {
    const dir = this.cwd;
    for (const file of files) {
      const path = joinPath(dir, file.name);
      if (this.entries.some((e) => e.name === file.name) && !confirm(`Replace ${path}?`)) continue;
      await this.write(path, file, "", (done, total) => this.showTransfer(`Uploading ${file.name}`, done, total));
    }
    await this.list(dir);
  }

  private async download(entry: EntryInfo): Promise<void> {
    const { chunks } = await this.read(entry.path, Infinity, (done, total) =>
      this.showTransfer(`Downloading ${entry.name}`, done, total),
    );
    const blob = new Blob(chunks as BlobPart[], { type: "application/octet-stream" });
    const url = URL.createObjectURL(blob);
    const link = document.createElement("a");
    link.href = url;
    link.download = entry.name;
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    // The download has started from the URL by now; a minute covers slow disks.
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  // ---- the editor ----

  private async openFile(path: string): Promise<void> {
    const { entry, chunks } = await this.read(path, EDITABLE_BYTES);
    let text: string;
    try {
      // ignoreBOM keeps a byte order mark in the text, so a save writes it back.
      text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(concatBytes(chunks));
    } catch {
      throw new Error(`${path} is not UTF-8 text: download it instead`);
    }
    const lineEnding = text.includes("\r\n") && !/(^|[^\r])\n/.test(text) ? "\r\n" : "\n";
    this.el.text.value = text;
    this.opened = { path: entry.path || path, revision: entry.revision, savedValue: this.el.text.value, lineEnding };
    this.el.conflict.hidden = true;
    this.el.editor.hidden = false;
    this.el.layout.classList.remove("no-editor");
    this.el.editorPath.textContent = this.opened.path;
    this.renderEditorState();
    this.el.text.focus();
  }

  private async save(opened: OpenFile, expectedRevision: string): Promise<void> {
    const value = this.el.text.value;
    const text = opened.lineEnding === "\r\n" ? value.replace(/\n/g, "\r\n") : value;
    let entry: EntryInfo;
    try {
      entry = await this.write(opened.path, new Blob([text]), expectedRevision);
    } catch (err) {
      const info = berthErrorInfo(err);
      if (info?.reason === "REVISION_MISMATCH") {
        this.el.conflictText.textContent =
          `${info.codeName} REVISION_MISMATCH: ${opened.path} was changed or removed in the workspace after you ` +
          `opened it, so your edits were not saved. Reload shows the workspace's version (your edits are lost); ` +
          `Overwrite saves your version over it.`;
        this.el.conflict.hidden = false;
      }
      throw err;
    }
    opened.revision = entry.revision;
    opened.savedValue = value;
    this.el.conflict.hidden = true;
    this.renderEditorState();
    if (parentOf(opened.path) === this.cwd) await this.list(this.cwd); // new size and time
  }

  /** Saves over a conflicting change: against the revision the file has now. */
  private async overwrite(opened: OpenFile): Promise<void> {
    const { workspaceId, signal } = this.target();
    let current = "";
    try {
      current = (await this.berth.files.stat({ workspaceId, path: opened.path }, { signal })).entry?.revision ?? "";
    } catch (err) {
      if (berthErrorInfo(err)?.reason !== "PATH_NOT_FOUND") throw err; // removed: write it anew
    }
    await this.save(opened, current);
  }

  private dirty(): boolean {
    return !!this.opened && this.el.text.value !== this.opened.savedValue;
  }

  private renderEditorState(): void {
    this.el.editorState.textContent = this.dirty() ? "modified" : "";
    this.el.revision.textContent = this.opened ? `revision ${this.opened.revision}` : "";
    this.updateButtons();
  }

  private closeEditor(): void {
    this.opened = undefined;
    this.el.text.value = "";
    this.el.editor.hidden = true;
    this.el.conflict.hidden = true;
    this.el.layout.classList.add("no-editor");
    this.renderEditorState();
  }
}
