// The live metrics panel of the selected workspace, fed by one WatchMetrics stream (a sample a
// second over grpc-web): charts of CPU (% of one core) and memory (working set, against the limit
// when there is one) over the last five minutes (the first minute until there is more history),
// and the latest pids, storage and limits.
//
// The stream is aborted when another workspace is selected and while the page is hidden (a tab in
// the background needs no samples, and a browser allows only a few open HTTP/1.1 connections per
// server); it is opened again when the page shows. A stream that fails or ends is reopened with a
// backoff; one that ends with WORKSPACE_NOT_FOUND (the workspace was deleted) is not. While the
// workspace is stopped the server keeps sending samples without CPU, memory and pids, which the
// charts show as a gap; storage is measured then too.

import {
  berthErrorInfo,
  type BerthClient,
  type Resources,
  type Workspace,
  type WorkspaceMetrics,
} from "@berth/sdk/web";
import { findIn } from "./actions.js";
import { LineChart, type Point } from "./chart.js";
import { describeError, formatBytes, formatTime } from "./format.js";

/** How much history the charts keep and show at most. */
const WINDOW_MS = 5 * 60_000;
/** The shortest time span a chart shows: a young history fills it, then grows to WINDOW_MS. */
const MIN_SPAN_MS = 60_000;
/** How often the server samples for this page. */
const INTERVAL_SECONDS = 1n;
/** The longest wait before reopening a failed stream. */
const MAX_RETRY_MS = 30_000;

interface Sample {
  time: number;
  cpuPercent: number | undefined;
  workingSetBytes: number | undefined;
}

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

const timestampMs = (ts: { seconds: bigint; nanos: number } | undefined) =>
  ts ? Number(ts.seconds) * 1000 + ts.nanos / 1e6 : Date.now();

function cores(millis: bigint | number): string {
  const n = Number(millis);
  return n > 0 ? `${(n / 1000).toFixed(n % 1000 ? 2 : 0)} cores` : "unlimited";
}

export class MetricsPanel {
  private workspace: Workspace | undefined;
  private samples: Sample[] = [];
  private latest: WorkspaceMetrics | undefined;
  /** The open stream's controller; undefined while none is open (hidden page, no selection). */
  private stream: AbortController | undefined;
  private readonly cpuChart;
  private readonly memoryChart;
  private readonly el;

  constructor(
    private readonly berth: BerthClient,
    root: HTMLElement,
  ) {
    const find = findIn(root, "metrics panel");
    this.el = {
      section: root,
      live: find("metrics-live"),
      cpu: find("metrics-cpu"),
      cpuLimit: find("metrics-cpu-limit"),
      throttled: find("metrics-throttled"),
      memory: find("metrics-memory"),
      memoryUsage: find("metrics-memory-usage"),
      span: find("metrics-span"),
      memoryLimit: find("metrics-memory-limit"),
      oomKills: find("metrics-oom-kills"),
      pids: find("metrics-pids"),
      rootfs: find("metrics-rootfs"),
      inodes: find("metrics-inodes"),
      data: find("metrics-data"),
      storageTime: find("metrics-storage-time"),
      unsupported: find("metrics-unsupported"),
      error: find("metrics-error"),
    };
    const chart = (id: string): SVGSVGElement => {
      const svg = root.querySelector<SVGSVGElement>(`svg#${id}`);
      if (!svg) throw new Error(`svg#${id} is missing from the metrics panel`);
      return svg;
    };
    this.cpuChart = new LineChart(chart("metrics-cpu-chart"), find("metrics-cpu-ceiling"), (v) => `${v} %`, 100);
    this.memoryChart = new LineChart(chart("metrics-memory-chart"), find("metrics-memory-ceiling"), formatBytes, 16 * 1024 ** 2);
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) this.close("paused while the page is hidden");
      else this.open();
    });
  }

  /** Shows the panel for the selected workspace (any state: a stopped one still has storage). */
  show(ws: Workspace | undefined): void {
    this.el.section.hidden = !ws;
    const changed = ws?.workspaceId !== this.workspace?.workspaceId;
    this.workspace = ws;
    if (changed) {
      this.close("");
      this.samples = [];
      this.latest = undefined;
      this.showError(undefined);
    }
    this.render();
    this.open();
  }

  private open(): void {
    const ws = this.workspace;
    if (!ws || this.stream || document.hidden) return;
    const stream = new AbortController();
    this.stream = stream;
    void this.watch(ws.workspaceId, stream.signal).finally(() => {
      if (this.stream === stream) this.stream = undefined;
    });
  }

  private close(why: string): void {
    this.stream?.abort();
    this.stream = undefined;
    this.el.live.textContent = why;
    this.el.live.dataset.live = "false";
  }

  // Reads the stream until aborted, reopening it after failures (1 s doubling to 30 s).
  private async watch(workspaceId: string, signal: AbortSignal): Promise<void> {
    let failures = 0;
    while (!signal.aborted) {
      try {
        this.el.live.textContent = "connecting…";
        const request = { workspaceId, interval: { seconds: INTERVAL_SECONDS } };
        let first = true;
        for await (const { metrics } of this.berth.workspaces.watchMetrics(request, { signal })) {
          if (!metrics) continue;
          failures = 0;
          this.showError(undefined);
          this.el.live.textContent = `live, a sample every ${INTERVAL_SECONDS} s`;
          this.el.live.dataset.live = "true";
          this.add(metrics, first);
          first = false;
        }
      } catch (err) {
        if (signal.aborted) return;
        if (berthErrorInfo(err)?.reason === "WORKSPACE_NOT_FOUND") {
          this.el.live.textContent = "the workspace is gone";
          this.el.live.dataset.live = "false";
          return;
        }
        this.showError(describeError("Watch metrics", err));
      }
      if (signal.aborted) return;
      const wait = Math.min(1000 * 2 ** failures++, MAX_RETRY_MS);
      this.el.live.textContent = `reconnecting in ${Math.round(wait / 1000)} s`;
      this.el.live.dataset.live = "false";
      await sleep(wait, signal);
    }
  }

  /** Adds a sample; the first of a reopened stream follows a gap (no line across the outage). */
  private add(metrics: WorkspaceMetrics, afterGap: boolean): void {
    const time = timestampMs(metrics.sampleTime);
    if (afterGap && this.samples.length) this.samples.push({ time, cpuPercent: undefined, workingSetBytes: undefined });
    this.samples.push({
      time,
      cpuPercent: metrics.cpu?.percentOfOneCore,
      workingSetBytes: metrics.memory ? Number(metrics.memory.workingSetBytes) : undefined,
    });
    this.samples = this.samples.filter((s) => s.time > time - WINDOW_MS);
    this.latest = metrics;
    this.render();
  }

  // ---- rendering ----

  private render(): void {
    const m = this.latest;
    const configured: Resources | undefined = this.workspace?.resources;
    const now = this.samples.at(-1)?.time ?? Date.now();
    const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - (this.samples[0]?.time ?? now)));
    const points = (pick: (s: Sample) => number | undefined): Point[] =>
      this.samples.map((s) => ({ time: s.time, value: pick(s) }));

    const memoryLimit = Number(m?.memory?.limitBytes ?? configured?.memoryBytes ?? 0);
    this.cpuChart.draw(points((s) => s.cpuPercent), span, now);
    this.memoryChart.draw(points((s) => s.workingSetBytes), span, now, memoryLimit);
    this.el.span.textContent = `last ${Math.round(span / 60_000)} min`;

    this.el.unsupported.hidden = !m || m.supported;
    this.el.unsupported.textContent = m && !m.supported ? `Not measured on this host: ${m.unsupportedReason}` : "";

    this.el.cpu.textContent = m?.cpu ? `${m.cpu.percentOfOneCore.toFixed(1)} % of one core` : "—";
    this.el.cpuLimit.textContent = cores(m?.cpu?.limitMillis ?? configured?.cpuMillis ?? 0);
    this.el.throttled.textContent = m?.cpu ? `${(Number(m.cpu.throttledNanos) / 1e9).toFixed(1)} s` : "—";

    this.el.memory.textContent = m?.memory
      ? `${formatBytes(m.memory.workingSetBytes)} working set` +
        (m.memory.limitBytes ? ` (${m.memory.percent.toFixed(1)} % of the limit)` : "")
      : "—";
    this.el.memoryUsage.textContent = m?.memory ? formatBytes(m.memory.usageBytes) : "—";
    this.el.memoryLimit.textContent = memoryLimit > 0 ? formatBytes(memoryLimit) : "unlimited";
    this.el.oomKills.textContent = m?.memory ? String(m.memory.oomKillCount) : "—";

    const pidsLimit = Number(m?.pids?.limit ?? configured?.pidsLimit ?? 0);
    this.el.pids.textContent = `${m?.pids ? String(m.pids.current) : "—"} / ${pidsLimit > 0 ? pidsLimit : "unlimited"}`;
    this.el.pids.dataset.current = m?.pids ? String(m.pids.current) : "";

    const storage = m?.storage;
    this.el.rootfs.textContent = storage ? formatBytes(storage.rootfsBytes) : "—";
    this.el.inodes.textContent = storage ? String(storage.rootfsInodes) : "—";
    this.el.data.textContent = storage ? formatBytes(storage.dataBytes) : "—";
    this.el.data.dataset.bytes = storage ? String(storage.dataBytes) : "";
    this.el.storageTime.textContent = storage ? `measured ${formatTime(storage.sampleTime)}` : "";
  }

  private showError(text: string | undefined): void {
    if (text && text !== this.el.error.textContent) console.warn(text); // once per distinct failure
    this.el.error.textContent = text ?? "";
    this.el.error.hidden = !text;
  }
}
