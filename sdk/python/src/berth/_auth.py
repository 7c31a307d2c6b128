"""Bearer tokens and TLS settings of :func:`berth.connect` and :func:`berth.aio.connect`."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Union

import grpc

Token = Union[str, Callable[[], str]]
"""A bearer token, or a function returning the current one (asked before every call)."""


class _BearerToken(grpc.AuthMetadataPlugin):
    """Call credentials: ``authorization: Bearer <token>`` on every call."""

    def __init__(self, token: Token) -> None:
        self._token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            token = self._token() if callable(self._token) else self._token
        except Exception as err:  # the call fails with the source's error
            callback((), err)
            return
        callback((("authorization", f"Bearer {token}"),) if token else (), None)


def _is_loopback(target: str) -> bool:
    """Whether a ``host:port`` target names this machine (127.0.0.0/8, ::1, localhost)."""
    host = target.rpartition(":")[0] if not target.startswith("[") else target[1:].partition("]")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def with_token(
    addr: str, target: str, credentials: grpc.ChannelCredentials | None, token: Token | None
) -> grpc.ChannelCredentials | None:
    """The channel credentials for ``target`` with ``token`` added as call credentials.

    gRPC sends call credentials only over channels it considers secure: TLS, or its local
    credentials, which are plaintext but refuse any peer that is not on this machine. So a
    token goes over plaintext to a loopback (or unix socket) address only, never in clear across
    a network.

    Raises:
        ValueError: a token for a plaintext address that is not loopback.
    """
    if token is None:
        return credentials
    call_credentials = grpc.metadata_call_credentials(_BearerToken(token), name="berth-token")
    if credentials is None:
        if target.startswith("unix:"):
            credentials = grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
        elif _is_loopback(target):
            credentials = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        else:
            raise ValueError(
                f"a token is sent over plaintext only to loopback addresses, not to {addr!r}; "
                "use https:// (with root_certificates= for a private CA)"
            )
    return grpc.composite_channel_credentials(credentials, call_credentials)
