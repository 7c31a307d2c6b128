// The terminal panel: a shell in the selected workspace on a pseudo-terminal, over grpc-web.
//
// Start runs `sh` (tagged `web-terminal`) on a PTY sized to the panel; keystrokes go through
// SendInput (a browser cannot stream requests), panel resizes through ResizePty. After a page
// reload the panel re-attaches with Connect by tag and `replayBytes`, so the screen comes back.

import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";
import { berthErrorInfo, type BerthClient, type ProcessEvent } from "@berth/sdk/web";

/** The tag of the panel's shell: one per workspace. */
export const TERMINAL_TAG = "web-terminal";
/** How much earlier output a re-attach replays: enough to redraw a screen and some scrollback. */
const REPLAY_BYTES = 64 * 1024;

const byTag = { selector: { case: "tag" as const, value: TERMINAL_TAG } };

export class TerminalPanel {
  // Created on the first open, when the host is visible: xterm measures its cell size on open.
  private term: Terminal | undefined;
  private readonly fit = new FitAddon();
  private workspaceId: string | undefined;
  private abort: AbortController | undefined;
  // Input goes out only while attached (after the stream's `start`), one SendInput at a time:
  // concurrent unary calls could reach the shell out of order.
  private attached = false;
  private queue: Uint8Array[] = [];
  private sending = false;

  constructor(
    private readonly berth: BerthClient,
    private readonly host: HTMLElement,
    private readonly status: (text: string) => void,
  ) {}

  /** The workspace the panel is attached to, if any. */
  get attachedTo(): string | undefined {
    return this.attached ? this.workspaceId : undefined;
  }

  /** Whether the workspace has a running panel shell (ProcessService.List). */
  async shellRunning(workspaceId: string): Promise<boolean> {
    const { processes } = await this.berth.processes.list({ workspaceId });
    return processes.some((process) => process.tag === TERMINAL_TAG);
  }

  /**
   * Attaches to the workspace's shell, starting one when none runs. Resolves once the shell is
   * attached (its `start` event arrived); rejects with the call's error otherwise.
   */
  async open(workspaceId: string): Promise<void> {
    this.close();
    const term = this.terminal();
    term.reset();
    this.fit.fit();
    this.workspaceId = workspaceId;
    const abort = new AbortController();
    this.abort = abort;
    const running = await this.shellRunning(workspaceId);
    if (abort.signal.aborted) return;
    const events = running
      ? this.berth.processes.connect(
          { workspaceId, process: byTag, replayBytes: REPLAY_BYTES },
          { signal: abort.signal },
        )
      : this.berth.processes.start(
          {
            workspaceId,
            tag: TERMINAL_TAG,
            process: { cmd: "sh", args: [], env: {}, cwd: "", user: "" },
            pty: { cols: term.cols, rows: term.rows },
          },
          { signal: abort.signal },
        );
    const iterator = events[Symbol.asyncIterator]();
    let first: IteratorResult<{ event?: ProcessEvent }>;
    try {
      first = await iterator.next();
    } catch (err) {
      if (abort.signal.aborted) return; // closed meanwhile (another workspace was selected)
      throw err;
    }
    if (abort.signal.aborted) return;
    const started = first.done ? undefined : first.value.event?.event;
    if (started?.case !== "start") {
      throw new Error(`the shell's stream ended before it started (${started?.case ?? "no events"})`);
    }
    this.attached = true;
    const verb = running ? "re-attached to the shell of" : "started a shell in";
    this.status(`${verb} ${workspaceId} (pid ${started.value.pid})`);
    // A re-attached shell keeps the size of the page that started it: make it this panel's.
    if (running) this.sendSize(term.cols, term.rows);
    void this.pump(iterator, abort);
    term.focus();
  }

  /** Detaches (the shell keeps running in the workspace). */
  close(): void {
    this.abort?.abort();
    this.abort = undefined;
    this.attached = false;
    this.queue = [];
  }

  /** The lines of the terminal's active buffer (what the shell drew), for tests and debugging. */
  text(): string {
    const buffer = this.term?.buffer.active;
    if (!buffer) return "";
    const lines: string[] = [];
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i)?.translateToString(true) ?? "");
    return lines.join("\n").trimEnd();
  }

  /** The terminal's size in cells (0x0 before the first open). */
  size(): { cols: number; rows: number } {
    return { cols: this.term?.cols ?? 0, rows: this.term?.rows ?? 0 };
  }

  private terminal(): Terminal {
    if (this.term) return this.term;
    const term = new Terminal({ cursorBlink: true, fontSize: 13, scrollback: 2000 });
    term.loadAddon(this.fit);
    term.open(this.host);
    term.onData((data) => this.send(data));
    // Some mouse reports are bytes, not text: one char per byte.
    term.onBinary((data) => this.send(data, true));
    term.onResize(({ cols, rows }) => this.sendSize(cols, rows));
    // Fit on panel size changes; a hidden panel (no offsetParent) has no size to fit.
    new ResizeObserver(() => {
      if (this.host.offsetParent) this.fit.fit();
    }).observe(this.host);
    this.term = term;
    return term;
  }

  private async pump(events: AsyncIterator<{ event?: ProcessEvent }>, abort: AbortController): Promise<void> {
    const term = this.terminal();
    try {
      for (let next = await events.next(); !next.done; next = await events.next()) {
        const kind = next.value.event?.event;
        if (kind?.case === "data" && kind.value.output.case !== undefined) {
          term.write(kind.value.output.value);
        } else if (kind?.case === "end") {
          const why = kind.value.error ? `: ${kind.value.error}` : "";
          term.write(`\r\n[the shell ended with code ${kind.value.exitCode}${why}; Open terminal starts a new one]\r\n`);
        }
      }
    } catch (err) {
      if (!abort.signal.aborted) {
        const reason = berthErrorInfo(err)?.reason;
        const message = err instanceof Error ? err.message : String(err);
        term.write(`\r\n[${reason ? `${reason}: ` : ""}${message}]\r\n`);
      }
    } finally {
      if (this.abort === abort) this.close();
    }
  }

  private send(data: string, binary = false): void {
    if (!this.attached) return;
    const bytes = binary
      ? Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)
      : new TextEncoder().encode(data);
    this.queue.push(bytes);
    if (!this.sending) void this.flush();
  }

  // Sends the queued input, what arrived during a call going out in the next one.
  private async flush(): Promise<void> {
    this.sending = true;
    try {
      while (this.queue.length && this.attached && this.workspaceId) {
        const chunks = this.queue.splice(0);
        const value = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
        let at = 0;
        for (const c of chunks) {
          value.set(c, at);
          at += c.length;
        }
        try {
          const input = { input: { case: "pty" as const, value } };
          await this.berth.processes.sendInput({ workspaceId: this.workspaceId, process: byTag, input });
        } catch (err) {
          this.status(`input not sent: ${berthErrorInfo(err)?.reason ?? String(err)}`);
        }
      }
    } finally {
      this.sending = false;
    }
  }

  private sendSize(cols: number, rows: number): void {
    const workspaceId = this.workspaceId;
    if (!this.attached || !workspaceId) return;
    this.berth.processes.resizePty({ workspaceId, process: byTag, cols, rows }).catch((err: unknown) => {
      this.status(`terminal not resized: ${berthErrorInfo(err)?.reason ?? String(err)}`);
    });
  }
}
