// Moving a directory of a workspace (/data by default) out and in as one archive (tar + gzip or
// zstd), over WorkspaceService: `exportData` yields the chunks of an ExportData stream and checks
// them against its trailer, `exportDataBytes` collects them, `importData` sends an archive with
// the client-streaming ImportData where the transport can stream requests (gRPC over HTTP/2) and
// with unary ImportDataChunk calls where it cannot (gRPC-web, browsers).

import { create } from "@bufbuild/protobuf";
import type { BerthClient } from "./client.js";
import { ArchiveFormat } from "./gen/berth/workspace/v1/workspace_pb.js";
import {
  type ExportDataResponse_Trailer,
  type ImportDataRequest,
  type ImportDataResponse,
  ExportDataRequestSchema,
  ImportDataChunkRequestSchema,
  ImportDataRequest_HeaderSchema,
  ImportDataRequestSchema,
  ImportDataResponseSchema,
} from "./gen/berth/workspace/v1/workspace_service_pb.js";
import { callWithOneRetry, concat, randomUuid } from "./internal.js";
import { Sha256 } from "./sha256.js";

/** Bytes per ImportData message: the size of the server's own ExportData chunks. */
const STREAM_CHUNK_BYTES = 1 << 20;
/** Bytes per ImportDataChunk call: the largest chunk the API accepts. */
const UPLOAD_CHUNK_BYTES = 3 << 20;

/** Options of {@link exportData} and {@link exportDataBytes}. */
export interface ExportDataOptions {
  /** Absolute path of the directory to export, inside the workspace. Unset exports `/data`. */
  path?: string;
  /** `ArchiveFormat.TAR_GZIP` (the default) or `ArchiveFormat.TAR_ZSTD`. */
  format?: ArchiveFormat;
  /** Ends the export. */
  signal?: AbortSignal;
  /** Fails the export with `Code.DeadlineExceeded` after this many milliseconds. */
  timeoutMs?: number;
  /** Called after each chunk with the archive bytes received so far. */
  onProgress?: (receivedBytes: number) => void;
}

/** Options of {@link importData}. */
export interface ImportDataOptions {
  /**
   * Absolute path of the directory to extract into, inside the workspace; created if missing.
   * Unset imports into `/data`.
   */
  path?: string;
  /**
   * `ArchiveFormat.TAR_GZIP` or `ArchiveFormat.TAR_ZSTD`. Unset, the archive's first bytes say
   * (zstd's magic number, else gzip).
   */
  format?: ArchiveFormat;
  /**
   * Whether the directory ends up holding exactly the archive's contents (swapped in once the
   * whole archive is extracted). When false, entries replace those of the same path and other
   * files stay.
   */
  replace?: boolean;
  /**
   * The archive's expected SHA-256 (64 lowercase hex characters, as an export's trailer has it).
   * The server checks it before anything becomes visible: a different archive fails with
   * `Code.InvalidArgument` and reason `CHECKSUM_MISMATCH` and changes nothing. Unset skips the
   * check.
   */
  sha256?: string;
  /** Ends the import; the directory is then left as it was. */
  signal?: AbortSignal;
  /** Fails the import with `Code.DeadlineExceeded` after this many milliseconds (per call for chunked uploads). */
  timeoutMs?: number;
  /**
   * Called as the archive goes out with the bytes sent so far and the archive's size (undefined
   * for a stream). Over gRPC-web it counts chunks the server acknowledged.
   */
  onProgress?: (sentBytes: number, totalBytes: number | undefined) => void;
}

/**
 * What {@link importData} accepts as the archive: bytes, a `Blob` (a `File` from a file picker),
 * a web `ReadableStream`, or any (async) iterable of byte chunks, such as a Node.js
 * `fs.createReadStream(...)`.
 */
export type ArchiveSource = Uint8Array | Blob | ReadableStream<Uint8Array> | AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

/**
 * An export's chunks did not add up to what its trailer says: the archive received is incomplete
 * or corrupt and must be discarded. Nothing on the server is wrong; export again.
 */
export class ArchiveIntegrityError extends Error {
  override readonly name = "ArchiveIntegrityError";

  constructor(
    message: string,
    /** The trailer's size and SHA-256 (undefined when the stream ended without a trailer). */
    readonly expected: { sizeBytes: bigint; sha256: string } | undefined,
    /** The size and SHA-256 of the bytes received. */
    readonly received: { sizeBytes: bigint; sha256: string },
  ) {
    super(message);
  }
}

/**
 * The chunks of an export, as an async iterable: iterate it once (the export starts then), and
 * after the iteration ended `trailer` holds the checked trailer.
 */
export interface DataExport extends AsyncIterable<Uint8Array> {
  /**
   * The export's trailer (archive size, SHA-256, entry count) once the iteration has ended and
   * the received bytes matched it; undefined before.
   */
  readonly trailer: ExportDataResponse_Trailer | undefined;
}

/**
 * Exports a directory of a workspace (running or stopped; `/data` unless `options.path` says
 * otherwise) as a tar archive compressed with gzip (or zstd): yields the archive's chunks (at
 * most 1 MiB each) as they arrive. The iteration ends after the trailer, once the size and the
 * SHA-256 of the bytes received are checked against it; a mismatch, or a stream ended without a
 * trailer, throws an {@link ArchiveIntegrityError} instead. Breaking out of the loop cancels the
 * export. Failures of the call are `ConnectError`s (read them with `berthErrorInfo`): a missing
 * directory is `Code.NotFound` with reason `PATH_NOT_FOUND`.
 *
 * ```ts
 * import { createWriteStream } from "node:fs";
 * import { pipeline } from "node:stream/promises";
 *
 * const archive = exportData(berth, "bot-1");
 * await pipeline(archive, createWriteStream("bot-1-data.tar.gz"));
 * console.log(`${archive.trailer?.sizeBytes} bytes, sha256 ${archive.trailer?.sha256}`);
 * ```
 */
export function exportData(client: BerthClient, workspaceId: string, options: ExportDataOptions = {}): DataExport {
  let trailer: ExportDataResponse_Trailer | undefined;
  let started = false;
  async function* chunks(): AsyncGenerator<Uint8Array> {
    const request = create(ExportDataRequestSchema, { workspaceId, path: options.path ?? "", format: options.format });
    const hash = new Sha256();
    let received = 0;
    let ended: ExportDataResponse_Trailer | undefined;
    for await (const response of client.workspaces.exportData(request, { signal: options.signal, timeoutMs: options.timeoutMs })) {
      const event = response.event;
      if (event.case === "chunk") {
        if (ended) {
          throw integrityError(workspaceId, "sent archive bytes after its trailer", ended, received, hash);
        }
        hash.update(event.value);
        received += event.value.length;
        options.onProgress?.(received);
        yield event.value;
      } else if (event.case === "trailer") {
        ended = event.value;
      }
    }
    if (!ended) {
      throw integrityError(workspaceId, "ended without its trailer", undefined, received, hash);
    }
    const actual = hash.hex();
    if (ended.sizeBytes !== BigInt(received) || ended.sha256 !== actual) {
      throw new ArchiveIntegrityError(
        `the export of ${JSON.stringify(workspaceId)} is corrupt: received ${received} bytes with sha256 ${actual}, ` +
          `the trailer says ${ended.sizeBytes} bytes with sha256 ${ended.sha256}; discard it and export again`,
        { sizeBytes: ended.sizeBytes, sha256: ended.sha256 },
        { sizeBytes: BigInt(received), sha256: actual },
      );
    }
    trailer = ended;
  }
  return {
    get trailer() {
      return trailer;
    },
    [Symbol.asyncIterator]() {
      if (started) {
        throw new Error("an export can be iterated once: call exportData again for another archive");
      }
      started = true;
      return chunks();
    },
  };
}

function integrityError(
  workspaceId: string,
  what: string,
  trailer: ExportDataResponse_Trailer | undefined,
  received: number,
  hash: Sha256,
): ArchiveIntegrityError {
  return new ArchiveIntegrityError(
    `the export of ${JSON.stringify(workspaceId)} ${what} after ${received} bytes; discard what was received and export again`,
    trailer && { sizeBytes: trailer.sizeBytes, sha256: trailer.sha256 },
    { sizeBytes: BigInt(received), sha256: hash.hex() },
  );
}

/**
 * Exports a directory of a workspace like {@link exportData} and returns the whole archive in
 * memory, with its checked trailer.
 *
 * ```ts
 * const { archive, trailer } = await exportDataBytes(berth, "bot-1", { path: "/data/project" });
 * ```
 */
export async function exportDataBytes(
  client: BerthClient,
  workspaceId: string,
  options: ExportDataOptions = {},
): Promise<{ archive: Uint8Array; trailer: ExportDataResponse_Trailer }> {
  const chunks: Uint8Array[] = [];
  const exported = exportData(client, workspaceId, options);
  for await (const chunk of exported) {
    chunks.push(chunk);
  }
  return { archive: chunks.length ? concat(chunks) : new Uint8Array(), trailer: exported.trailer! };
}

/**
 * Extracts an archive (tar + gzip or zstd, as {@link exportData} makes it; unless
 * `options.format` says which, the archive's first bytes do) into a directory of a workspace,
 * running or stopped (`/data` unless `options.path` says otherwise), and returns what the
 * server received: the archive's size, SHA-256 and the number of entries extracted. Extraction is path-safe (no `..`, absolute names or writes
 * through symlinks; device nodes and FIFOs are refused) and nothing becomes visible before the
 * whole archive arrived and checked out.
 *
 * Over a transport that streams requests (`transport: "grpc"`) the archive goes in one
 * ImportData stream of 1 MiB messages; over gRPC-web (browsers, `@berth/sdk/web`, or
 * `transport: "grpc-web"` in Node) in ImportDataChunk calls of up to 3 MiB under one upload id,
 * each retried once when it fails with `Code.Unavailable`. Failures are `ConnectError`s (read
 * them with `berthErrorInfo`): a `sha256` that does not match is `Code.InvalidArgument` with
 * reason `CHECKSUM_MISMATCH`, an archive with unsafe entries `Code.FailedPrecondition` with
 * `DATA_ARCHIVE_FAILED`, one past the server's limits `Code.ResourceExhausted` with
 * `RESOURCE_LIMIT_EXCEEDED`.
 *
 * ```ts
 * const { archive, trailer } = await exportDataBytes(berth, "bot-1");
 * await importData(berth, "bot-2", archive, { replace: true, sha256: trailer.sha256 });
 * await importData(berth, "bot-3", createReadStream("backup.tar.gz"), { path: "/data/restored" });
 * ```
 */
export async function importData(
  client: BerthClient,
  workspaceId: string,
  archive: ArchiveSource,
  options: ImportDataOptions = {},
): Promise<ImportDataResponse> {
  return client.canStreamRequests
    ? await importStreamed(client, workspaceId, archive, options)
    : await importChunked(client, workspaceId, archive, options);
}

async function importStreamed(
  client: BerthClient,
  workspaceId: string,
  archive: ArchiveSource,
  options: ImportDataOptions,
): Promise<ImportDataResponse> {
  const total = sizeOf(archive);
  // Connect turns an error thrown by the request iterable into a bare INTERNAL (aborting the
  // call, so the server discards what it got): the archive's own error is rethrown instead.
  let sourceError: { error: unknown } | undefined;
  async function* messages(): AsyncGenerator<ImportDataRequest> {
    const chunks = rechunk(piecesOf(archive), STREAM_CHUNK_BYTES)[Symbol.asyncIterator]();
    const read = async () => {
      try {
        return await chunks.next();
      } catch (error) {
        sourceError = { error };
        throw error;
      }
    };
    // The first chunk comes before the header, which names the format it shows.
    let next = await read();
    const header = create(ImportDataRequest_HeaderSchema, {
      workspaceId,
      path: options.path ?? "",
      format: formatOf(options.format, next.done ? undefined : next.value),
      replace: options.replace ?? false,
      sha256: options.sha256 ?? "",
    });
    yield create(ImportDataRequestSchema, { event: { case: "header", value: header } });
    let sent = 0;
    for (; !next.done; next = await read()) {
      yield create(ImportDataRequestSchema, { event: { case: "chunk", value: next.value } });
      sent += next.value.length;
      options.onProgress?.(sent, total);
    }
  }
  try {
    return await client.workspaces.importData(messages(), { signal: options.signal, timeoutMs: options.timeoutMs });
  } catch (err) {
    throw sourceError ? sourceError.error : err;
  }
}

async function importChunked(
  client: BerthClient,
  workspaceId: string,
  archive: ArchiveSource,
  options: ImportDataOptions,
): Promise<ImportDataResponse> {
  const uploadId = randomUuid();
  const total = sizeOf(archive);
  const callOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
  const chunks = rechunk(piecesOf(archive), UPLOAD_CHUNK_BYTES)[Symbol.asyncIterator]();
  // One chunk ahead, to know which one is the last.
  let next = await chunks.next();
  const format = formatOf(options.format, next.done ? undefined : next.value);
  let offset = 0;
  for (;;) {
    const data = next.done ? new Uint8Array() : next.value;
    next = next.done ? next : await chunks.next();
    const last = next.done === true;
    // Where and how to import are read from the first chunk only; sending them with every chunk
    // keeps the requests alike and costs a few bytes.
    const request = create(ImportDataChunkRequestSchema, {
      workspaceId,
      uploadId,
      offset: BigInt(offset),
      data,
      last,
      format,
      path: options.path ?? "",
      replace: options.replace ?? false,
      sha256: options.sha256 ?? "",
    });
    const response = await callWithOneRetry(() => client.workspaces.importDataChunk(request, callOptions), options.signal);
    const expected = offset + data.length;
    if (response.receivedBytes !== BigInt(expected)) {
      throw new Error(`the import into ${JSON.stringify(workspaceId)} stands at ${response.receivedBytes} bytes, expected ${expected}`);
    }
    options.onProgress?.(expected, total);
    if (last) {
      if (!response.done) {
        throw new Error(`the last chunk of the import into ${JSON.stringify(workspaceId)} did not finish it`);
      }
      return create(ImportDataResponseSchema, {
        sizeBytes: response.receivedBytes,
        sha256: response.sha256,
        entryCount: response.entryCount,
      });
    }
    offset = expected;
  }
}

/** zstd's frame magic number, 0xFD2FB528 little-endian. */
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];

/** The requested format, or when unset the one the archive's first bytes show. */
function formatOf(requested: ArchiveFormat | undefined, first: Uint8Array | undefined): ArchiveFormat {
  if (requested !== undefined && requested !== ArchiveFormat.UNSPECIFIED) return requested;
  const zstd = first !== undefined && ZSTD_MAGIC.every((byte, i) => first[i] === byte);
  return zstd ? ArchiveFormat.TAR_ZSTD : ArchiveFormat.TAR_GZIP;
}

function sizeOf(archive: ArchiveSource): number | undefined {
  if (archive instanceof Uint8Array) return archive.length;
  if (typeof Blob !== "undefined" && archive instanceof Blob) return archive.size;
  return undefined;
}

/** The archive's bytes in the pieces the source gives them. */
async function* piecesOf(archive: ArchiveSource): AsyncGenerator<Uint8Array> {
  if (archive instanceof Uint8Array) {
    yield archive;
  } else if (typeof Blob !== "undefined" && archive instanceof Blob) {
    // Slices of the upload size: a picked file is read as it goes out, never whole.
    for (let offset = 0; offset < archive.size; offset += UPLOAD_CHUNK_BYTES) {
      yield new Uint8Array(await archive.slice(offset, offset + UPLOAD_CHUNK_BYTES).arrayBuffer());
    }
  } else if (typeof ReadableStream !== "undefined" && archive instanceof ReadableStream) {
    // Not every browser makes a ReadableStream async-iterable yet.
    const reader = archive.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        yield value;
      }
    } finally {
      reader.releaseLock();
    }
  } else if (Symbol.asyncIterator in archive) {
    yield* archive;
  } else {
    yield* archive as Iterable<Uint8Array>;
  }
}

/** Regroups pieces into chunks of exactly `size` bytes (the last one shorter), copying only to join small pieces. */
async function* rechunk(pieces: AsyncIterable<Uint8Array>, size: number): AsyncGenerator<Uint8Array> {
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  for await (const piece of pieces) {
    let rest = piece;
    while (rest.length > 0) {
      if (pendingBytes === 0 && rest.length >= size) {
        yield rest.subarray(0, size);
        rest = rest.subarray(size);
        continue;
      }
      const take = Math.min(size - pendingBytes, rest.length);
      pending.push(rest.subarray(0, take));
      pendingBytes += take;
      rest = rest.subarray(take);
      if (pendingBytes === size) {
        yield concat(pending);
        pending = [];
        pendingBytes = 0;
      }
    }
  }
  if (pendingBytes > 0) {
    yield concat(pending);
  }
}
