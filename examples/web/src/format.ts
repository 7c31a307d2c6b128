// How the page words things: a failed action (the gRPC status code, the ErrorInfo reason and the
// message of a berth call, or the text of any other error), byte counts, times and digests.

import { berthErrorInfo } from "@berth/sdk/web";

/** `Save /data/f failed: ABORTED REVISION_MISMATCH: …`, for the page's error boxes. */
export function describeError(action: string, err: unknown): string {
  const info = berthErrorInfo(err);
  if (!info) return `${action} failed: ${err instanceof Error ? err.message : String(err)}`;
  return `${action} failed: ${info.codeName}${info.reason ? ` ${info.reason}` : ""}: ${info.message}`;
}

/** A byte count for people: `512 B`, `3.0 MiB`. */
export function formatBytes(n: bigint | number): string {
  const x = Number(n);
  if (x < 1024) return `${x} B`;
  if (x < 1024 ** 2) return `${(x / 1024).toFixed(1)} KiB`;
  if (x < 1024 ** 3) return `${(x / 1024 ** 2).toFixed(1)} MiB`;
  return `${(x / 1024 ** 3).toFixed(2)} GiB`;
}

/** A protobuf Timestamp in the reader's locale, or `—` when unset. */
export function formatTime(ts: { seconds: bigint; nanos: number } | undefined): string {
  if (!ts) return "—";
  return new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6)).toLocaleString();
}

/** `sha256:0123456789ab`: enough of a digest or chain id to tell them apart on screen. */
export function shortDigest(digest: string): string {
  return digest.replace(/^(sha256:)?([0-9a-f]{12})[0-9a-f]+$/, "$1$2");
}
