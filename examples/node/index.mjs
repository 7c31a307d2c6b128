#!/usr/bin/env node
// Creates a berth workspace, prints its progress and then its state and network (the policy in
// force and its address, or "loopback only"), runs a command in it, writes a file into it and
// reads it back; takes a snapshot, changes the file and restores the snapshot (the file is back);
// exports /data to an archive file and imports it again into /data/roundtrip.
//
//   node index.mjs WORKSPACE_ID [IMAGE]     create (IMAGE defaults to $BERTH_IMAGE, then to the
//                                           server's --default-image)
//   node index.mjs --delete WORKSPACE_ID    delete it again
//
// The server is $BERTH_SERVER (default http://127.0.0.1:50051); $BERTH_TRANSPORT picks "grpc"
// (default) or "grpc-web". The archive goes to $BERTH_ARCHIVE (default
// $TMPDIR/WORKSPACE_ID-data.tar.gz) and stays there.

import { createReadStream, createWriteStream } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import {
  berthErrorInfo,
  createBerthClient,
  DesiredState,
  exportData,
  importData,
  LayerState,
  NetworkMode,
  readTextFile,
  runCommand,
  WorkspaceState,
  writeFile,
} from "@berth/sdk";

const server = process.env.BERTH_SERVER || "http://127.0.0.1:50051";
const transport = process.env.BERTH_TRANSPORT || "grpc";

const mib = (n) => `${(Number(n) / (1024 * 1024)).toFixed(1)} MiB`;
const percent = (done, total) => (total > 0n ? Number((done * 100n) / total) : 0);

function usage() {
  console.error("usage: node index.mjs WORKSPACE_ID [IMAGE]\n       node index.mjs --delete WORKSPACE_ID");
  process.exit(2);
}

async function create(berth, workspaceId, image) {
  let workspace;
  for await (const res of berth.workspaces.createWorkspace({ workspaceId, image })) {
    const ev = res.event;
    switch (ev.case) {
      case "pulling":
        console.log(`pulling ${ev.value.image} (${ev.value.totalLayers} layers, ${ev.value.totalBytes} bytes)`);
        break;
      case "pullProgress": {
        const { offsetBytes, totalBytes, layers } = ev.value;
        const done = layers.filter((l) => l.state === LayerState.DONE || l.state === LayerState.EXISTS).length;
        console.log(
          `pull_progress ${offsetBytes}/${totalBytes} bytes (${percent(offsetBytes, totalBytes)}%, ` +
            `${mib(offsetBytes)} of ${mib(totalBytes)}, ${done}/${layers.length} layers done)`,
        );
        break;
      }
      case "unpacking":
        console.log(`unpacking ${ev.value.layersDone}/${ev.value.totalLayers} layers`);
        break;
      case "creating":
        console.log("creating");
        break;
      case "restoring":
        console.log(`restoring ${ev.value.bytesDone}/${ev.value.totalBytes} bytes`);
        break;
      case "ready":
        console.log("ready");
        workspace = ev.value.workspace;
        break;
    }
  }
  if (!workspace) throw new Error("the stream ended without ready");
  console.log(`workspace ${workspace.workspaceId}`);
  console.log(`  state    ${WorkspaceState[workspace.state]} (desired ${DesiredState[workspace.desiredState]})`);
  console.log(`  image    ${workspace.image}`);
  console.log(`  digest   ${workspace.imageDigest}`);
  console.log(`  init pid ${workspace.initPid}`);
  console.log(`  network  ${describeNetwork(workspace.network)}`);

  // Run a command in it: its output and exit code.
  const result = await runCommand(berth, workspace.workspaceId, "uname", ["-s"]);
  console.log(`uname -s: ${new TextDecoder().decode(result.stdout).trim()} (exit ${result.exitCode})`);

  // Write a file into its /data and read it back.
  const path = "/data/hello.txt";
  const entry = await writeFile(berth, workspace.workspaceId, path, `hello from ${workspace.workspaceId}\n`);
  console.log(`wrote ${entry.path} (${entry.sizeBytes} bytes, revision ${entry.revision})`);
  const text = await readTextFile(berth, workspace.workspaceId, path);
  console.log(`read ${path}: ${text.trim()}`);

  await snapshotAndRestore(berth, workspace.workspaceId, path);
  await exportAndImport(berth, workspace.workspaceId, path);
}

// `OPEN, 10.231.0.2/16 via 10.231.0.1`: the egress policy in force and the workspace's address on
// berth's bridge, or `NONE, loopback only` when it has no network interface but `lo`.
function describeNetwork(network) {
  const mode = NetworkMode[network?.policy?.mode ?? NetworkMode.UNSPECIFIED];
  if (!network?.address) return `${mode}, loopback only`;
  return `${mode}, ${network.address}/${network.prefixLength} via ${network.gateway}`;
}

// Takes a snapshot (the whole filesystem: installed software and /data), changes the file, and
// restores the snapshot: the change is gone. A running workspace restarts for both.
async function snapshotAndRestore(berth, workspaceId, path) {
  const { snapshot } = await berth.workspaces.createSnapshot({ workspaceId, name: "before-change" });
  console.log(`snapshot ${snapshot.name}: version ${snapshot.version}, ${snapshot.sizeBytes} bytes`);
  await writeFile(berth, workspaceId, path, "changed after the snapshot\n");
  console.log(`changed ${path}: ${(await readTextFile(berth, workspaceId, path)).trim()}`);
  const { version } = await berth.workspaces.restoreSnapshot({
    workspaceId,
    target: { case: "snapshotName", value: snapshot.name },
  });
  console.log(`restored ${snapshot.name}: version ${version.version}`);
  console.log(`after restore ${path}: ${(await readTextFile(berth, workspaceId, path)).trim()}`);
}

// Exports /data into an archive file (exportData checks the bytes against the stream's trailer),
// then imports that file into /data/roundtrip, checked against the export's SHA-256.
async function exportAndImport(berth, workspaceId, path) {
  const archivePath = process.env.BERTH_ARCHIVE || join(tmpdir(), `${workspaceId}-data.tar.gz`);
  const exported = exportData(berth, workspaceId);
  await pipeline(exported, createWriteStream(archivePath));
  const { sizeBytes, entryCount, sha256 } = exported.trailer;
  console.log(`exported /data to ${archivePath}: ${sizeBytes} bytes, ${entryCount} entries, sha256 ${sha256}`);
  const target = "/data/roundtrip";
  const imported = await importData(berth, workspaceId, createReadStream(archivePath), { path: target, sha256 });
  console.log(
    `imported ${archivePath} into ${target}: ${imported.sizeBytes} bytes, ${imported.entryCount} entries, sha256 ${imported.sha256}`,
  );
  const copy = `${target}/${path.split("/").at(-1)}`;
  console.log(`read ${copy}: ${(await readTextFile(berth, workspaceId, copy)).trim()}`);
}

async function main() {
  const args = process.argv.slice(2);
  const berth = createBerthClient({ baseUrl: server, transport });
  if (args[0] === "--delete") {
    if (args.length !== 2) usage();
    await berth.workspaces.deleteWorkspace({ workspaceId: args[1] });
    console.log(`deleted ${args[1]}`);
    return;
  }
  if (args.length < 1 || args.length > 2 || args[0].startsWith("-")) usage();
  await create(berth, args[0], args[1] ?? process.env.BERTH_IMAGE ?? "");
}

main().catch((err) => {
  const info = berthErrorInfo(err);
  if (info) {
    // The status code, the ErrorInfo reason and the message: what a caller needs to react.
    console.error(`error: ${info.codeName} ${info.reason ?? "-"}: ${info.message}`);
  } else {
    console.error(err);
  }
  process.exit(1);
});
