// Reading and writing a whole file of a workspace in one call, over FilesystemService:
// `readFile` / `readTextFile` collect a ReadFile stream, `writeFile` sends the content with the
// client-streaming WriteFile where the transport can stream requests (gRPC over HTTP/2) and with
// unary WriteFileChunk calls where it cannot (gRPC-web, browsers).

import { create } from "@bufbuild/protobuf";
import type { BerthClient } from "./client.js";
import { callWithOneRetry, concat, randomUuid } from "./internal.js";
import {
  type EntryInfo,
  ReadFileRequestSchema,
  WriteFileChunkRequestSchema,
  WriteFileRequest_HeaderSchema,
  WriteFileRequestSchema,
  type WriteFileRequest,
} from "./gen/berth/workspace/v1/filesystem_service_pb.js";

/** Bytes per WriteFile message: the size of the server's own ReadFile chunks. */
const STREAM_CHUNK_BYTES = 1 << 20;
/** Bytes per WriteFileChunk call: the largest chunk the API accepts. */
const UPLOAD_CHUNK_BYTES = 3 << 20;

/** Options of {@link readFile} and {@link readTextFile}. */
export interface ReadFileOptions {
  /** Ends the call. */
  signal?: AbortSignal;
  /** Fails the call with `Code.DeadlineExceeded` after this many milliseconds. */
  timeoutMs?: number;
}

/** Options of {@link writeFile}. */
export interface WriteFileOptions {
  /**
   * Permission bits of the file (for example `0o600`). Unset keeps the mode of the file being
   * replaced, or uses 0644 for a new file.
   */
  mode?: number;
  /**
   * The `revision` (from an {@link EntryInfo}) the file must still have: if it changed, or the
   * file is gone, the write fails with `Code.Aborted` and reason `REVISION_MISMATCH` and the file
   * is left as it was. Unset writes unconditionally.
   */
  expectedRevision?: string;
  /** Whether to create missing parent directories (mode 0755) instead of failing with PATH_NOT_FOUND. */
  createParents?: boolean;
  /** Ends the call; the file is then left as it was. */
  signal?: AbortSignal;
  /** Fails the call with `Code.DeadlineExceeded` after this many milliseconds (per call for chunked uploads). */
  timeoutMs?: number;
}

/**
 * Reads a whole regular file of a workspace (running or stopped) into memory. Failures are
 * `ConnectError`s (read them with `berthErrorInfo`): a missing file is `Code.NotFound` with reason
 * `PATH_NOT_FOUND`, a directory `Code.FailedPrecondition` with `IS_A_DIRECTORY`.
 *
 * ```ts
 * const bytes = await readFile(berth, "bot-1", "/data/model.bin");
 * ```
 */
export async function readFile(client: BerthClient, workspaceId: string, path: string, options: ReadFileOptions = {}): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let described = false;
  const request = create(ReadFileRequestSchema, { workspaceId, path });
  for await (const response of client.files.readFile(request, { signal: options.signal, timeoutMs: options.timeoutMs })) {
    switch (response.event.case) {
      case "entry":
        described = true;
        break;
      case "chunk":
        chunks.push(response.event.value);
        break;
    }
  }
  if (!described) {
    throw new Error(`ReadFile of ${JSON.stringify(path)} in ${JSON.stringify(workspaceId)} ended without describing the file`);
  }
  return concat(chunks);
}

/**
 * Reads a whole file of a workspace and decodes it as UTF-8 (invalid sequences become U+FFFD).
 * Fails like {@link readFile}.
 *
 * ```ts
 * const notes = await readTextFile(berth, "bot-1", "/data/notes.md");
 * ```
 */
export async function readTextFile(client: BerthClient, workspaceId: string, path: string, options: ReadFileOptions = {}): Promise<string> {
  return new TextDecoder().decode(await readFile(client, workspaceId, path, options));
}

/**
 * Creates or replaces a file of a workspace (running or stopped) with `data` (a string is
 * written as UTF-8) and returns the file as written, with its new `revision`. The replace is
 * atomic: readers inside the workspace see the old content or the new one, never a mix.
 *
 * Over a transport that streams requests (`transport: "grpc"`) the content goes in one WriteFile
 * stream; over gRPC-web (browsers, `@berth/sdk/web`, or `transport: "grpc-web"` in Node) in
 * WriteFileChunk calls of up to 3 MiB, each retried once when it fails with `Code.Unavailable`.
 * Failures are `ConnectError`s (read them with `berthErrorInfo`): an `expectedRevision` that no
 * longer matches is `Code.Aborted` with reason `REVISION_MISMATCH`, a missing parent directory
 * `Code.NotFound` with `PATH_NOT_FOUND`.
 *
 * ```ts
 * const entry = await writeFile(berth, "bot-1", "/data/notes.md", "# notes\n", { createParents: true });
 * await writeFile(berth, "bot-1", "/data/notes.md", "# edited\n", { expectedRevision: entry.revision });
 * ```
 */
export async function writeFile(
  client: BerthClient,
  workspaceId: string,
  path: string,
  data: string | Uint8Array,
  options: WriteFileOptions = {},
): Promise<EntryInfo> {
  const content = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const entry = client.canStreamRequests
    ? await writeStreamed(client, workspaceId, path, content, options)
    : await writeChunked(client, workspaceId, path, content, options);
  if (!entry) {
    throw new Error(`the write of ${JSON.stringify(path)} in ${JSON.stringify(workspaceId)} returned no entry`);
  }
  return entry;
}

async function writeStreamed(
  client: BerthClient,
  workspaceId: string,
  path: string,
  content: Uint8Array,
  options: WriteFileOptions,
): Promise<EntryInfo | undefined> {
  const header = create(WriteFileRequest_HeaderSchema, {
    workspaceId,
    path,
    mode: options.mode ?? 0,
    expectedRevision: options.expectedRevision ?? "",
    createParents: options.createParents ?? false,
  });
  async function* messages(): AsyncGenerator<WriteFileRequest> {
    yield create(WriteFileRequestSchema, { event: { case: "header", value: header } });
    for (let offset = 0; offset < content.length; offset += STREAM_CHUNK_BYTES) {
      // subarray shares the caller's buffer: no copy of the content.
      yield create(WriteFileRequestSchema, { event: { case: "chunk", value: content.subarray(offset, offset + STREAM_CHUNK_BYTES) } });
    }
  }
  const response = await client.files.writeFile(messages(), { signal: options.signal, timeoutMs: options.timeoutMs });
  return response.entry;
}

async function writeChunked(
  client: BerthClient,
  workspaceId: string,
  path: string,
  content: Uint8Array,
  options: WriteFileOptions,
): Promise<EntryInfo | undefined> {
  const uploadId = randomUuid();
  let offset = 0;
  for (;;) {
    const data = content.subarray(offset, offset + UPLOAD_CHUNK_BYTES);
    const last = offset + data.length >= content.length;
    // The file's path and options are read from the first chunk only; sending them with every
    // chunk keeps the requests alike and costs a few bytes.
    const request = create(WriteFileChunkRequestSchema, {
      workspaceId,
      uploadId,
      offset: BigInt(offset),
      data,
      last,
      path,
      mode: options.mode ?? 0,
      expectedRevision: options.expectedRevision ?? "",
      createParents: options.createParents ?? false,
    });
    const callOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
    const response = await callWithOneRetry(() => client.files.writeFileChunk(request, callOptions), options.signal);
    const expected = offset + data.length;
    if (response.receivedBytes !== BigInt(expected)) {
      throw new Error(`the upload of ${JSON.stringify(path)} in ${JSON.stringify(workspaceId)} stands at ${response.receivedBytes} bytes, expected ${expected}`);
    }
    if (last) {
      if (!response.done) {
        throw new Error(`the last chunk of ${JSON.stringify(path)} in ${JSON.stringify(workspaceId)} did not finish the upload`);
      }
      return response.entry;
    }
    offset = expected;
  }
}
