// The event log: what happens to every workspace, or to the selected one, as picked; live from one
// WatchEvents stream (filtered by the server), newest on top. After the selection is cleared (a
// delete), the log keeps showing the workspace it showed, so its DELETED event still arrives.
//
// The log starts with the events from when it was opened (after_event_id 0: live only). A stream
// that fails or ends is reopened with a backoff and `after_event_id` set to the last event shown,
// so the server replays what happened meanwhile and nothing is missed or shown twice; the same
// when the page was hidden (the stream is closed then, like the metrics one, to keep the
// browser's few connections per server free). Another scope (another selection, or "all") starts
// a new log. Heartbeats only say that the stream is alive.

import {
  berthErrorInfo,
  WorkspaceEventKind,
  WorkspaceState,
  type BerthClient,
  type WorkspaceEvent,
} from "@berth/sdk/web";
import { findIn } from "./actions.js";
import { describeError, formatTime } from "./format.js";

/** The most rows the log keeps; older ones are dropped. */
const MAX_ROWS = 500;
/** How often the server sends a heartbeat while nothing happens. */
const HEARTBEAT_SECONDS = 5n;
/** The longest wait before reopening a failed stream. */
const MAX_RETRY_MS = 30_000;

const kindName = (k: WorkspaceEventKind) => WorkspaceEventKind[k] ?? `KIND_${k}`;
const stateName = (s: WorkspaceState) => WorkspaceState[s] ?? `STATE_${s}`;

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

export class EventLog {
  /** The workspace selected on the page, if any. */
  private selectedId: string | undefined;
  /** Whose events the open log shows: a workspace id, or "" for every workspace. */
  private scope: string | undefined;
  /** The last event shown: a reopened stream resumes after it. */
  private lastEventId = 0n;
  private stream: AbortController | undefined;
  private readonly el;

  constructor(
    private readonly berth: BerthClient,
    root: HTMLElement,
  ) {
    const find = findIn(root, "event log");
    this.el = {
      scope: find<HTMLSelectElement>("events-scope"),
      clear: find<HTMLButtonElement>("events-clear"),
      live: find("events-live"),
      rows: find<HTMLTableSectionElement>("event-rows"),
      empty: find("events-empty"),
      error: find("events-error"),
    };
    this.el.scope.addEventListener("change", () => this.rescope());
    this.el.clear.addEventListener("click", () => {
      this.el.rows.replaceChildren();
      this.el.empty.hidden = false;
    });
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) this.close("paused while the page is hidden");
      else this.open();
    });
  }

  /** Follows the page's selection (a log of the selected workspace restarts for another one). */
  select(workspaceId: string | undefined): void {
    if (workspaceId) this.selectedId = workspaceId;
    const option = this.el.scope.querySelector<HTMLOptionElement>('option[value="selected"]');
    if (option) option.textContent = this.selectedId ? `workspace ${this.selectedId}` : "the selected workspace";
    this.rescope();
  }

  private wantedScope(): string | undefined {
    if (this.el.scope.value === "all") return "";
    return this.selectedId; // undefined: none was selected yet, nothing to show
  }

  // Starts a new log when whose events to show changed.
  private rescope(): void {
    const scope = this.wantedScope();
    if (scope === this.scope) return;
    this.close("");
    this.scope = scope;
    this.lastEventId = 0n;
    this.el.rows.replaceChildren();
    this.el.empty.hidden = false;
    this.showError(undefined);
    this.open();
  }

  private open(): void {
    if (this.scope === undefined || this.stream || document.hidden) return;
    const stream = new AbortController();
    this.stream = stream;
    void this.watch(this.scope, stream.signal).finally(() => {
      if (this.stream === stream) this.stream = undefined;
    });
  }

  private close(why: string): void {
    this.stream?.abort();
    this.stream = undefined;
    this.el.live.textContent = why;
    this.el.live.dataset.live = "false";
  }

  // Reads the stream until aborted; reopens it after failures (1 s doubling to 30 s), resuming
  // after the last event shown.
  private async watch(workspaceId: string, signal: AbortSignal): Promise<void> {
    let failures = 0;
    while (!signal.aborted) {
      try {
        this.el.live.textContent = "connecting…";
        const request = {
          workspaceId,
          afterEventId: this.lastEventId,
          heartbeatInterval: { seconds: HEARTBEAT_SECONDS },
        };
        this.el.live.dataset.afterEventId = String(this.lastEventId);
        for await (const { event } of this.berth.workspaces.watchEvents(request, { signal })) {
          if (!event) continue;
          failures = 0;
          this.showError(undefined);
          this.el.live.textContent = `live${workspaceId ? "" : ", every workspace"}`;
          this.el.live.dataset.live = "true";
          if (event.kind === WorkspaceEventKind.HEARTBEAT) {
            this.el.live.title = `last heartbeat ${formatTime(event.eventTime)}`;
            continue;
          }
          if (event.kind === WorkspaceEventKind.UNSPECIFIED || event.eventId <= this.lastEventId) continue;
          this.lastEventId = event.eventId;
          this.add(event);
        }
      } catch (err) {
        if (signal.aborted) return;
        if (berthErrorInfo(err)?.reason === "WORKSPACE_NOT_FOUND") {
          // berth keeps a deleted workspace's stream open; a server that ends it ends the log.
          this.el.live.textContent = "the workspace is gone";
          this.el.live.dataset.live = "false";
          return;
        }
        this.showError(describeError("Watch events", err));
      }
      if (signal.aborted) return;
      const wait = Math.min(1000 * 2 ** failures++, MAX_RETRY_MS);
      this.el.live.textContent = `reconnecting in ${Math.round(wait / 1000)} s`;
      this.el.live.dataset.live = "false";
      await sleep(wait, signal);
    }
  }

  private add(event: WorkspaceEvent): void {
    this.el.rows.prepend(this.row(event));
    while (this.el.rows.rows.length > MAX_ROWS) this.el.rows.lastElementChild?.remove();
    this.el.empty.hidden = true;
  }

  private row(event: WorkspaceEvent): HTMLTableRowElement {
    const tr = document.createElement("tr");
    const kind = kindName(event.kind);
    Object.assign(tr.dataset, {
      eventId: String(event.eventId),
      kind,
      workspace: event.workspaceId,
      state: stateName(event.state),
    });
    const details = [
      event.kind === WorkspaceEventKind.STATE_CHANGED ? `${stateName(event.previousState)} → ${stateName(event.state)}` : "",
      event.kind === WorkspaceEventKind.TASK_EXITED ? `exit code ${event.exitCode}` : "",
      event.snapshotName ? `snapshot ${event.snapshotName}` : "",
      event.version ? `version ${event.version}` : "",
      event.failureReason,
      event.message,
    ].filter(Boolean);
    const cell = (cls: string, text: string) => {
      const td = document.createElement("td");
      td.className = cls;
      td.textContent = text;
      return td;
    };
    tr.append(
      cell("id", String(event.eventId)),
      cell("time", formatTime(event.eventTime)),
      cell("workspace", event.workspaceId),
      cell("kind", kind),
      cell("details", details.join("; ")),
    );
    return tr;
  }

  private showError(text: string | undefined): void {
    if (text && text !== this.el.error.textContent) console.warn(text); // once per distinct failure
    this.el.error.textContent = text ?? "";
    this.el.error.hidden = !text;
  }
}
