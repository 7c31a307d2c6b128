"""Mistakes `mypy --strict` must catch in code using the berth SDK (tests/test_typing.py checks
that each line marked `# error: CODE` is reported with that code, and nothing else)."""

from __future__ import annotations

import grpc

import berth
import berth.aio
from berth import workspace_service_pb2


def wrong_request(client: berth.Client) -> None:
    client.workspaces.GetWorkspace(workspace_service_pb2.ListWorkspacesRequest())  # error: arg-type


def wrong_field() -> None:
    workspace_service_pb2.GetWorkspaceRequest(workspace=1)  # error: call-arg


def wrong_reply_use(client: berth.Client) -> int:
    reply = client.workspaces.GetWorkspace(workspace_service_pb2.GetWorkspaceRequest())
    return reply.workspace.workspace_id  # error: return-value


def unchecked_error_info(err: grpc.RpcError) -> str:
    return berth.error_info(err).reason or ""  # error: union-attr


async def aio_without_await(client: berth.aio.AsyncClient) -> None:
    reply = client.workspaces.GetWorkspace(workspace_service_pb2.GetWorkspaceRequest())
    print(reply.workspace)  # error: attr-defined


def read_file_is_bytes_unless_decoded(client: berth.Client) -> str:
    return berth.read_file(client, "bot-1", "/data/notes.txt")  # error: return-value


def write_file_takes_bytes_or_str(client: berth.Client) -> None:
    berth.write_file(client, "bot-1", "/data/count", 42)  # error: arg-type
