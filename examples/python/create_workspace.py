#!/usr/bin/env python3
"""Creates a berth workspace and prints its progress, then its final state and network; runs a
command in it, writes a file into it and reads it back; takes a snapshot, changes the file and
restores the snapshot (the file is back); exports /data to an archive file and imports it into
/data/roundtrip.

    python create_workspace.py --id my-bot --image docker.io/library/debian:bookworm
    python create_workspace.py --server http://127.0.0.1:50051 --id my-bot --delete

Needs the berth SDK (`pip install ./sdk/python` from the repository root).
"""

from __future__ import annotations

import argparse
import os
import posixpath
import sys
import tempfile

import grpc

import berth
from berth import workspace_pb2
from berth import workspace_service_pb2 as ws


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def state_name(state: workspace_pb2.WorkspaceState.ValueType) -> str:
    return workspace_pb2.WorkspaceState.Name(state).removeprefix("WORKSPACE_STATE_")


def describe_network(network: workspace_pb2.WorkspaceNetwork) -> str:
    """`OPEN, 10.231.0.2/16 via 10.231.0.1`: the egress policy in force and the workspace's
    address on berth's bridge, or `NONE, loopback only` when it has no network interface but lo."""
    mode = workspace_pb2.NetworkMode.Name(network.policy.mode).removeprefix("NETWORK_MODE_")
    if not network.address:
        return f"{mode}, loopback only"
    return f"{mode}, {network.address}/{network.prefix_length} via {network.gateway}"


def print_event(event: ws.CreateWorkspaceResponse) -> None:
    """Prints one progress event as a line: the phase, then its numbers."""
    phase = event.WhichOneof("event")
    if event.HasField("pulling"):
        pulling = event.pulling
        print(
            f"pulling {pulling.image} "
            f"({pulling.total_layers} layers, {pulling.total_bytes} bytes)"
        )
    elif event.HasField("pull_progress"):
        done, total = event.pull_progress.offset_bytes, event.pull_progress.total_bytes
        percent = 100 * done // total if total else 0
        layers = " ".join(
            workspace_pb2.LayerState.Name(layer.state).removeprefix("LAYER_STATE_").lower()
            for layer in event.pull_progress.layers
        )
        print(
            f"pull_progress {done}/{total} bytes ({percent}%, {mib(done)} of {mib(total)}) "
            f"layers: {layers}"
        )
    elif event.HasField("unpacking"):
        print(f"unpacking {event.unpacking.layers_done}/{event.unpacking.total_layers} layers")
    elif event.HasField("creating"):
        print("creating")
    elif event.HasField("restoring"):
        print(f"restoring {event.restoring.bytes_done}/{event.restoring.total_bytes} bytes")
    elif event.HasField("ready"):
        w = event.ready.workspace
        print(f"ready {w.workspace_id}: {state_name(w.state)} ({w.image}@{w.image_digest})")
    else:
        print(f"unknown event {phase}")


def snapshot_and_restore(client: berth.Client, workspace_id: str, path: str) -> None:
    """Takes a snapshot (the whole filesystem: installed software and /data), changes the file
    and restores the snapshot: the change is gone. A running workspace restarts for both."""
    snapshot = client.workspaces.CreateSnapshot(
        ws.CreateSnapshotRequest(workspace_id=workspace_id, name="before-change")
    ).snapshot
    print(f"snapshot {snapshot.name}: version {snapshot.version}, {snapshot.size_bytes} bytes")
    berth.write_file(client, workspace_id, path, "changed after the snapshot\n", timeout=30)
    changed = berth.read_file(client, workspace_id, path, encoding="utf-8", timeout=30)
    print(f"changed {path}: {changed.strip()}")
    restored = client.workspaces.RestoreSnapshot(
        ws.RestoreSnapshotRequest(workspace_id=workspace_id, snapshot_name=snapshot.name)
    )
    print(f"restored {snapshot.name}: version {restored.version.version}")
    text = berth.read_file(client, workspace_id, path, encoding="utf-8", timeout=30)
    print(f"after restore {path}: {text.strip()}")


def export_and_import(client: berth.Client, workspace_id: str, path: str, archive: str) -> None:
    """Exports /data into the archive file (checked against the stream's trailer), then imports
    that file into /data/roundtrip, checked against the export's SHA-256."""
    trailer = berth.export_data(client, workspace_id, archive, timeout=120)
    print(
        f"exported /data to {archive}: {trailer.size_bytes} bytes, "
        f"{trailer.entry_count} entries, sha256 {trailer.sha256}"
    )
    target = "/data/roundtrip"
    imported = berth.import_data(
        client, workspace_id, archive, path=target, sha256=trailer.sha256, timeout=120
    )
    print(
        f"imported {archive} into {target}: {imported.size_bytes} bytes, "
        f"{imported.entry_count} entries, sha256 {imported.sha256}"
    )
    copy = posixpath.join(target, posixpath.basename(path))
    text = berth.read_file(client, workspace_id, copy, encoding="utf-8", timeout=30)
    print(f"read {copy}: {text.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server",
        default=os.environ.get("BERTH_SERVER", "127.0.0.1:50051"),
        help="berth address, host:port or http://host:port (default: $BERTH_SERVER or "
        "127.0.0.1:50051)",
    )
    parser.add_argument("--id", required=True, help="workspace id, for example the bot's id")
    parser.add_argument("--image", default="", help="image reference (default: the server's)")
    parser.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="label (repeatable)"
    )
    parser.add_argument("--restore-data", action="store_true", help="restore preserved /data")
    parser.add_argument(
        "--archive",
        help="file to export /data into (default: <temp dir>/<id>-data.tar.gz)",
    )
    parser.add_argument("--delete", action="store_true", help="delete the workspace at the end")
    args = parser.parse_args()

    labels: dict[str, str] = {}
    for label in args.label:
        key, sep, value = label.partition("=")
        if not sep or not key:
            parser.error(f"--label {label!r}: expected KEY=VALUE")
        labels[key] = value
    request = ws.CreateWorkspaceRequest(
        workspace_id=args.id, image=args.image, labels=labels, restore_data=args.restore_data
    )
    try:
        with berth.connect(args.server) as client:
            for event in client.workspaces.CreateWorkspace(request):
                print_event(event)
            workspace = client.workspaces.GetWorkspace(
                ws.GetWorkspaceRequest(workspace_id=args.id)
            ).workspace
            print(f"state {state_name(workspace.state)}")
            print(f"network {describe_network(workspace.network)}")
            # Run a command in it: its output and exit code.
            result = berth.run(client, args.id, "uname", "-s", timeout=30)
            print(f"uname -s: {result.stdout.decode().strip()} (exit {result.exit_code})")
            # Write a file into its /data and read it back.
            path = "/data/hello.txt"
            entry = berth.write_file(client, args.id, path, f"hello from {args.id}\n", timeout=30)
            print(f"wrote {entry.path} ({entry.size_bytes} bytes, revision {entry.revision})")
            text = berth.read_file(client, args.id, path, encoding="utf-8", timeout=30)
            print(f"read {path}: {text.strip()}")
            snapshot_and_restore(client, args.id, path)
            archive = args.archive or os.path.join(tempfile.gettempdir(), f"{args.id}-data.tar.gz")
            export_and_import(client, args.id, path, archive)
            if args.delete:
                client.workspaces.DeleteWorkspace(ws.DeleteWorkspaceRequest(workspace_id=args.id))
                print(f"deleted {args.id}")
    except grpc.RpcError as err:
        # The status code and berth's ErrorInfo reason, e.g. "NOT_FOUND IMAGE_NOT_FOUND: ...".
        print(f"error: {berth.error_info(err) or err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
