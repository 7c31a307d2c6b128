"""The synchronous berth client."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from berth._auth import Token, with_token
from berth._target import resolve_target
from berth.workspace.v1.filesystem_service_pb2_grpc import FilesystemServiceStub
from berth.workspace.v1.process_service_pb2_grpc import ProcessServiceStub
from berth.workspace.v1.workspace_service_pb2_grpc import WorkspaceServiceStub

__all__ = ["Client", "connect"]

ChannelOptions = Sequence[tuple[str, Any]]
"""gRPC channel arguments, for example ``[("grpc.max_receive_message_length", 16 << 20)]``."""


class Client:
    """A connection to a berth server: one gRPC channel and a stub per service.

    Create it with :func:`berth.connect`. Calls raise ``grpc.RpcError``; read its code and
    reason with :func:`berth.error_info`. Close it with :meth:`close`, or use it as a context
    manager.
    """

    channel: grpc.Channel
    """The underlying channel."""
    workspaces: WorkspaceServiceStub
    """WorkspaceService: create, get, list, start, stop and delete workspaces, and more."""
    files: FilesystemServiceStub
    """FilesystemService: read, write and list files of a workspace."""
    processes: ProcessServiceStub
    """ProcessService: run processes in a workspace and stream their output."""

    def __init__(self, channel: grpc.Channel) -> None:
        """Wraps an existing channel (closed by :meth:`close`)."""
        self.channel = channel
        self.workspaces = WorkspaceServiceStub(channel)
        self.files = FilesystemServiceStub(channel)
        self.processes = ProcessServiceStub(channel)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Blocks until the channel is connected.

        Raises:
            grpc.FutureTimeoutError: the server could not be reached within ``timeout`` seconds.
        """
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect(
    addr: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: ChannelOptions | None = None,
    token: Token | None = None,
    root_certificates: bytes | None = None,
) -> Client:
    """Opens a client to the berth server at ``addr``.

    Args:
        addr: ``host:port`` or ``http://host:port`` for plaintext (berth's default,
            ``127.0.0.1:50051``), ``https://host:port`` for TLS, or any other gRPC target
            (``unix:/path``).
        credentials: channel credentials for TLS (``grpc.ssl_channel_credentials(...)``). With
            ``https://`` they default to the system's root certificates.
        options: gRPC channel arguments.
        token: a bearer token for a berth that checks tokens (``berth serve --tokens-file``;
            ``berth token create`` makes them), or a function returning the current one, asked
            before every call. It is sent as call credentials, so over TLS, or in plaintext to
            a loopback or unix socket address only.
        root_certificates: PEM CA certificates to trust instead of the system's (a private CA);
            implies TLS for ``host:port`` addresses too.

    The channel connects lazily: an unreachable server shows up as ``UNAVAILABLE`` on the first
    call (or use :meth:`Client.wait_ready`). For anything else (interceptors, a channel of your
    own), build the channel yourself and wrap it: ``berth.Client(channel)``.

    Raises:
        ValueError: ``addr`` is malformed, or a token would go in plaintext beyond loopback.
    """
    target, creds = resolve_target(addr, credentials, root_certificates)
    creds = with_token(addr, target, creds, token)
    if creds is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        channel = grpc.secure_channel(target, creds, options=options)
    return Client(channel)
