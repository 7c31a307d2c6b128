"""A small program using the berth SDK as a user would; `mypy --strict` must accept it.

    python typed_user_program.py http://127.0.0.1:50051

It lists workspaces with both clients and shows how a failed call reads (an unknown workspace).
"""

from __future__ import annotations

import asyncio
import sys

import grpc

import berth
import berth.aio
from berth import workspace_pb2, workspace_service_pb2


def state_name(workspace: workspace_pb2.Workspace) -> str:
    return workspace_pb2.WorkspaceState.Name(workspace.state)


def describe(err: grpc.RpcError) -> str:
    info: berth.BerthError | None = berth.error_info(err)
    if info is None:
        return f"not a gRPC status: {err!r}"
    code: grpc.StatusCode = info.code
    reason: str | None = info.reason
    return f"{code.name} {reason or '-'}: {info.message}"


def run_sync(addr: str) -> str:
    with berth.connect(addr) as client:
        reply: workspace_service_pb2.ListWorkspacesResponse = client.workspaces.ListWorkspaces(
            workspace_service_pb2.ListWorkspacesRequest(page_size=10), timeout=10
        )
        for workspace in reply.workspaces:
            print(f"{workspace.workspace_id}\t{state_name(workspace)}")
        try:
            client.workspaces.GetWorkspace(
                workspace_service_pb2.GetWorkspaceRequest(workspace_id="no-such-workspace"),
                timeout=10,
            )
        except grpc.RpcError as err:
            if berth.is_reason(err, berth.error_reason_pb2.WORKSPACE_NOT_FOUND):
                return describe(err)
            raise
    return "unexpectedly found"


async def run_aio(addr: str) -> str:
    async with berth.aio.connect(addr) as client:
        reply = await client.workspaces.ListWorkspaces(
            workspace_service_pb2.ListWorkspacesRequest(page_size=10), timeout=10
        )
        count: int = len(reply.workspaces)
        print(f"{count} workspaces")
        try:
            await client.workspaces.GetWorkspace(
                workspace_service_pb2.GetWorkspaceRequest(workspace_id="no-such-workspace"),
                timeout=10,
            )
        except grpc.aio.AioRpcError as err:
            info = berth.error_info(err)
            if info is not None and info.error_reason == berth.error_reason_pb2.WORKSPACE_NOT_FOUND:
                return describe(err)
            raise
    return "unexpectedly found"


def main(argv: list[str]) -> int:
    addr = argv[1] if len(argv) > 1 else "127.0.0.1:50051"
    print("sync:", run_sync(addr))
    print("aio:", asyncio.run(run_aio(addr)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
