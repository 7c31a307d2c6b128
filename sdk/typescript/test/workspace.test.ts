// Lifecycle tests of @berth/sdk against a live berth, over both Node transports.
//
// Environment: BERTH_TEST_SERVER (http://127.0.0.1:PORT, required), BERTH_TEST_IMAGE_MULTILAYER
// (required), BERTH_TEST_SDK_NAMESPACE (the server's containerd namespace, required: the image is
// forgotten there before each create so its pull moves bytes), TESTBED_DIR (for forget-image.sh).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { Readable } from "node:stream";
import { createHash, randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { after, describe, test } from "node:test";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  ArchiveFormat,
  berthErrorInfo,
  Code,
  createBerthClient,
  exportData,
  exportDataBytes,
  importData,
  NetworkMode,
  readFile,
  readTextFile,
  runCommand,
  Signal,
  streamCommand,
  WorkspaceState,
  writeFile,
  type BerthClient,
  CreateWorkspaceRequestSchema,
  type CreateWorkspaceResponse,
  type Workspace,
} from "@berth/sdk";

function requireEnv(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} must be set (see sdk/typescript/test.sh)`);
  }
  return value;
}

const server = requireEnv("BERTH_TEST_SERVER");
const image = requireEnv("BERTH_TEST_IMAGE_MULTILAYER");
const namespace = requireEnv("BERTH_TEST_SDK_NAMESPACE");
const repoRoot = fileURLToPath(new URL("../../..", import.meta.url)); // dist-test/ -> repo root
const forgetImage = () =>
  execFileSync("tests/testbed/forget-image.sh", [namespace, image], { cwd: repoRoot, stdio: "inherit" });

type Phase = NonNullable<CreateWorkspaceResponse["event"]["case"]>;

/** Runs a CreateWorkspace stream to its end and returns every event. */
async function createAll(client: BerthClient, request: MessageInitShape<typeof CreateWorkspaceRequestSchema>): Promise<CreateWorkspaceResponse[]> {
  const events: CreateWorkspaceResponse[] = [];
  for await (const event of client.workspaces.createWorkspace(request, { timeoutMs: 90_000 })) {
    events.push(event);
  }
  return events;
}

/** The phases of a stream with consecutive repeats collapsed. */
function phases(events: CreateWorkspaceResponse[]): Phase[] {
  const out: Phase[] = [];
  for (const e of events) {
    const phase = e.event.case;
    assert.ok(phase, "every event has a phase");
    if (out.at(-1) !== phase) out.push(phase);
  }
  return out;
}

function readyWorkspace(events: CreateWorkspaceResponse[]): Workspace {
  const last = events.at(-1)?.event;
  assert.equal(last?.case, "ready", "the stream ends with ready");
  assert.ok(last.value.workspace, "ready carries the workspace");
  return last.value.workspace;
}

for (const transport of ["grpc", "grpc-web"] as const) {
  describe(`@berth/sdk over ${transport}`, () => {
    const client = createBerthClient({ baseUrl: server, transport });
    const id = `ts-${transport}-${randomBytes(4).toString("hex")}`;
    const label = randomBytes(4).toString("hex");

    after(async () => {
      // Leave nothing behind, whatever failed.
      try {
        await client.workspaces.deleteWorkspace({ workspaceId: id });
      } catch (err) {
        if (berthErrorInfo(err)?.reason !== "WORKSPACE_NOT_FOUND") throw err;
      }
    });

    test("create streams the phases in order with growing pull bytes", async () => {
      forgetImage();
      const events = await createAll(client, { workspaceId: id, image, labels: { "sdk-test": label } });
      assert.deepEqual(phases(events), ["pulling", "pullProgress", "unpacking", "creating", "ready"]);

      const progress = events.flatMap((e) => (e.event.case === "pullProgress" ? [e.event.value] : []));
      let previous = -1n;
      for (const p of progress) {
        assert.ok(p.offsetBytes >= previous, `offset_bytes never decreases (${previous} then ${p.offsetBytes})`);
        assert.equal(p.offsetBytes, p.layers.reduce((sum, l) => sum + l.offset, 0n), "offset_bytes sums the layers");
        previous = p.offsetBytes;
      }
      const first = progress[0]!;
      const last = progress.at(-1)!;
      assert.ok(last.totalBytes > 0n, "total_bytes > 0");
      assert.equal(last.offsetBytes, last.totalBytes, "the pull reaches total_bytes");
      assert.ok(first.offsetBytes < last.offsetBytes, `pull bytes grow (${first.offsetBytes} -> ${last.offsetBytes})`);

      const ws = readyWorkspace(events);
      assert.equal(ws.workspaceId, id);
      assert.equal(ws.state, WorkspaceState.RUNNING);
      assert.equal(ws.labels["sdk-test"], label);
    });

    test("get", async () => {
      const { workspace } = await client.workspaces.getWorkspace({ workspaceId: id });
      assert.equal(workspace?.workspaceId, id);
      assert.equal(workspace?.state, WorkspaceState.RUNNING);
      assert.ok(workspace?.imageDigest.startsWith("sha256:"));
      assert.ok((workspace?.initPid ?? 0) > 0);
    });

    // The test server runs with --network none: the policy in force is NONE, there is no
    // address, and a policy that needs the network is refused, which shows the SDK sends it.
    test("network: loopback only, a policy is sent", async () => {
      const { workspace } = await client.workspaces.getWorkspace({ workspaceId: id });
      assert.equal(workspace?.network?.policy?.mode, NetworkMode.NONE);
      assert.equal(workspace?.network?.address, "");
      const allowlist = { mode: NetworkMode.ALLOWLIST, cidrs: ["203.0.113.0/24"] };
      await assert.rejects(createAll(client, { workspaceId: `${id}-net`, image, networkPolicy: allowlist }), (err: unknown) => {
        assert.equal(berthErrorInfo(err)?.reason, "NETWORK_DISABLED");
        assert.equal(berthErrorInfo(err)?.code, Code.FailedPrecondition);
        return true;
      });
    });

    test("runCommand and streamCommand run a command to its end", async () => {
      const text = new TextDecoder();
      const result = await runCommand(client, id, "sh", ["-c", "echo out; echo err >&2; exit 3"]);
      assert.equal(text.decode(result.stdout), "out\n");
      assert.equal(text.decode(result.stderr), "err\n");
      assert.equal(result.exitCode, 3);
      assert.equal(result.error, "");
      const killed = await runCommand(client, id, "sh", ["-c", "kill -TERM $$"]);
      assert.equal(killed.exitCode, 143);
      assert.equal(killed.signal, Signal.SIGTERM);
      const kinds: string[] = [];
      for await (const event of streamCommand(client, id, "sh", ["-c", "echo one; echo two >&2"])) {
        kinds.push(event.kind);
      }
      assert.equal(kinds.at(-1), "end");
      assert.ok(kinds.includes("stdout") && kinds.includes("stderr"), kinds.join(","));
      await assert.rejects(runCommand(client, id, "no-such-command"), (err: unknown) => {
        assert.equal(berthErrorInfo(err)?.reason, "EXECUTABLE_NOT_FOUND");
        return true;
      });
    });

    test("writeFile and readFile move whole files, text and binary", async () => {
      const text = new TextDecoder();
      const notes = "héllo from the SDK\nline two\n";
      const written = await writeFile(client, id, "/data/sdk/notes.txt", notes, { createParents: true, mode: 0o600 });
      assert.equal(written.path, "/data/sdk/notes.txt");
      assert.equal(written.name, "notes.txt");
      assert.equal(written.sizeBytes, BigInt(new TextEncoder().encode(notes).length));
      assert.equal(written.mode, 0o600);
      assert.ok(written.revision.length > 0, "a written file has a revision");
      assert.equal(await readTextFile(client, id, "/data/sdk/notes.txt"), notes);
      // What a process inside the workspace sees.
      const cat = await runCommand(client, id, "cat", ["/data/sdk/notes.txt"]);
      assert.equal(text.decode(cat.stdout), notes);

      // More than one WriteFileChunk (3 MiB) and several WriteFile / ReadFile chunks (1 MiB).
      const payload = randomBytes((3 << 20) + 123_457);
      const entry = await writeFile(client, id, "/data/sdk/payload.bin", payload);
      assert.equal(entry.sizeBytes, BigInt(payload.length));
      const back = await readFile(client, id, "/data/sdk/payload.bin");
      assert.equal(back.length, payload.length);
      assert.ok(Buffer.from(back).equals(payload), "the payload reads back byte-identical");
      const sum = await runCommand(client, id, "sha256sum", ["/data/sdk/payload.bin"]);
      assert.equal(text.decode(sum.stdout).split(" ")[0], createHash("sha256").update(payload).digest("hex"));

      const empty = await writeFile(client, id, "/data/sdk/empty", new Uint8Array());
      assert.equal(empty.sizeBytes, 0n);
      assert.equal((await readFile(client, id, "/data/sdk/empty")).length, 0);
    });

    test("exportData and importData move a tree out and into another directory", async () => {
      const text = new TextDecoder();
      const shell = async (script: string) => {
        const result = await runCommand(client, id, "sh", ["-c", script]);
        assert.equal(result.exitCode, 0, `sh -c ${JSON.stringify(script)}: ${text.decode(result.stderr)}`);
        return text.decode(result.stdout);
      };
      // A small tree made inside the workspace: a file with its own mode, a symlink, and in a
      // subdirectory 3.5 MB of random bytes (they do not compress: several 1 MiB export chunks,
      // and two ImportDataChunk calls over grpc-web).
      await shell(
        "rm -rf /data/tree /data/copy && mkdir -p /data/tree/sub && printf 'hello\\n' > /data/tree/a.txt && " +
          "chmod 640 /data/tree/a.txt && ln -s a.txt /data/tree/link && head -c 3500000 /dev/urandom > /data/tree/sub/r.bin",
      );
      // What a directory holds, as seen inside: names, types, modes, link targets and contents.
      const manifest = (dir: string) =>
        shell(`cd ${dir} && find . | sort && stat -c '%n %F %a' a.txt link sub sub/r.bin && readlink link && sha256sum a.txt sub/r.bin`);
      const treeManifest = await manifest("/data/tree");

      const { archive, trailer } = await exportDataBytes(client, id, { path: "/data/tree" });
      assert.equal(trailer.sizeBytes, BigInt(archive.length), "the trailer's size is the bytes received");
      assert.equal(trailer.sha256, createHash("sha256").update(archive).digest("hex"), "the trailer's sha256 is that of the bytes received");
      assert.equal(trailer.entryCount, 4n, "a.txt, link, sub, sub/r.bin");
      assert.deepEqual([...archive.subarray(0, 2)], [0x1f, 0x8b], "a gzip stream");
      // The system's tar reads it: names relative to the directory, the symlink kept as a link.
      const listing = execFileSync("tar", ["-tvzf", "-"], { input: archive }).toString();
      assert.match(listing, /^l.* link -> a\.txt$/m, listing);
      assert.match(listing, /^-rw-r-----.* a\.txt$/m, listing);
      assert.match(listing, /^d.* sub\/?$/m, listing);
      const bin = execFileSync("tar", ["-xzOf", "-", "sub/r.bin"], { input: archive, maxBuffer: 1 << 24 });
      assert.equal(createHash("sha256").update(bin).digest("hex"), (await shell("sha256sum /data/tree/sub/r.bin")).split(" ")[0]);

      // zstd, chunk by chunk.
      const exported = exportData(client, id, { path: "/data/tree", format: ArchiveFormat.TAR_ZSTD });
      const zstdChunks: Uint8Array[] = [];
      for await (const chunk of exported) zstdChunks.push(chunk);
      const zstdArchive = Buffer.concat(zstdChunks);
      assert.ok(zstdChunks.length >= 2 && zstdChunks.every((c) => c.length <= 1 << 20), `chunks of ${zstdChunks.map((c) => c.length)}`);
      assert.equal(exported.trailer?.sizeBytes, BigInt(zstdArchive.length));
      assert.deepEqual([...zstdArchive.subarray(0, 4)], [0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
      assert.match(execFileSync("tar", ["--zstd", "-tvf", "-"], { input: zstdArchive }).toString(), /^l.* link -> a\.txt$/m);

      // Import into another directory (created by the import): the same tree inside.
      const imported = await importData(client, id, archive, { path: "/data/copy", sha256: trailer.sha256 });
      assert.equal(imported.sizeBytes, BigInt(archive.length));
      assert.equal(imported.sha256, trailer.sha256);
      assert.equal(imported.entryCount, 4n);
      assert.equal(await manifest("/data/copy"), treeManifest, "the imported tree equals the exported one");

      // zstd (told by its first bytes) from a stream, with replace: the directory ends up holding
      // exactly the archive.
      await shell("echo stray > /data/copy/stray.txt && rm /data/copy/a.txt");
      const pieces = Array.from({ length: Math.ceil(zstdArchive.length / 65536) }, (_, i) => zstdArchive.subarray(i * 65536, (i + 1) * 65536));
      await importData(client, id, Readable.from(pieces), { path: "/data/copy", replace: true });
      assert.equal(await manifest("/data/copy"), treeManifest, "replace leaves exactly the archive's tree");

      // A wrong sha256 fails before anything becomes visible.
      await shell("echo marker > /data/copy/marker");
      await assert.rejects(importData(client, id, archive, { path: "/data/copy", replace: true, sha256: "0".repeat(64) }), (err: unknown) => {
        const info = berthErrorInfo(err);
        assert.equal(info?.code, Code.InvalidArgument, String(err));
        assert.equal(info?.reason, "CHECKSUM_MISMATCH");
        return true;
      });
      assert.equal(await shell("cat /data/copy/marker"), "marker\n", "a refused import leaves the directory as it was");

      // Exporting a missing directory fails with its reason.
      await assert.rejects(exportDataBytes(client, id, { path: "/data/no-such-dir" }), (err: unknown) => {
        assert.equal(berthErrorInfo(err)?.reason, "PATH_NOT_FOUND", String(err));
        return true;
      });
    });

    test("writeFile with expectedRevision refuses a file that changed", async () => {
      const path = "/data/sdk/edited.txt";
      const first = await writeFile(client, id, path, "one\n", { createParents: true });
      const second = await writeFile(client, id, path, "two\n", { expectedRevision: first.revision });
      assert.notEqual(second.revision, first.revision);
      await assert.rejects(writeFile(client, id, path, "stale\n", { expectedRevision: first.revision }), (err: unknown) => {
        const info = berthErrorInfo(err);
        assert.equal(info?.code, Code.Aborted);
        assert.equal(info?.reason, "REVISION_MISMATCH");
        return true;
      });
      // A change made inside the workspace changes the revision too.
      const appended = await runCommand(client, id, "sh", ["-c", `echo three >> ${path}`]);
      assert.equal(appended.exitCode, 0);
      await assert.rejects(writeFile(client, id, path, "stale\n", { expectedRevision: second.revision }), (err: unknown) => {
        assert.equal(berthErrorInfo(err)?.reason, "REVISION_MISMATCH");
        return true;
      });
      assert.equal(await readTextFile(client, id, path), "two\nthree\n", "refused writes leave the file as it was");
    });

    test("readFile and writeFile of missing paths fail with PATH_NOT_FOUND", async () => {
      await assert.rejects(readFile(client, id, "/data/sdk/no-such-file"), (err: unknown) => {
        const info = berthErrorInfo(err);
        assert.equal(info?.code, Code.NotFound);
        assert.equal(info?.reason, "PATH_NOT_FOUND");
        return true;
      });
      await assert.rejects(writeFile(client, id, "/data/no-such-dir/file.txt", "x"), (err: unknown) => {
        const info = berthErrorInfo(err);
        assert.equal(info?.code, Code.NotFound);
        assert.equal(info?.reason, "PATH_NOT_FOUND");
        return true;
      });
    });

    test("list with a label selector", async () => {
      const found = await client.workspaces.listWorkspaces({ labelSelector: `sdk-test=${label}` });
      assert.deepEqual(found.workspaces.map((w) => w.workspaceId), [id]);
      const other = await client.workspaces.listWorkspaces({ labelSelector: `sdk-test=${label}-other` });
      assert.deepEqual(other.workspaces, []);
    });

    test("stop and start", async () => {
      const stopped = await client.workspaces.stopWorkspace({ workspaceId: id, timeout: { seconds: 0n } });
      assert.equal(stopped.workspace?.state, WorkspaceState.STOPPED);
      const started = await client.workspaces.startWorkspace({ workspaceId: id });
      assert.equal(started.workspace?.state, WorkspaceState.RUNNING);
    });

    test("delete with preserve_data, create with restore_data", async () => {
      await client.workspaces.deleteWorkspace({ workspaceId: id, preserveData: true });
      const events = await createAll(client, { workspaceId: id, image, labels: { "sdk-test": label }, restoreData: true });
      const seen = phases(events);
      assert.ok(seen.includes("restoring"), `a restoring event appears (${seen.join(", ")})`);
      assert.ok(seen.indexOf("restoring") < seen.indexOf("ready"));
      const ws = readyWorkspace(events);
      assert.equal(ws.state, WorkspaceState.RUNNING);
      assert.equal(ws.hasPreservedData, false, "the archive is consumed");
      await client.workspaces.deleteWorkspace({ workspaceId: id });
    });

    test("a failing call reports its code and reason", async () => {
      const unknown = `${id}-missing`;
      await assert.rejects(client.workspaces.getWorkspace({ workspaceId: unknown }), (err: unknown) => {
        const info = berthErrorInfo(err);
        assert.ok(info, "a ConnectError");
        assert.equal(info.code, Code.NotFound);
        assert.equal(info.codeName, "NOT_FOUND");
        assert.equal(info.reason, "WORKSPACE_NOT_FOUND");
        assert.equal(info.domain, "berth.dev");
        assert.ok(info.message.length > 0);
        return true;
      });
      assert.equal(berthErrorInfo(new Error("not from berth")), undefined);
    });
  });
}
