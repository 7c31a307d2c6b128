"""Turning a berth address into a gRPC target and channel credentials."""

from __future__ import annotations

from urllib.parse import urlsplit

import grpc


def resolve_target(
    addr: str,
    credentials: grpc.ChannelCredentials | None,
    root_certificates: bytes | None = None,
) -> tuple[str, grpc.ChannelCredentials | None]:
    """Returns the gRPC target for ``addr`` and the credentials to use (None means plaintext).

    ``addr`` is ``host:port`` (plaintext unless ``credentials`` are given),
    ``http://host:port`` (plaintext; port 80 when omitted) or ``https://host:port`` (TLS with
    ``credentials``, or the system's root certificates when None; port 443 when omitted).
    Other gRPC target forms (``unix:/path``, ``dns:///host:port``, ...) are passed through.
    ``root_certificates`` (PEM) means TLS trusting those CAs, for any form but ``http://``.

    Raises:
        ValueError: ``addr`` is empty, has a path, or is ``http://`` with credentials; or both
            ``credentials`` and ``root_certificates`` are given.
    """
    if root_certificates is not None:
        if credentials is not None:
            raise ValueError("pass credentials= or root_certificates=, not both")
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    addr = addr.strip()
    if not addr:
        raise ValueError("berth address is empty; expected host:port or http://host:port")
    scheme, sep, _ = addr.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        return addr, credentials
    url = urlsplit(addr)
    if not url.hostname:
        raise ValueError(f"berth address {addr!r} has no host")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"berth address {addr!r} has a path; gRPC serves at the root only")
    netloc = url.netloc.rpartition("@")[2]
    try:
        port = url.port
    except ValueError as err:
        raise ValueError(f"berth address {addr!r} has an invalid port") from err
    if port is None:
        netloc = f"{netloc}:{443 if scheme == 'https' else 80}"
    if scheme == "http":
        if credentials is not None:
            raise ValueError(
                f"berth address {addr!r} is plaintext (http://) but credentials were given; "
                "use https://"
            )
        return netloc, None
    return netloc, credentials if credentials is not None else grpc.ssl_channel_credentials()
