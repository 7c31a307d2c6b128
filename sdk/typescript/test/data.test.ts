// What exportData checks and what importData sends, over an in-memory WorkspaceService
// (Connect's router transport): trailers that do not match the bytes, the ImportData stream where
// requests can stream, ImportDataChunk uploads (with one retry on UNAVAILABLE) where they cannot;
// and the SDK's SHA-256 against node:crypto. The live-server tests are in workspace.test.ts.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { describe, test } from "node:test";
import { createRouterTransport } from "@connectrpc/connect";
import {
  ArchiveFormat,
  ArchiveIntegrityError,
  berthErrorInfo,
  Code,
  ConnectError,
  createBerthClientFromTransport,
  exportData,
  exportDataBytes,
  importData,
  Sha256,
  WorkspaceService,
  type ExportDataRequest,
  type ImportDataChunkRequest,
  type ImportDataRequest_Header,
} from "@berth/sdk";

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

describe("Sha256", () => {
  test("equals node:crypto for every length around the block boundaries", () => {
    const data = randomBytes(300);
    for (let length = 0; length <= 300; length++) {
      const slice = data.subarray(0, length);
      assert.equal(new Sha256().update(slice).hex(), sha256(slice), `${length} bytes`);
    }
    assert.equal(new Sha256().hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  });

  test("equals node:crypto over chunks split anywhere", () => {
    const data = randomBytes((5 << 20) + 77);
    const hash = new Sha256();
    for (let at = 0; at < data.length; ) {
      const n = Math.min(data.length - at, 1 + Math.floor(Math.random() * 200_000));
      hash.update(data.subarray(at, at + n));
      at += n;
    }
    assert.equal(hash.hex(), sha256(data));
  });
});

interface Trailer {
  sizeBytes: bigint;
  sha256: string;
  entryCount: bigint;
}

/** A WorkspaceService whose ExportData sends `archive` in 1 MiB chunks, then `trailer` (unless null). */
function exportTransport(archive: Uint8Array, trailer: (real: Trailer) => Trailer | null, extraChunk?: Uint8Array) {
  const requests: ExportDataRequest[] = [];
  const transport = createRouterTransport(({ service }) => {
    service(WorkspaceService, {
      async *exportData(request) {
        requests.push(request);
        for (let offset = 0; offset < archive.length; offset += 1 << 20) {
          yield { event: { case: "chunk", value: archive.subarray(offset, offset + (1 << 20)) } };
        }
        const sent = trailer({ sizeBytes: BigInt(archive.length), sha256: sha256(archive), entryCount: 3n });
        if (sent) yield { event: { case: "trailer", value: sent } };
        if (extraChunk) yield { event: { case: "chunk", value: extraChunk } };
      },
    });
  });
  return { client: createBerthClientFromTransport(transport), requests };
}

describe("exportData over an in-memory server", () => {
  test("yields the chunks and, after them, the checked trailer", async () => {
    const archive = randomBytes((2 << 20) + 9);
    const { client, requests } = exportTransport(archive, (real) => real);
    const progress: number[] = [];
    const exported = exportData(client, "bot-1", { path: "/data/sub", format: ArchiveFormat.TAR_ZSTD, onProgress: (n) => progress.push(n) });
    const chunks: Uint8Array[] = [];
    for await (const chunk of exported) {
      assert.equal(exported.trailer, undefined, "no trailer before the end");
      chunks.push(chunk);
    }
    assert.deepEqual(chunks.map((c) => c.length), [1 << 20, 1 << 20, 9]);
    assert.ok(Buffer.concat(chunks).equals(archive));
    assert.deepEqual(progress, [1 << 20, 2 << 20, (2 << 20) + 9]);
    assert.equal(exported.trailer?.sizeBytes, BigInt(archive.length));
    assert.equal(exported.trailer?.entryCount, 3n);
    assert.equal(requests[0]?.workspaceId, "bot-1");
    assert.equal(requests[0]?.path, "/data/sub");
    assert.equal(requests[0]?.format, ArchiveFormat.TAR_ZSTD);
    assert.throws(() => exported[Symbol.asyncIterator](), /iterated once/);

    const { archive: all, trailer } = await exportDataBytes(client, "bot-1");
    assert.ok(Buffer.from(all).equals(archive));
    assert.equal(trailer.sha256, sha256(archive));
    assert.equal(requests[1]?.path, "", "no path: the server's default (/data)");
    assert.equal(requests[1]?.format, ArchiveFormat.UNSPECIFIED);
  });

  test("a trailer whose SHA-256 differs from the bytes received throws ArchiveIntegrityError", async () => {
    const archive = randomBytes(1000);
    const wrong = "0".repeat(64);
    const { client } = exportTransport(archive, (real) => ({ ...real, sha256: wrong }));
    await assert.rejects(exportDataBytes(client, "bot-1"), (err: unknown) => {
      assert.ok(err instanceof ArchiveIntegrityError, String(err));
      assert.deepEqual(err.expected, { sizeBytes: 1000n, sha256: wrong });
      assert.deepEqual(err.received, { sizeBytes: 1000n, sha256: sha256(archive) });
      assert.match(err.message, /is corrupt: received 1000 bytes with sha256 [0-9a-f]{64}, the trailer says 1000 bytes with sha256 0{64}; discard it/);
      return true;
    });
  });

  test("a trailer whose size differs, a missing trailer and bytes after it throw too", async () => {
    const archive = randomBytes(5000);
    const shorter = exportTransport(archive, (real) => ({ ...real, sizeBytes: real.sizeBytes - 1n }));
    await assert.rejects(exportDataBytes(shorter.client, "bot-1"), (err: unknown) => {
      assert.ok(err instanceof ArchiveIntegrityError);
      assert.equal(err.expected?.sizeBytes, 4999n);
      assert.equal(err.received.sizeBytes, 5000n);
      return true;
    });
    const cut = exportTransport(archive, () => null);
    await assert.rejects(exportDataBytes(cut.client, "bot-1"), (err: unknown) => {
      assert.ok(err instanceof ArchiveIntegrityError);
      assert.equal(err.expected, undefined);
      assert.match(err.message, /ended without its trailer after 5000 bytes/);
      return true;
    });
    const trailing = exportTransport(archive, (real) => real, new Uint8Array([1]));
    await assert.rejects(exportDataBytes(trailing.client, "bot-1"), /sent archive bytes after its trailer/);
  });
});

interface ImportRecord {
  header?: ImportDataRequest_Header;
  streamChunks: number[];
  uploadCalls: ImportDataChunkRequest[];
  archive: Uint8Array;
}

/** A WorkspaceService receiving imports; the first `failChunkCalls` ImportDataChunk calls fail with UNAVAILABLE. */
function importTransport(recorded: ImportRecord, failChunkCalls = 0) {
  let received: Uint8Array[] = [];
  let failures = failChunkCalls;
  return createRouterTransport(({ service }) => {
    service(WorkspaceService, {
      async importData(requests) {
        const parts: Uint8Array[] = [];
        for await (const request of requests) {
          if (request.event.case === "header") recorded.header = request.event.value;
          if (request.event.case === "chunk") {
            recorded.streamChunks.push(request.event.value.length);
            parts.push(request.event.value);
          }
        }
        recorded.archive = Buffer.concat(parts);
        return { sizeBytes: BigInt(recorded.archive.length), sha256: sha256(recorded.archive), entryCount: 7n };
      },
      async importDataChunk(request) {
        recorded.uploadCalls.push(request);
        if (failures > 0) {
          failures--;
          throw new ConnectError("try again", Code.Unavailable);
        }
        const receivedBytes = received.reduce((n, c) => n + c.length, 0);
        if (request.offset < BigInt(receivedBytes)) {
          // A chunk sent again: acknowledged without effect.
          return { receivedBytes: BigInt(receivedBytes) };
        }
        received.push(request.data);
        const total = BigInt(receivedBytes + request.data.length);
        if (!request.last) return { receivedBytes: total };
        recorded.archive = Buffer.concat(received);
        received = [];
        return { receivedBytes: total, done: true, sha256: sha256(recorded.archive), entryCount: 8n };
      },
    });
  });
}

const emptyRecord = (): ImportRecord => ({ streamChunks: [], uploadCalls: [], archive: new Uint8Array() });

describe("importData over an in-memory server", () => {
  test("streams a header and 1 MiB chunks when requests can stream", async () => {
    const recorded = emptyRecord();
    const client = createBerthClientFromTransport(importTransport(recorded), { canStreamRequests: true });
    const archive = randomBytes((2 << 20) + 5);
    const progress: [number, number | undefined][] = [];
    const response = await importData(client, "bot-1", archive, {
      path: "/data/in",
      format: ArchiveFormat.TAR_ZSTD,
      replace: true,
      sha256: sha256(archive),
      onProgress: (sent, total) => progress.push([sent, total]),
    });
    assert.equal(response.sizeBytes, BigInt(archive.length));
    assert.equal(response.entryCount, 7n);
    assert.deepEqual(recorded.streamChunks, [1 << 20, 1 << 20, 5]);
    assert.ok(Buffer.from(recorded.archive).equals(archive));
    assert.equal(recorded.uploadCalls.length, 0);
    assert.equal(recorded.header?.workspaceId, "bot-1");
    assert.equal(recorded.header?.path, "/data/in");
    assert.equal(recorded.header?.format, ArchiveFormat.TAR_ZSTD);
    assert.equal(recorded.header?.replace, true);
    assert.equal(recorded.header?.sha256, sha256(archive));
    assert.deepEqual(progress.at(-1), [archive.length, archive.length]);
  });

  test("regroups a Node stream's small pieces into 1 MiB messages", async () => {
    const recorded = emptyRecord();
    const client = createBerthClientFromTransport(importTransport(recorded), { canStreamRequests: true });
    const archive = randomBytes((1 << 20) * 2 + 100);
    const pieces = Array.from({ length: Math.ceil(archive.length / 65536) }, (_, i) => archive.subarray(i * 65536, (i + 1) * 65536));
    await importData(client, "bot-1", Readable.from(pieces));
    assert.deepEqual(recorded.streamChunks, [1 << 20, 1 << 20, 100]);
    assert.ok(Buffer.from(recorded.archive).equals(archive));
    assert.equal(recorded.header?.path, "", "no path: the server's default (/data)");
    assert.equal(recorded.header?.replace, false);
    assert.equal(recorded.header?.format, ArchiveFormat.TAR_GZIP, "not zstd's magic number: gzip");
  });

  test("without a format, zstd's magic number in the first bytes means TAR_ZSTD", async () => {
    const zstdLike = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), randomBytes(100)]);
    const streamed = emptyRecord();
    await importData(createBerthClientFromTransport(importTransport(streamed), { canStreamRequests: true }), "bot-1", zstdLike);
    assert.equal(streamed.header?.format, ArchiveFormat.TAR_ZSTD);
    const chunked = emptyRecord();
    await importData(createBerthClientFromTransport(importTransport(chunked)), "bot-1", new Blob([zstdLike]));
    assert.equal(chunked.uploadCalls[0]?.format, ArchiveFormat.TAR_ZSTD);
    // An explicit format wins over the bytes.
    await importData(createBerthClientFromTransport(importTransport(streamed), { canStreamRequests: true }), "bot-1", zstdLike, {
      format: ArchiveFormat.TAR_GZIP,
    });
    assert.equal(streamed.header?.format, ArchiveFormat.TAR_GZIP);
  });

  test("uploads 3 MiB ImportDataChunk calls otherwise, from a Blob, retrying one UNAVAILABLE", async () => {
    const recorded = emptyRecord();
    const client = createBerthClientFromTransport(importTransport(recorded, 1));
    assert.equal(client.canStreamRequests, false);
    const archive = randomBytes((6 << 20) + 7);
    const progress: number[] = [];
    const response = await importData(client, "bot-1", new Blob([archive]), {
      path: "/data/in",
      sha256: "ab".repeat(32),
      onProgress: (sent, total) => {
        assert.equal(total, archive.length);
        progress.push(sent);
      },
    });
    assert.equal(response.sizeBytes, BigInt(archive.length));
    assert.equal(response.sha256, sha256(archive));
    assert.equal(response.entryCount, 8n);
    assert.ok(Buffer.from(recorded.archive).equals(archive), "the server received the archive");
    // The first call failed with UNAVAILABLE and was sent again.
    assert.deepEqual(recorded.uploadCalls.map((c) => [c.offset, c.data.length, c.last]), [
      [0n, 3 << 20, false],
      [0n, 3 << 20, false],
      [BigInt(3 << 20), 3 << 20, false],
      [BigInt(6 << 20), 7, true],
    ]);
    assert.deepEqual(progress, [3 << 20, 6 << 20, (6 << 20) + 7]);
    const ids = new Set(recorded.uploadCalls.map((c) => c.uploadId));
    assert.equal(ids.size, 1, "one upload id");
    assert.match([...ids][0]!, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.ok(recorded.uploadCalls.every((c) => c.workspaceId === "bot-1" && c.path === "/data/in" && c.sha256 === "ab".repeat(32)));
  });

  test("an archive whose source fails rejects with the source's error, on both paths", async () => {
    async function* broken() {
      yield randomBytes(10);
      throw new Error("the disk went away");
    }
    for (const canStreamRequests of [true, false]) {
      const client = createBerthClientFromTransport(importTransport(emptyRecord()), { canStreamRequests });
      await assert.rejects(importData(client, "bot-1", broken()), /^Error: the disk went away$/, `canStreamRequests ${canStreamRequests}`);
    }
  });

  test("an archive of exactly 3 MiB is one last chunk; a second UNAVAILABLE fails the import", async () => {
    const recorded = emptyRecord();
    const client = createBerthClientFromTransport(importTransport(recorded));
    await importData(client, "bot-1", randomBytes(3 << 20));
    assert.deepEqual(recorded.uploadCalls.map((c) => [c.offset, c.data.length, c.last]), [[0n, 3 << 20, true]]);

    const failing = createBerthClientFromTransport(importTransport(emptyRecord(), 2));
    await assert.rejects(importData(failing, "bot-1", randomBytes(10)), (err: unknown) => {
      assert.equal(berthErrorInfo(err)?.code, Code.Unavailable);
      return true;
    });
  });
});
