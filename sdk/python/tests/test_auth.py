"""Tokens and TLS, sync and grpc.aio: against the berth with a tokens file and a certificate
from a test CA (scripts/test-sdks.sh), a token authenticates, none is UNAUTHENTICATED, a read
token outside its scope is PERMISSION_DENIED, a token function is asked per call; a token goes
over plaintext to loopback only."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from conftest import TlsServer

import berth
import berth.aio
from berth import workspace_service_pb2 as ws

TIMEOUT = 30.0


def _get(workspace_id: str) -> ws.GetWorkspaceRequest:
    return ws.GetWorkspaceRequest(workspace_id=workspace_id)


def _reason(err: grpc.RpcError) -> tuple[grpc.StatusCode, str | None]:
    info = berth.error_info(err)
    assert info is not None, err
    return info.code, info.reason


def test_sync_token_over_tls(tls_server: TlsServer) -> None:
    with berth.connect(
        tls_server.addr, token=tls_server.token, root_certificates=tls_server.ca
    ) as client:
        client.workspaces.ListWorkspaces(ws.ListWorkspacesRequest(), timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError) as missing:
            client.workspaces.GetWorkspace(_get("sdk-tls-missing"), timeout=TIMEOUT)
        assert _reason(missing.value) == (grpc.StatusCode.NOT_FOUND, "WORKSPACE_NOT_FOUND")
    with berth.connect(tls_server.addr, root_certificates=tls_server.ca) as anonymous:
        with pytest.raises(grpc.RpcError) as refused:
            anonymous.workspaces.ListWorkspaces(ws.ListWorkspacesRequest(), timeout=TIMEOUT)
        assert _reason(refused.value) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


def test_sync_token_function_and_scope(tls_server: TlsServer) -> None:
    asked: list[int] = []

    def token() -> str:
        asked.append(1)
        return tls_server.read_token

    with berth.connect(tls_server.addr, token=token, root_certificates=tls_server.ca) as reader:
        with pytest.raises(grpc.RpcError) as denied:
            reader.workspaces.GetWorkspace(_get("sdk-tls-elsewhere"), timeout=TIMEOUT)
        assert _reason(denied.value) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
        with pytest.raises(grpc.RpcError) as own:
            reader.workspaces.GetWorkspace(_get("sdk-tls-reader"), timeout=TIMEOUT)
        assert _reason(own.value)[0] == grpc.StatusCode.NOT_FOUND
    assert len(asked) == 2


@pytest.mark.asyncio
async def test_aio_token_over_tls(tls_server: TlsServer) -> None:
    async with berth.aio.connect(
        tls_server.addr, token=tls_server.token, root_certificates=tls_server.ca
    ) as client:
        await client.workspaces.ListWorkspaces(ws.ListWorkspacesRequest(), timeout=TIMEOUT)
    async with berth.aio.connect(tls_server.addr, root_certificates=tls_server.ca) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await anonymous.workspaces.ListWorkspaces(ws.ListWorkspacesRequest(), timeout=TIMEOUT)
        assert _reason(refused.value) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    async with berth.aio.connect(
        tls_server.addr, token=tls_server.read_token, root_certificates=tls_server.ca
    ) as reader:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await reader.workspaces.StopWorkspace(
                ws.StopWorkspaceRequest(workspace_id="sdk-tls-reader"), timeout=TIMEOUT
            )
        assert _reason(denied.value) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


def test_the_system_roots_do_not_trust_the_test_ca(tls_server: TlsServer) -> None:
    with berth.connect(tls_server.addr, token=tls_server.token) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.workspaces.ListWorkspaces(ws.ListWorkspacesRequest(), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_token_goes_in_plaintext_to_loopback_only(server: str) -> None:
    # The plain test server checks no tokens: the call shows the token reached it over h2c.
    with berth.connect(server, token="berth_unchecked") as client:
        client.workspaces.ListWorkspaces(ws.ListWorkspacesRequest(), timeout=TIMEOUT)
    for addr in ("http://192.0.2.1:50051", "berth.example:50051"):
        with pytest.raises(ValueError, match="loopback"):
            berth.connect(addr, token="berth_x")
    with pytest.raises(ValueError, match="not both"):
        berth.connect(
            "https://localhost:1", credentials=grpc.ssl_channel_credentials(), root_certificates=b"x"
        )
