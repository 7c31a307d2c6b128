"""The grpc.aio client against a live berth: a workspace's whole life, and errors."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable

import grpc
import grpc.aio
import pytest
from google.protobuf.duration_pb2 import Duration
from helpers import LABEL_KEY, check_create_progress, unique_id

import berth
import berth.aio
from berth import workspace_pb2
from berth import workspace_service_pb2 as ws

TIMEOUT = 60.0


async def _create(
    client: berth.aio.AsyncClient, request: ws.CreateWorkspaceRequest
) -> list[ws.CreateWorkspaceResponse]:
    return [event async for event in client.workspaces.CreateWorkspace(request, timeout=TIMEOUT)]


async def _delete_quietly(client: berth.aio.AsyncClient, workspace_id: str) -> None:
    try:
        await client.workspaces.DeleteWorkspace(
            ws.DeleteWorkspaceRequest(workspace_id=workspace_id), timeout=TIMEOUT
        )
    except grpc.aio.AioRpcError as err:
        info = berth.error_info(err)
        if info is None or info.code != grpc.StatusCode.NOT_FOUND:
            raise


async def _expect_not_found(client: berth.aio.AsyncClient, workspace_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.workspaces.GetWorkspace(
            ws.GetWorkspaceRequest(workspace_id=workspace_id), timeout=TIMEOUT
        )
    info = berth.error_info(caught.value)
    assert info is not None, caught.value
    assert info.code == grpc.StatusCode.NOT_FOUND, info
    assert info.reason == "WORKSPACE_NOT_FOUND", info
    assert info.error_reason == berth.error_reason_pb2.WORKSPACE_NOT_FOUND
    assert workspace_id in info.message, info
    assert berth.is_reason(caught.value, berth.error_reason_pb2.WORKSPACE_NOT_FOUND)


@pytest.mark.asyncio
async def test_workspace_lifecycle(
    server: str, image: str, forget_image: Callable[[str], None]
) -> None:
    workspace_id = unique_id("py-aio")
    labels = {LABEL_KEY: workspace_id}
    async with berth.aio.connect(server) as client:
        try:
            # Create from a cold image: progress phases in order, pull bytes growing.
            await asyncio.to_thread(forget_image, image)
            events = await _create(
                client,
                ws.CreateWorkspaceRequest(workspace_id=workspace_id, image=image, labels=labels),
            )
            created = check_create_progress(
                events, workspace_id=workspace_id, pulled=True, restored=False
            )
            assert dict(created.labels) == labels

            # Run a command with the asyncio helpers.
            result = await berth.run_async(client, workspace_id, "sh", "-c", "echo hi; exit 4")
            assert (result.stdout, result.exit_code) == (b"hi\n", 4)
            ends = [
                event
                async for event in berth.stream_async(client, workspace_id, "true")
                if not isinstance(event, berth.Output)
            ]
            assert len(ends) == 1 and ends[0].exit_code == 0

            # Whole files with the asyncio helpers: text, and a payload of several 1 MiB chunks.
            entry = await berth.write_file_async(
                client, workspace_id, "/data/sdk/notes.txt", "ünïcode\n", create_parents=True
            )
            assert entry.size_bytes == len("ünïcode\n".encode()) and entry.revision, entry
            text = await berth.read_file_async(
                client, workspace_id, "/data/sdk/notes.txt", encoding="utf-8"
            )
            assert text == "ünïcode\n"
            payload = os.urandom((3 << 20) + 4321)
            await berth.write_file_async(client, workspace_id, "/data/sdk/payload.bin", payload)
            assert await berth.read_file_async(client, workspace_id, "/data/sdk/payload.bin") == payload
            digest = await berth.run_async(client, workspace_id, "sha256sum", "/data/sdk/payload.bin")
            assert digest.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()
            with pytest.raises(grpc.aio.AioRpcError) as stale:
                await berth.write_file_async(
                    client, workspace_id, "/data/sdk/notes.txt", "x", expected_revision="stale"
                )
            info = berth.error_info(stale.value)
            assert info is not None
            assert (info.code, info.reason) == (grpc.StatusCode.ABORTED, "REVISION_MISMATCH")
            assert (
                await berth.read_file_async(client, workspace_id, "/data/sdk/notes.txt")
            ) == "ünïcode\n".encode()
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await berth.read_file_async(client, workspace_id, "/data/sdk/no-such-file")
            info = berth.error_info(missing.value)
            assert info is not None
            assert (info.code, info.reason) == (grpc.StatusCode.NOT_FOUND, "PATH_NOT_FOUND")

            # Get.
            got = (
                await client.workspaces.GetWorkspace(
                    ws.GetWorkspaceRequest(workspace_id=workspace_id), timeout=TIMEOUT
                )
            ).workspace
            assert got.workspace_id == workspace_id
            assert got.state == workspace_pb2.WORKSPACE_STATE_RUNNING
            assert got.image_digest.startswith("sha256:")
            assert dict(got.labels) == labels

            # List with a label selector: found with its value, not with another.
            listed = await client.workspaces.ListWorkspaces(
                ws.ListWorkspacesRequest(label_selector=f"{LABEL_KEY}={workspace_id}"),
                timeout=TIMEOUT,
            )
            assert [w.workspace_id for w in listed.workspaces] == [workspace_id]
            others = await client.workspaces.ListWorkspaces(
                ws.ListWorkspacesRequest(label_selector=f"{LABEL_KEY}={workspace_id}-other"),
                timeout=TIMEOUT,
            )
            assert list(others.workspaces) == []

            # Stop, then start.
            stopped = (
                await client.workspaces.StopWorkspace(
                    ws.StopWorkspaceRequest(
                        workspace_id=workspace_id, timeout=Duration(seconds=2)
                    ),
                    timeout=TIMEOUT,
                )
            ).workspace
            assert stopped.state == workspace_pb2.WORKSPACE_STATE_STOPPED
            assert stopped.desired_state == workspace_pb2.DESIRED_STATE_STOPPED
            started = (
                await client.workspaces.StartWorkspace(
                    ws.StartWorkspaceRequest(workspace_id=workspace_id), timeout=TIMEOUT
                )
            ).workspace
            assert started.state == workspace_pb2.WORKSPACE_STATE_RUNNING

            # Delete preserving /data, then create again restoring it.
            await client.workspaces.DeleteWorkspace(
                ws.DeleteWorkspaceRequest(workspace_id=workspace_id, preserve_data=True),
                timeout=TIMEOUT,
            )
            await _expect_not_found(client, workspace_id)
            events = await _create(
                client,
                ws.CreateWorkspaceRequest(
                    workspace_id=workspace_id, image=image, labels=labels, restore_data=True
                ),
            )
            restored = check_create_progress(
                events, workspace_id=workspace_id, pulled=False, restored=True
            )
            assert not restored.has_preserved_data

            await client.workspaces.DeleteWorkspace(
                ws.DeleteWorkspaceRequest(workspace_id=workspace_id), timeout=TIMEOUT
            )
            await _expect_not_found(client, workspace_id)
        finally:
            await _delete_quietly(client, workspace_id)


@pytest.mark.asyncio
async def test_error_of_unknown_workspace(server: str) -> None:
    async with berth.aio.connect(server) as client:
        await _expect_not_found(client, unique_id("py-aio-unknown"))


@pytest.mark.asyncio
async def test_error_of_invalid_id_on_a_stream(server: str) -> None:
    async with berth.aio.connect(server) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _create(client, ws.CreateWorkspaceRequest(workspace_id="Not A Valid Id"))
    info = berth.error_info(caught.value)
    assert info is not None
    assert (info.code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_WORKSPACE_ID")
