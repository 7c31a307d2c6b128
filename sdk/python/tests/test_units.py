"""Parts of the SDK that need no berth server: addresses and error decoding."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

import berth
from berth._target import resolve_target


@pytest.mark.parametrize(
    ("addr", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("http://127.0.0.1:50051", "127.0.0.1:50051"),
        ("http://127.0.0.1:50051/", "127.0.0.1:50051"),
        ("HTTP://localhost:7", "localhost:7"),
        ("http://berth.example", "berth.example:80"),
        ("http://[::1]:50051", "[::1]:50051"),
        ("unix:/run/berth.sock", "unix:/run/berth.sock"),
        ("dns:///berth.example:443", "dns:///berth.example:443"),
    ],
)
def test_plaintext_targets(addr: str, target: str) -> None:
    assert resolve_target(addr, None) == (target, None)


def test_https_uses_tls() -> None:
    target, creds = resolve_target("https://berth.example", None)
    assert target == "berth.example:443"
    assert isinstance(creds, grpc.ChannelCredentials)
    mine = grpc.ssl_channel_credentials()
    assert resolve_target("https://berth.example:8443", mine) == ("berth.example:8443", mine)
    assert resolve_target("berth.example:8443", mine) == ("berth.example:8443", mine)


@pytest.mark.parametrize(
    "addr", ["", "  ", "http://", "http://host:1/prefix", "http://host:99999", "http://host:1?x=1"]
)
def test_malformed_addresses(addr: str) -> None:
    with pytest.raises(ValueError):
        berth.connect(addr)


def test_http_with_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="plaintext"):
        berth.connect("http://127.0.0.1:1", credentials=grpc.ssl_channel_credentials())


def _aio_error(
    code: grpc.StatusCode, message: str, *details: Message, status_code: int | None = None
) -> grpc.aio.AioRpcError:
    status = status_pb2.Status(code=code.value[0] if status_code is None else status_code,
                               message=message)  # fmt: skip
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


def test_error_info_reads_berth_error_info() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="PATH_NOT_FOUND", domain="berth.dev", metadata={"path": "/data/x"}
    )
    err = _aio_error(grpc.StatusCode.NOT_FOUND, "no /data/x", error_details_pb2.RetryInfo(), info)
    got = berth.error_info(err)
    assert got == berth.BerthError(
        code=grpc.StatusCode.NOT_FOUND,
        message="no /data/x",
        reason="PATH_NOT_FOUND",
        metadata={"path": "/data/x"},
    )
    assert got.status is not None and len(got.status.details) == 2
    assert got.error_reason == berth.error_reason_pb2.PATH_NOT_FOUND
    assert str(got) == "NOT_FOUND PATH_NOT_FOUND: no /data/x"
    assert berth.is_reason(err, "PATH_NOT_FOUND")
    same = berth.BerthError(grpc.StatusCode.NOT_FOUND, "no /data/x", "PATH_NOT_FOUND")
    assert hash(got) == hash(same)


def test_error_info_of_another_domain_has_no_reason() -> None:
    info = error_details_pb2.ErrorInfo(reason="QUOTA", domain="example.com")
    got = berth.error_info(_aio_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", info))
    assert got is not None
    assert (got.code, got.reason, got.status is not None) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, None, True
    )
    assert str(got) == "RESOURCE_EXHAUSTED: quota"


def test_error_info_of_unknown_reason() -> None:
    info = error_details_pb2.ErrorInfo(reason="SOMETHING_NEW", domain="berth.dev")
    got = berth.error_info(_aio_error(grpc.StatusCode.ABORTED, "new", info))
    assert got is not None and got.reason == "SOMETHING_NEW" and got.error_reason is None


def test_error_info_keeps_the_call_status_when_details_contradict_it() -> None:
    info = error_details_pb2.ErrorInfo(reason="WORKSPACE_NOT_FOUND", domain="berth.dev")
    err = _aio_error(grpc.StatusCode.INTERNAL, "boom", info, status_code=5)
    got = berth.error_info(err)
    assert got == berth.BerthError(code=grpc.StatusCode.INTERNAL, message="boom")


def test_error_info_with_garbage_details() -> None:
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\xff garbage"))
    err = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), trailing, "bad")
    assert berth.error_info(err) == berth.BerthError(grpc.StatusCode.INTERNAL, "bad")


def test_error_info_without_details() -> None:
    err = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), None, "down")
    assert berth.error_info(err) == berth.BerthError(grpc.StatusCode.UNAVAILABLE, "down")


def test_error_info_of_other_exceptions() -> None:
    assert berth.error_info(ValueError("x")) is None
    assert berth.error_info(grpc.RpcError()) is None
    assert not berth.is_reason(ValueError("x"), "WORKSPACE_NOT_FOUND")


def test_unreachable_server_is_unavailable_without_reason() -> None:
    with berth.connect("127.0.0.1:1") as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.workspaces.ListWorkspaces(berth.workspace_service_pb2.ListWorkspacesRequest(),
                                             timeout=10)  # fmt: skip
    got = berth.error_info(caught.value)
    assert got is not None
    assert got.code == grpc.StatusCode.UNAVAILABLE and got.reason is None


def test_write_file_requests_are_a_header_then_chunks_of_at_most_1_mib() -> None:
    from berth.files import _write_requests

    payload = bytes(range(256)) * ((3 << 20) // 256) + b"tail"
    requests = list(_write_requests("bot-1", "/data/f", payload, 0o640, "rev", True, "utf-8"))
    header = requests[0]
    assert header.WhichOneof("event") == "header"
    assert (header.header.workspace_id, header.header.path) == ("bot-1", "/data/f")
    assert (header.header.mode, header.header.expected_revision) == (0o640, "rev")
    assert header.header.create_parents
    chunks = [r.chunk for r in requests[1:]]
    assert all(r.WhichOneof("event") == "chunk" for r in requests[1:])
    assert [len(c) for c in chunks] == [1 << 20, 1 << 20, 1 << 20, 4]
    assert b"".join(chunks) == payload

    text = list(_write_requests("bot-1", "/data/t", "é", 0, "", False, "latin-1"))
    assert [r.chunk for r in text[1:]] == [b"\xe9"]
    empty = list(_write_requests("bot-1", "/data/e", b"", 0, "", False, "utf-8"))
    assert [r.WhichOneof("event") for r in empty] == ["header"]
