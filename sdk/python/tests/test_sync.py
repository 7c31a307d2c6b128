"""The synchronous client against a live berth: a workspace's whole life, and errors."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from helpers import LABEL_KEY, check_create_progress, unique_id

import berth
from berth import workspace_pb2
from berth import workspace_service_pb2 as ws

TIMEOUT = 60.0


def _delete_quietly(client: berth.Client, workspace_id: str) -> None:
    try:
        client.workspaces.DeleteWorkspace(
            ws.DeleteWorkspaceRequest(workspace_id=workspace_id), timeout=TIMEOUT
        )
    except grpc.RpcError as err:
        info = berth.error_info(err)
        if info is None or info.code != grpc.StatusCode.NOT_FOUND:
            raise


def _expect_not_found(client: berth.Client, workspace_id: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.workspaces.GetWorkspace(
            ws.GetWorkspaceRequest(workspace_id=workspace_id), timeout=TIMEOUT
        )
    info = berth.error_info(caught.value)
    assert info is not None, caught.value
    assert info.code == grpc.StatusCode.NOT_FOUND, info
    assert info.reason == "WORKSPACE_NOT_FOUND", info
    assert info.error_reason == berth.error_reason_pb2.WORKSPACE_NOT_FOUND
    assert workspace_id in info.message, info
    assert berth.is_reason(caught.value, "WORKSPACE_NOT_FOUND")
    assert berth.is_reason(caught.value, berth.error_reason_pb2.WORKSPACE_NOT_FOUND)
    assert not berth.is_reason(caught.value, "WORKSPACE_ALREADY_EXISTS")


def test_workspace_lifecycle(
    server: str, image: str, forget_image: Callable[[str], None]
) -> None:
    workspace_id = unique_id("py-sync")
    labels = {LABEL_KEY: workspace_id}
    with berth.connect(server) as client:
        try:
            # Create from a cold image: progress phases in order, pull bytes growing.
            forget_image(image)
            events = list(
                client.workspaces.CreateWorkspace(
                    ws.CreateWorkspaceRequest(
                        workspace_id=workspace_id, image=image, labels=labels
                    ),
                    timeout=TIMEOUT,
                )
            )
            created = check_create_progress(
                events, workspace_id=workspace_id, pulled=True, restored=False
            )
            assert dict(created.labels) == labels

            # Get.
            got = client.workspaces.GetWorkspace(
                ws.GetWorkspaceRequest(workspace_id=workspace_id), timeout=TIMEOUT
            ).workspace
            assert got.workspace_id == workspace_id
            assert got.state == workspace_pb2.WORKSPACE_STATE_RUNNING
            assert got.desired_state == workspace_pb2.DESIRED_STATE_RUNNING
            assert got.image_digest.startswith("sha256:")
            assert dict(got.labels) == labels
            # The test server runs with --network none: loopback only.
            assert got.network.policy.mode == workspace_pb2.NETWORK_MODE_NONE, got.network
            assert got.network.address == "", got.network

            # Run commands: output apart, exit codes, a signal, streaming, a missing command.
            result = berth.run(client, workspace_id, "sh", "-c", "echo out; echo err >&2; exit 3")
            assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 3)
            assert result.error == ""
            killed = berth.run(client, workspace_id, "sh", "-c", "kill -TERM $$")
            assert (killed.exit_code, killed.signal) == (143, berth.process_service_pb2.SIGNAL_SIGTERM)
            chunks = list(berth.stream(client, workspace_id, "sh", "-c", "echo one; echo two"))
            output = b"".join(c.data for c in chunks if isinstance(c, berth.Output))
            assert output == b"one\ntwo\n"
            assert chunks[-1].exit_code == 0  # type: ignore[union-attr]
            with pytest.raises(grpc.RpcError) as missing:
                berth.run(client, workspace_id, "no-such-command")
            assert berth.is_reason(missing.value, "EXECUTABLE_NOT_FOUND")

            # Whole files: text and a binary payload of several 1 MiB chunks, read back as written.
            notes = "héllo from the Python SDK\nline two\n"
            entry = berth.write_file(
                client, workspace_id, "/data/sdk/notes.txt", notes, create_parents=True, mode=0o600
            )
            assert (entry.path, entry.name) == ("/data/sdk/notes.txt", "notes.txt"), entry
            assert entry.size_bytes == len(notes.encode()) and entry.mode == 0o600, entry
            assert entry.revision, entry
            assert berth.read_file(client, workspace_id, "/data/sdk/notes.txt", encoding="utf-8") == notes
            inside = berth.run(client, workspace_id, "cat", "/data/sdk/notes.txt")
            assert inside.stdout == notes.encode()
            payload = os.urandom((3 << 20) + 123_457)
            entry = berth.write_file(client, workspace_id, "/data/sdk/payload.bin", payload)
            assert entry.size_bytes == len(payload), entry
            assert berth.read_file(client, workspace_id, "/data/sdk/payload.bin") == payload
            digest = berth.run(client, workspace_id, "sha256sum", "/data/sdk/payload.bin")
            assert digest.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()
            assert berth.write_file(client, workspace_id, "/data/sdk/empty", b"").size_bytes == 0
            assert berth.read_file(client, workspace_id, "/data/sdk/empty") == b""

            # A write with an expected revision refuses a file that changed meanwhile.
            edited = "/data/sdk/edited.txt"
            first = berth.write_file(client, workspace_id, edited, "one\n")
            second = berth.write_file(
                client, workspace_id, edited, "two\n", expected_revision=first.revision
            )
            assert second.revision != first.revision
            with pytest.raises(grpc.RpcError) as stale:
                berth.write_file(
                    client, workspace_id, edited, "stale\n", expected_revision=first.revision
                )
            info = berth.error_info(stale.value)
            assert info is not None
            assert (info.code, info.reason) == (grpc.StatusCode.ABORTED, "REVISION_MISMATCH")
            appended = berth.run(client, workspace_id, "sh", "-c", f"echo three >> {edited}")
            assert appended.exit_code == 0
            with pytest.raises(grpc.RpcError) as changed_inside:
                berth.write_file(
                    client, workspace_id, edited, "stale\n", expected_revision=second.revision
                )
            assert berth.is_reason(changed_inside.value, "REVISION_MISMATCH")
            assert berth.read_file(client, workspace_id, edited) == b"two\nthree\n"

            # Missing files and directories.
            with pytest.raises(grpc.RpcError) as missing_file:
                berth.read_file(client, workspace_id, "/data/sdk/no-such-file")
            info = berth.error_info(missing_file.value)
            assert info is not None
            assert (info.code, info.reason) == (grpc.StatusCode.NOT_FOUND, "PATH_NOT_FOUND")
            with pytest.raises(grpc.RpcError) as missing_dir:
                berth.write_file(client, workspace_id, "/data/no-such-dir/file.txt", b"x")
            info = berth.error_info(missing_dir.value)
            assert info is not None
            assert (info.code, info.reason) == (grpc.StatusCode.NOT_FOUND, "PATH_NOT_FOUND")

            # List with a label selector: found with its value, not with another.
            listed = client.workspaces.ListWorkspaces(
                ws.ListWorkspacesRequest(label_selector=f"{LABEL_KEY}={workspace_id}"),
                timeout=TIMEOUT,
            )
            assert [w.workspace_id for w in listed.workspaces] == [workspace_id]
            others = client.workspaces.ListWorkspaces(
                ws.ListWorkspacesRequest(label_selector=f"{LABEL_KEY}={workspace_id}-other"),
                timeout=TIMEOUT,
            )
            assert list(others.workspaces) == []

            # Stop, then start.
            stopped = client.workspaces.StopWorkspace(
                ws.StopWorkspaceRequest(workspace_id=workspace_id, timeout=Duration(seconds=2)),
                timeout=TIMEOUT,
            ).workspace
            assert stopped.state == workspace_pb2.WORKSPACE_STATE_STOPPED
            assert stopped.desired_state == workspace_pb2.DESIRED_STATE_STOPPED
            started = client.workspaces.StartWorkspace(
                ws.StartWorkspaceRequest(workspace_id=workspace_id), timeout=TIMEOUT
            ).workspace
            assert started.state == workspace_pb2.WORKSPACE_STATE_RUNNING
            assert started.desired_state == workspace_pb2.DESIRED_STATE_RUNNING

            # Delete preserving /data, then create again restoring it.
            client.workspaces.DeleteWorkspace(
                ws.DeleteWorkspaceRequest(workspace_id=workspace_id, preserve_data=True),
                timeout=TIMEOUT,
            )
            _expect_not_found(client, workspace_id)
            events = list(
                client.workspaces.CreateWorkspace(
                    ws.CreateWorkspaceRequest(
                        workspace_id=workspace_id, image=image, labels=labels, restore_data=True
                    ),
                    timeout=TIMEOUT,
                )
            )
            restored = check_create_progress(
                events, workspace_id=workspace_id, pulled=False, restored=True
            )
            assert not restored.has_preserved_data

            client.workspaces.DeleteWorkspace(
                ws.DeleteWorkspaceRequest(workspace_id=workspace_id), timeout=TIMEOUT
            )
            _expect_not_found(client, workspace_id)
        finally:
            _delete_quietly(client, workspace_id)


def test_error_of_unknown_workspace(server: str) -> None:
    with berth.connect(server) as client:
        _expect_not_found(client, unique_id("py-sync-unknown"))


def test_error_of_invalid_id_on_a_stream(server: str) -> None:
    with berth.connect(server) as client:
        with pytest.raises(grpc.RpcError) as caught:
            list(
                client.workspaces.CreateWorkspace(
                    ws.CreateWorkspaceRequest(workspace_id="Not A Valid Id"), timeout=TIMEOUT
                )
            )
    info = berth.error_info(caught.value)
    assert info is not None
    assert (info.code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_WORKSPACE_ID")
    assert str(info).startswith("INVALID_ARGUMENT INVALID_WORKSPACE_ID: ")


def test_network_policy_reaches_the_server(server: str, image: str) -> None:
    # The test server runs with --network none, so it refuses a policy that needs the network:
    # proof that the request carried it. A malformed CIDR is refused before that.
    allowlist = workspace_pb2.NetworkPolicy(
        mode=workspace_pb2.NETWORK_MODE_ALLOWLIST, cidrs=["203.0.113.0/24"]
    )
    malformed = workspace_pb2.NetworkPolicy(
        mode=workspace_pb2.NETWORK_MODE_ALLOWLIST, cidrs=["not-a-cidr"]
    )
    expected = [
        (allowlist, grpc.StatusCode.FAILED_PRECONDITION, "NETWORK_DISABLED"),
        (malformed, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NETWORK_POLICY"),
    ]
    with berth.connect(server) as client:
        for policy, code, reason in expected:
            request = ws.CreateWorkspaceRequest(
                workspace_id=unique_id("py-sync-net"), image=image, network_policy=policy
            )
            with pytest.raises(grpc.RpcError) as caught:
                list(client.workspaces.CreateWorkspace(request, timeout=TIMEOUT))
            info = berth.error_info(caught.value)
            assert info is not None and (info.code, info.reason) == (code, reason), info
