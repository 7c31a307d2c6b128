"""The asyncio berth client, over ``grpc.aio``.

    async with berth.aio.connect("127.0.0.1:50051") as client:
        reply = await client.workspaces.GetWorkspace(
            workspace_service_pb2.GetWorkspaceRequest(workspace_id="bot-1"))

Calls raise ``grpc.aio.AioRpcError``; read its code and reason with :func:`berth.error_info`.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from berth._client import ChannelOptions
from berth._auth import Token, with_token
from berth._target import resolve_target
from berth.workspace.v1.filesystem_service_pb2_grpc import FilesystemServiceStub
from berth.workspace.v1.process_service_pb2_grpc import ProcessServiceStub
from berth.workspace.v1.workspace_service_pb2_grpc import WorkspaceServiceStub

if TYPE_CHECKING:
    # Only in mypy-protobuf's stubs: the stub classes built on a grpc.aio.Channel.
    from berth.workspace.v1.filesystem_service_pb2_grpc import FilesystemServiceAsyncStub
    from berth.workspace.v1.process_service_pb2_grpc import ProcessServiceAsyncStub
    from berth.workspace.v1.workspace_service_pb2_grpc import WorkspaceServiceAsyncStub

__all__ = ["AsyncClient", "connect"]


class AsyncClient:
    """A ``grpc.aio`` connection to a berth server: one channel and a stub per service.

    Create it with :func:`berth.aio.connect` (inside a running event loop). Close it with
    ``await client.close()``, or use it as an async context manager.
    """

    channel: grpc.aio.Channel
    """The underlying channel."""
    workspaces: WorkspaceServiceAsyncStub
    """WorkspaceService: create, get, list, start, stop and delete workspaces, and more."""
    files: FilesystemServiceAsyncStub
    """FilesystemService: read, write and list files of a workspace."""
    processes: ProcessServiceAsyncStub
    """ProcessService: run processes in a workspace and stream their output."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        """Wraps an existing channel (closed by :meth:`close`)."""
        self.channel = channel
        self.workspaces = WorkspaceServiceStub(channel)
        self.files = FilesystemServiceStub(channel)
        self.processes = ProcessServiceStub(channel)

    async def wait_ready(self) -> None:
        """Waits until the channel is connected (wrap in ``asyncio.wait_for`` for a timeout)."""
        await self.channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel; calls still in flight after ``grace`` seconds are cancelled."""
        await self.channel.close(grace)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def connect(
    addr: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions | None = None,
    token: Token | None = None,
    root_certificates: bytes | None = None,
) -> AsyncClient:
    """Opens a ``grpc.aio`` client to the berth server at ``addr``.

    Arguments are those of :func:`berth.connect`: ``host:port`` or ``http://host:port`` for
    plaintext, ``https://host:port`` for TLS (``credentials`` default to the system's roots,
    ``root_certificates`` replace them), or any other gRPC target; ``options`` are gRPC channel
    arguments; ``token`` is a bearer token (or a function returning one) sent with every call.

    Raises:
        ValueError: ``addr`` is malformed, or a token would go in plaintext beyond loopback.
    """
    target, creds = resolve_target(addr, credentials, root_certificates)
    creds = with_token(addr, target, creds, token)
    if creds is None:
        channel = grpc.aio.insecure_channel(target, options=options)
    else:
        channel = grpc.aio.secure_channel(target, creds, options=options)
    return AsyncClient(channel)
