// What writeFile sends, over an in-memory FilesystemService (Connect's router transport): the
// WriteFile stream where requests can stream, WriteFileChunk uploads (with one retry on
// UNAVAILABLE) where they cannot. The live-server tests are in workspace.test.ts.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { createRouterTransport } from "@connectrpc/connect";
import {
  berthErrorInfo,
  Code,
  ConnectError,
  createBerthClientFromTransport,
  EntryInfoSchema,
  FilesystemService,
  readFile,
  writeFile,
  type WriteFileChunkRequest,
  type WriteFileRequest_Header,
} from "@berth/sdk";

interface Recorded {
  header?: WriteFileRequest_Header;
  streamChunks: number[];
  uploadCalls: WriteFileChunkRequest[];
  content: Uint8Array;
}

/** A FilesystemService keeping one file; the first `failChunkCalls` WriteFileChunk calls fail with UNAVAILABLE. */
function fakeTransport(recorded: Recorded, failChunkCalls = 0) {
  let received: Uint8Array[] = [];
  let failures = failChunkCalls;
  return createRouterTransport(({ service }) => {
    service(FilesystemService, {
      async writeFile(requests) {
        const parts: Uint8Array[] = [];
        for await (const request of requests) {
          if (request.event.case === "header") recorded.header = request.event.value;
          if (request.event.case === "chunk") {
            recorded.streamChunks.push(request.event.value.length);
            parts.push(request.event.value);
          }
        }
        recorded.content = Buffer.concat(parts);
        return { entry: create(EntryInfoSchema, { path: recorded.header?.path, sizeBytes: BigInt(recorded.content.length), revision: "r1" }) };
      },
      async writeFileChunk(request) {
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
        recorded.content = Buffer.concat(received);
        received = [];
        return { receivedBytes: total, done: true, entry: create(EntryInfoSchema, { path: request.path, sizeBytes: total, revision: "r2" }) };
      },
      async *readFile(request) {
        if (request.path !== "/data/f") throw new ConnectError("no such file", Code.NotFound);
        yield { event: { case: "entry", value: create(EntryInfoSchema, { sizeBytes: BigInt(recorded.content.length) }) } };
        for (let offset = 0; offset < recorded.content.length; offset += 1 << 20) {
          yield { event: { case: "chunk", value: recorded.content.subarray(offset, offset + (1 << 20)) } };
        }
      },
    });
  });
}

const emptyRecord = (): Recorded => ({ streamChunks: [], uploadCalls: [], content: new Uint8Array() });

describe("writeFile over an in-memory server", () => {
  test("streams a header and 1 MiB chunks when requests can stream", async () => {
    const recorded = emptyRecord();
    const client = createBerthClientFromTransport(fakeTransport(recorded), { canStreamRequests: true });
    const payload = randomBytes((2 << 20) + 5);
    const entry = await writeFile(client, "bot-1", "/data/f", payload, { mode: 0o640, expectedRevision: "r0", createParents: true });
    assert.equal(entry.revision, "r1");
    assert.deepEqual(recorded.streamChunks, [1 << 20, 1 << 20, 5]);
    assert.equal(recorded.uploadCalls.length, 0);
    assert.equal(recorded.header?.workspaceId, "bot-1");
    assert.equal(recorded.header?.mode, 0o640);
    assert.equal(recorded.header?.expectedRevision, "r0");
    assert.equal(recorded.header?.createParents, true);
    assert.ok(Buffer.from(await readFile(client, "bot-1", "/data/f")).equals(payload));
  });

  test("uploads 3 MiB WriteFileChunk calls otherwise, retrying one UNAVAILABLE", async () => {
    const recorded = emptyRecord();
    const client = createBerthClientFromTransport(fakeTransport(recorded, 1));
    assert.equal(client.canStreamRequests, false);
    const payload = randomBytes((6 << 20) + 7);
    const entry = await writeFile(client, "bot-1", "/data/f", payload, { expectedRevision: "r1" });
    assert.equal(entry.revision, "r2");
    assert.ok(Buffer.from(recorded.content).equals(payload), "the server received the payload");
    const calls = recorded.uploadCalls.map((c) => [c.offset, c.data.length, c.last]);
    // The first call failed with UNAVAILABLE and was sent again.
    assert.deepEqual(calls, [
      [0n, 3 << 20, false],
      [0n, 3 << 20, false],
      [BigInt(3 << 20), 3 << 20, false],
      [BigInt(6 << 20), 7, true],
    ]);
    const ids = new Set(recorded.uploadCalls.map((c) => c.uploadId));
    assert.equal(ids.size, 1, "one upload id");
    assert.match([...ids][0]!, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.ok(recorded.uploadCalls.every((c) => c.path === "/data/f" && c.expectedRevision === "r1"));
  });

  test("an empty file is one last chunk; a second UNAVAILABLE fails the write", async () => {
    const recorded = emptyRecord();
    const client = createBerthClientFromTransport(fakeTransport(recorded));
    await writeFile(client, "bot-1", "/data/f", "");
    assert.deepEqual(recorded.uploadCalls.map((c) => [c.offset, c.data.length, c.last]), [[0n, 0, true]]);

    const failing = createBerthClientFromTransport(fakeTransport(emptyRecord(), 2));
    await assert.rejects(writeFile(failing, "bot-1", "/data/f", "x"), (err: unknown) => {
      assert.equal(berthErrorInfo(err)?.code, Code.Unavailable);
      return true;
    });
  });

  test("without crypto.randomUUID (an insecure browser context) the upload id is still a v4 UUID", async (t) => {
    // Pages served over plain http from a non-local host have crypto.getRandomValues only.
    Object.defineProperty(globalThis.crypto, "randomUUID", { value: undefined, configurable: true });
    t.after(() => Reflect.deleteProperty(globalThis.crypto, "randomUUID"));
    const recorded = emptyRecord();
    await writeFile(createBerthClientFromTransport(fakeTransport(recorded)), "bot-1", "/data/f", "x");
    assert.match(recorded.uploadCalls[0]!.uploadId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  test("readFile of a missing file rejects with the server's code", async () => {
    const client = createBerthClientFromTransport(fakeTransport(emptyRecord()));
    await assert.rejects(readFile(client, "bot-1", "/data/missing"), (err: unknown) => {
      assert.equal(berthErrorInfo(err)?.code, Code.NotFound);
      return true;
    });
  });
});
