#!/usr/bin/env node
// Creates a berth workspace, prints its progress and then its state, runs a command in it, and
// writes a file into it and reads it back.
//
//   node index.mjs WORKSPACE_ID [IMAGE]     create (IMAGE defaults to $BERTH_IMAGE, then to the
//                                           server's --default-image)
//   node index.mjs --delete WORKSPACE_ID    delete it again
//
// The server is $BERTH_SERVER (default http://127.0.0.1:50051); $BERTH_TRANSPORT picks "grpc"
// (default) or "grpc-web".

import {
  berthErrorInfo,
  createBerthClient,
  DesiredState,
  LayerState,
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

  // Run a command in it: its output and exit code.
  const result = await runCommand(berth, workspace.workspaceId, "uname", ["-s"]);
  console.log(`uname -s: ${new TextDecoder().decode(result.stdout).trim()} (exit ${result.exitCode})`);

  // Write a file into its /data and read it back.
  const path = "/data/hello.txt";
  const entry = await writeFile(berth, workspace.workspaceId, path, `hello from ${workspace.workspaceId}\n`);
  console.log(`wrote ${entry.path} (${entry.sizeBytes} bytes, revision ${entry.revision})`);
  const text = await readTextFile(berth, workspace.workspaceId, path);
  console.log(`read ${path}: ${text.trim()}`);
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
