"""export_data and import_data against an in-process fake WorkspaceService: what they send, and
how they check an export's trailer. The live-server tests are in test_sync.py and test_aio.py."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import berth
import berth.aio
from berth import workspace_pb2
from berth import workspace_service_pb2 as ws
from berth import workspace_service_pb2_grpc as ws_grpc

MiB = 1 << 20


class FakeData(ws_grpc.WorkspaceServiceServicer):
    """Sends ``archive`` in 1 MiB chunks then ``trailer``; records what ImportData receives."""

    def __init__(self) -> None:
        self.archive = b""
        self.trailer: ws.ExportDataResponse.Trailer | None = None
        self.export_request: ws.ExportDataRequest | None = None
        self.header: ws.ImportDataRequest.Header | None = None
        self.chunk_sizes: list[int] = []
        self.imported = b""

    def ExportData(  # noqa: N802 (the generated servicer's name)
        self, request: ws.ExportDataRequest, context: grpc.ServicerContext
    ) -> Iterator[ws.ExportDataResponse]:
        self.export_request = request
        for offset in range(0, len(self.archive), MiB):
            yield ws.ExportDataResponse(chunk=self.archive[offset : offset + MiB])
        if self.trailer is not None:
            yield ws.ExportDataResponse(trailer=self.trailer)

    def ImportData(  # noqa: N802
        self, request_iterator: Iterator[ws.ImportDataRequest], context: grpc.ServicerContext
    ) -> ws.ImportDataResponse:
        first = next(request_iterator)
        self.header = first.header
        chunks = [request.chunk for request in request_iterator]
        self.chunk_sizes = [len(chunk) for chunk in chunks]
        self.imported = b"".join(chunks)
        return ws.ImportDataResponse(
            size_bytes=len(self.imported),
            sha256=hashlib.sha256(self.imported).hexdigest(),
            entry_count=5,
        )


def true_trailer(archive: bytes) -> ws.ExportDataResponse.Trailer:
    return ws.ExportDataResponse.Trailer(
        size_bytes=len(archive), sha256=hashlib.sha256(archive).hexdigest(), entry_count=3
    )


@pytest.fixture
def fake() -> Iterator[tuple[FakeData, str]]:
    # The stubs make every method of the servicer abstract; the fake serves two of them.
    servicer = FakeData()  # type: ignore[abstract]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ws_grpc.add_WorkspaceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_export_data_writes_the_chunks_and_returns_the_checked_trailer(
    fake: tuple[FakeData, str], tmp_path: Path
) -> None:
    servicer, addr = fake
    servicer.archive = os.urandom(2 * MiB + 9)
    servicer.trailer = true_trailer(servicer.archive)
    with berth.connect(addr) as client:
        out = io.BytesIO()
        trailer = berth.export_data(
            client, "bot-1", out, path="/data/sub", format=workspace_pb2.ARCHIVE_FORMAT_TAR_ZSTD
        )
        assert out.getvalue() == servicer.archive
        assert (trailer.size_bytes, trailer.entry_count) == (len(servicer.archive), 3)
        request = servicer.export_request
        assert request is not None
        assert (request.workspace_id, request.path) == ("bot-1", "/data/sub")
        assert request.format == workspace_pb2.ARCHIVE_FORMAT_TAR_ZSTD

        # Into a path.
        target = tmp_path / "data.tar.gz"
        berth.export_data(client, "bot-1", target)
        assert target.read_bytes() == servicer.archive


@pytest.mark.parametrize("tamper", ["sha256", "size", "missing"])
def test_export_data_refuses_bytes_that_do_not_match_the_trailer(
    fake: tuple[FakeData, str], tmp_path: Path, tamper: str
) -> None:
    servicer, addr = fake
    servicer.archive = os.urandom(5000)
    real = true_trailer(servicer.archive)
    if tamper == "sha256":
        real.sha256 = "0" * 64
    elif tamper == "size":
        real.size_bytes -= 1
    servicer.trailer = None if tamper == "missing" else real
    with berth.connect(addr) as client:
        with pytest.raises(berth.ArchiveIntegrityError) as caught:
            berth.export_data(client, "bot-1", io.BytesIO())
        err = caught.value
        assert err.received_size == 5000
        assert err.received_sha256 == hashlib.sha256(servicer.archive).hexdigest()
        if tamper == "missing":
            assert (err.expected_size, err.expected_sha256) == (None, None)
            assert "ended without its trailer after 5000 bytes" in str(err)
        else:
            assert (err.expected_size, err.expected_sha256) == (real.size_bytes, real.sha256)
            assert "is corrupt: received 5000 bytes with sha256" in str(err)
        # A path export that fails leaves no file behind.
        target = tmp_path / "corrupt.tar.gz"
        with pytest.raises(berth.ArchiveIntegrityError):
            berth.export_data(client, "bot-1", target)
        assert not target.exists()


def test_import_data_streams_a_header_then_1_mib_chunks_from_any_source(
    fake: tuple[FakeData, str], tmp_path: Path
) -> None:
    servicer, addr = fake
    archive = os.urandom(3 * MiB + 12345)
    with berth.connect(addr) as client:
        response = berth.import_data(
            client,
            "bot-1",
            archive,
            path="/data/in",
            format=workspace_pb2.ARCHIVE_FORMAT_TAR_ZSTD,
            replace=True,
            sha256=hashlib.sha256(archive).hexdigest(),
        )
        assert (response.size_bytes, response.entry_count) == (len(archive), 5)
        header = servicer.header
        assert header is not None
        assert (header.workspace_id, header.path, header.replace) == ("bot-1", "/data/in", True)
        assert header.format == workspace_pb2.ARCHIVE_FORMAT_TAR_ZSTD
        assert header.sha256 == hashlib.sha256(archive).hexdigest()
        assert servicer.chunk_sizes == [MiB, MiB, MiB, 12345]
        assert servicer.imported == archive

        # A path, a file object, and small pieces of an iterable: the same messages.
        path = tmp_path / "in.tar.gz"
        path.write_bytes(archive)
        pieces = [archive[i : i + 65536] for i in range(0, len(archive), 65536)]
        for source in (path, str(path), io.BytesIO(archive), iter(pieces)):
            berth.import_data(client, "bot-1", source)
            assert servicer.chunk_sizes == [MiB, MiB, MiB, 12345], source
            assert servicer.imported == archive, source
            header = servicer.header
            assert header is not None
            assert (header.path, header.replace, header.sha256) == ("", False, "")
            assert header.format == workspace_pb2.ARCHIVE_FORMAT_TAR_GZIP, "not zstd's magic: gzip"

        # Without a format, zstd's magic number in the first bytes means zstd; a format wins.
        zstd_like = b"\x28\xb5\x2f\xfd" + archive[:100]
        berth.import_data(client, "bot-1", zstd_like)
        assert servicer.header is not None
        assert servicer.header.format == workspace_pb2.ARCHIVE_FORMAT_TAR_ZSTD
        assert servicer.imported == zstd_like
        berth.import_data(client, "bot-1", zstd_like, format=workspace_pb2.ARCHIVE_FORMAT_TAR_GZIP)
        assert servicer.header.format == workspace_pb2.ARCHIVE_FORMAT_TAR_GZIP
        # Nothing at all: a header alone.
        berth.import_data(client, "bot-1", b"")
        assert servicer.chunk_sizes == []


class BrokenReader(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        raise OSError("the disk went away")


def test_import_data_raises_the_error_of_its_source(fake: tuple[FakeData, str]) -> None:
    _, addr = fake
    with berth.connect(addr) as client:
        with pytest.raises(OSError, match="the disk went away"):
            berth.import_data(client, "bot-1", BrokenReader())


@pytest.mark.asyncio
async def test_async_forms(fake: tuple[FakeData, str]) -> None:
    servicer, addr = fake
    servicer.archive = os.urandom(MiB + 1)
    servicer.trailer = true_trailer(servicer.archive)
    async with berth.aio.connect(addr) as client:
        out = io.BytesIO()
        trailer = await berth.export_data_async(client, "bot-1", out)
        assert out.getvalue() == servicer.archive and trailer.size_bytes == MiB + 1

        servicer.trailer = None
        with pytest.raises(berth.ArchiveIntegrityError):
            await berth.export_data_async(client, "bot-1", io.BytesIO())

        archive = b"\x28\xb5\x2f\xfd" + servicer.archive

        async def pieces() -> AsyncIterator[bytes]:
            for offset in range(0, len(archive), 1000):
                yield archive[offset : offset + 1000]

        response = await berth.import_data_async(client, "bot-1", pieces(), replace=True)
        assert response.size_bytes == len(archive)
        assert servicer.chunk_sizes == [MiB, 5] and servicer.imported == archive
        assert servicer.header is not None and servicer.header.replace
        assert servicer.header.format == workspace_pb2.ARCHIVE_FORMAT_TAR_ZSTD
        await berth.import_data_async(client, "bot-1", io.BytesIO(archive[4:]))
        assert servicer.header.format == workspace_pb2.ARCHIVE_FORMAT_TAR_GZIP
        assert servicer.imported == archive[4:]

        with pytest.raises(OSError, match="the disk went away"):
            await berth.import_data_async(client, "bot-1", BrokenReader())
