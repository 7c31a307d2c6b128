// Helpers the SDK's modules share; not exported from the package.

import { Code, ConnectError } from "@connectrpc/connect";

/** A random (version 4) UUID; `crypto.randomUUID` exists only in secure browser contexts. */
export function randomUuid(): string {
  if (typeof globalThis.crypto.randomUUID === "function") {
    return globalThis.crypto.randomUUID();
  }
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/**
 * Makes one unary upload call; a call that failed with UNAVAILABLE is made once more (chunk
 * uploads are retry-safe: the server acknowledges a chunk it already has without effect).
 */
export async function callWithOneRetry<T>(call: () => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  try {
    return await call();
  } catch (err) {
    if (!(err instanceof ConnectError) || err.code !== Code.Unavailable || signal?.aborted) {
      throw err;
    }
    return await call();
  }
}

export function concat(chunks: Uint8Array[]): Uint8Array {
  if (chunks.length === 1) {
    return chunks[0]!;
  }
  const out = new Uint8Array(chunks.reduce((total, chunk) => total + chunk.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}
