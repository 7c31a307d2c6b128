"""Moving a directory of a workspace (``/data`` by default) out and in as one archive (tar +
gzip or zstd): :func:`export_data` writes an ExportData stream to a file (or a path) and checks
it against the stream's trailer, :func:`import_data` sends an archive from a file, a path,
bytes or an iterable of chunks in one client-streaming ImportData call. Both take a
:class:`berth.Client`; the ``berth.aio`` forms :func:`export_data_async` and
:func:`import_data_async` take a :class:`berth.aio.AsyncClient`.

The workspace may be running or stopped. An import is path-safe (no ``..``, absolute names or
writes through symlinks; device nodes and FIFOs are refused) and nothing becomes visible before
the whole archive arrived and checked out.

    with open("bot-1-data.tar.gz", "wb") as out:
        trailer = berth.export_data(client, "bot-1", out)
    berth.import_data(client, "bot-2", "bot-1-data.tar.gz", replace=True, sha256=trailer.sha256)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

import grpc

from berth.workspace.v1 import workspace_pb2
from berth.workspace.v1 import workspace_service_pb2 as ws

if TYPE_CHECKING:
    from berth._client import Client
    from berth.aio import AsyncClient

__all__ = [
    "ArchiveIntegrityError",
    "export_data",
    "export_data_async",
    "import_data",
    "import_data_async",
]

_CHUNK_BYTES = 1 << 20
"""Bytes per ImportData message: the size of the server's own ExportData chunks."""

ArchiveFormat: TypeAlias = workspace_pb2.ArchiveFormat.ValueType
"""``ARCHIVE_FORMAT_TAR_GZIP`` or ``ARCHIVE_FORMAT_TAR_ZSTD``; ``ARCHIVE_FORMAT_UNSPECIFIED`` means
gzip for an export and, for an import, the format the archive's first bytes show."""


@runtime_checkable
class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


@runtime_checkable
class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


Destination: TypeAlias = "_Writable | str | os.PathLike[str]"
"""Where :func:`export_data` writes the archive: a binary file object (anything with
``write(bytes)``) or the path of a file to create (removed again when the export fails)."""

Source: TypeAlias = "bytes | bytearray | memoryview | _Readable | str | os.PathLike[str] | Iterable[bytes]"
"""What :func:`import_data` sends: the archive's bytes, a binary file object (anything with
``read(size)``), the path of a file, or an iterable of byte chunks."""


class ArchiveIntegrityError(Exception):
    """An export's bytes do not match its trailer (size or SHA-256), or the stream ended without
    a trailer: what was written is incomplete or corrupt and must be discarded. Nothing on the
    server is wrong; export again."""

    def __init__(
        self,
        message: str,
        *,
        expected_size: int | None,
        expected_sha256: str | None,
        received_size: int,
        received_sha256: str,
    ) -> None:
        super().__init__(message)
        self.expected_size = expected_size
        """The trailer's size in bytes; None when the stream ended without a trailer."""
        self.expected_sha256 = expected_sha256
        """The trailer's SHA-256; None when the stream ended without a trailer."""
        self.received_size = received_size
        """The bytes received."""
        self.received_sha256 = received_sha256
        """The SHA-256 of the bytes received."""


class _ExportCheck:
    """Hashes an export's chunks and checks them against its trailer."""

    def __init__(self, workspace_id: str) -> None:
        self.workspace_id = workspace_id
        self.hash = hashlib.sha256()
        self.received = 0
        self.trailer: ws.ExportDataResponse.Trailer | None = None

    def chunk(self, response: ws.ExportDataResponse) -> bytes | None:
        """The chunk a response carries (None for the trailer, which is kept)."""
        event = response.WhichOneof("event")
        if event == "trailer":
            self.trailer = response.trailer
            return None
        if event != "chunk":
            return None
        if self.trailer is not None:
            raise self._error("sent archive bytes after its trailer")
        self.hash.update(response.chunk)
        self.received += len(response.chunk)
        return response.chunk

    def result(self) -> ws.ExportDataResponse.Trailer:
        trailer = self.trailer
        if trailer is None:
            raise self._error("ended without its trailer")
        actual = self.hash.hexdigest()
        if trailer.size_bytes != self.received or trailer.sha256 != actual:
            raise ArchiveIntegrityError(
                f"the export of {self.workspace_id!r} is corrupt: received {self.received} bytes "
                f"with sha256 {actual}, the trailer says {trailer.size_bytes} bytes with sha256 "
                f"{trailer.sha256}; discard it and export again",
                expected_size=trailer.size_bytes,
                expected_sha256=trailer.sha256,
                received_size=self.received,
                received_sha256=actual,
            )
        return trailer

    def _error(self, what: str) -> ArchiveIntegrityError:
        return ArchiveIntegrityError(
            f"the export of {self.workspace_id!r} {what} after {self.received} bytes; discard "
            "what was received and export again",
            expected_size=None if self.trailer is None else self.trailer.size_bytes,
            expected_sha256=None if self.trailer is None else self.trailer.sha256,
            received_size=self.received,
            received_sha256=self.hash.hexdigest(),
        )


def _export_request(workspace_id: str, path: str, format: ArchiveFormat) -> ws.ExportDataRequest:
    return ws.ExportDataRequest(workspace_id=workspace_id, path=path, format=format)


def _import_header(
    workspace_id: str, path: str, format: ArchiveFormat, replace: bool, sha256: str
) -> ws.ImportDataRequest.Header:
    return ws.ImportDataRequest.Header(
        workspace_id=workspace_id, path=path, format=format, replace=replace, sha256=sha256
    )


def _chunks_of(source: Source) -> Iterator[bytes]:
    """The archive's bytes from ``source``, in chunks of at most ``_CHUNK_BYTES``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source).cast("B")
        for offset in range(0, len(view), _CHUNK_BYTES):
            yield bytes(view[offset : offset + _CHUNK_BYTES])
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            yield from _read_chunks(file)
    elif isinstance(source, _Readable):
        yield from _read_chunks(source)
    else:
        yield from _rechunk(source)


def _read_chunks(file: _Readable) -> Iterator[bytes]:
    while chunk := file.read(_CHUNK_BYTES):
        yield chunk


def _rechunk(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Joins small pieces and splits large ones into chunks of at most ``_CHUNK_BYTES``."""
    pending = bytearray()
    for piece in pieces:
        pending += piece
        while len(pending) >= _CHUNK_BYTES:
            yield bytes(pending[:_CHUNK_BYTES])
            del pending[:_CHUNK_BYTES]
    if pending:
        yield bytes(pending)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
"""The first bytes of every zstd frame."""


class _Requests:
    """The messages of an ImportData call: the header (with the format the first chunk shows when
    none was asked for, so the first chunk is read before it), then the chunks. An error of the
    source is kept in ``error``: grpcio would turn it into a bare status (and log it), so the
    helpers raise it instead."""

    def __init__(self, header: ws.ImportDataRequest.Header, source: Source | AsyncIterable[bytes]) -> None:
        self.header = header
        self.source = source
        self.error: Exception | None = None
        self._call: grpc.Future[ws.ImportDataResponse] | None = None
        self._call_started = threading.Event()

    def _header_for(self, first: bytes) -> ws.ImportDataRequest:
        if self.header.format == workspace_pb2.ARCHIVE_FORMAT_UNSPECIFIED:
            zstd = first.startswith(_ZSTD_MAGIC)
            self.header.format = (
                workspace_pb2.ARCHIVE_FORMAT_TAR_ZSTD if zstd else workspace_pb2.ARCHIVE_FORMAT_TAR_GZIP
            )
        return ws.ImportDataRequest(header=self.header)

    def _messages(self) -> Iterator[ws.ImportDataRequest]:
        if isinstance(self.source, AsyncIterable):
            raise TypeError("import_data takes no async iterable: use import_data_async")
        chunks = _chunks_of(self.source)
        first = next(chunks, b"")
        yield self._header_for(first)
        if first:
            yield ws.ImportDataRequest(chunk=first)
        for chunk in chunks:
            yield ws.ImportDataRequest(chunk=chunk)

    def for_call(self) -> Iterator[ws.ImportDataRequest]:
        """The messages for a synchronous call (iterated on grpcio's thread). An error of the
        source cancels the call (see :meth:`started`), so the server discards what it got."""
        try:
            yield from self._messages()
        except Exception as err:
            self.error = err
            self._call_started.wait()
            if self._call is not None:
                self._call.cancel()

    def started(self, call: grpc.Future[ws.ImportDataResponse]) -> None:
        """Names the call :meth:`for_call` feeds, for it to cancel."""
        self._call = call
        self._call_started.set()

    async def __aiter__(self) -> AsyncIterator[ws.ImportDataRequest]:
        try:
            if isinstance(self.source, AsyncIterable):
                chunks = _arechunk(self.source)
                first = await anext(chunks, b"")
                yield self._header_for(first)
                if first:
                    yield ws.ImportDataRequest(chunk=first)
                async for chunk in chunks:
                    yield ws.ImportDataRequest(chunk=chunk)
            else:
                for request in self._messages():
                    yield request
        except Exception as err:
            self.error = err
            raise


async def _arechunk(pieces: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    pending = bytearray()
    async for piece in pieces:
        pending += piece
        while len(pending) >= _CHUNK_BYTES:
            yield bytes(pending[:_CHUNK_BYTES])
            del pending[:_CHUNK_BYTES]
    if pending:
        yield bytes(pending)


def export_data(
    client: Client,
    workspace_id: str,
    destination: Destination,
    *,
    path: str = "",
    format: ArchiveFormat = workspace_pb2.ARCHIVE_FORMAT_UNSPECIFIED,
    timeout: float | None = None,
) -> ws.ExportDataResponse.Trailer:
    """Exports a directory of a workspace as a tar archive compressed with gzip (or zstd),
    writing its bytes to ``destination`` as they arrive, and returns the export's trailer
    (``size_bytes``, ``sha256``, ``entry_count``) once the bytes written matched it.

    Args:
        destination: a binary file object, or the path of a file to create (it is removed
            again when the export fails).
        path: absolute path of the directory inside the workspace; empty exports ``/data``.
        format: ``ARCHIVE_FORMAT_TAR_GZIP`` (the default) or ``ARCHIVE_FORMAT_TAR_ZSTD``.

    Raises:
        ArchiveIntegrityError: the bytes received do not match the trailer, or there was
            none; what was written is unusable.
        grpc.RpcError: the call failed (read it with :func:`berth.error_info`); a missing
            directory is ``NOT_FOUND`` with reason ``PATH_NOT_FOUND``.
        OSError: writing to ``destination`` failed (the export is cancelled).
    """
    if isinstance(destination, (str, os.PathLike)):
        target = Path(destination)
        try:
            with open(target, "wb") as file:
                return export_data(client, workspace_id, file, path=path, format=format, timeout=timeout)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    out = destination
    check = _ExportCheck(workspace_id)
    call = client.workspaces.ExportData(_export_request(workspace_id, path, format), timeout=timeout)
    try:
        for response in call:
            chunk = check.chunk(response)
            if chunk is not None:
                out.write(chunk)
    finally:
        call.cancel()  # a no-op after the end; stops the stream after an error
    return check.result()


def import_data(
    client: Client,
    workspace_id: str,
    source: Source,
    *,
    path: str = "",
    format: ArchiveFormat = workspace_pb2.ARCHIVE_FORMAT_UNSPECIFIED,
    replace: bool = False,
    sha256: str = "",
    timeout: float | None = None,
) -> ws.ImportDataResponse:
    """Extracts an archive (tar + gzip or zstd, as :func:`export_data` makes it) into a
    directory of a workspace and returns what the server received:
    ``size_bytes``, ``sha256`` and the ``entry_count`` extracted. The archive is streamed in
    1 MiB messages of one ImportData call.

    Args:
        source: the archive's bytes, a binary file object, the path of a file, or an iterable
            of byte chunks.
        path: absolute path of the directory to extract into, inside the workspace (created
            if missing); empty imports into ``/data``.
        format: ``ARCHIVE_FORMAT_TAR_GZIP`` or ``ARCHIVE_FORMAT_TAR_ZSTD``; unspecified, the
            archive's first bytes say (zstd's magic number, else gzip).
        replace: make the directory hold exactly the archive's contents (swapped in once the
            whole archive is extracted); otherwise entries replace those of the same path and
            others stay.
        sha256: the archive's expected SHA-256 (64 lowercase hex characters, as an export's
            trailer has it), checked before anything becomes visible; empty skips the check.

    Raises:
        grpc.RpcError: the call failed (read it with :func:`berth.error_info`); a ``sha256``
            that does not match is ``INVALID_ARGUMENT`` with reason ``CHECKSUM_MISMATCH``, an
            archive with unsafe entries ``FAILED_PRECONDITION`` with ``DATA_ARCHIVE_FAILED``,
            one past the server's limits ``RESOURCE_EXHAUSTED`` with ``RESOURCE_LIMIT_EXCEEDED``.
            Nothing changed then.
        OSError: reading ``source`` failed (the import is cancelled, nothing changed).
    """
    requests = _Requests(_import_header(workspace_id, path, format, replace, sha256), source)
    call = client.workspaces.ImportData.future(requests.for_call(), timeout=timeout)
    requests.started(call)
    try:
        return call.result()
    except (grpc.RpcError, grpc.FutureCancelledError):
        if requests.error is not None:
            raise requests.error from None
        raise
    finally:
        call.cancel()  # a no-op once the call ended; ends it when the wait was interrupted


async def export_data_async(
    client: AsyncClient,
    workspace_id: str,
    destination: Destination,
    *,
    path: str = "",
    format: ArchiveFormat = workspace_pb2.ARCHIVE_FORMAT_UNSPECIFIED,
    timeout: float | None = None,
) -> ws.ExportDataResponse.Trailer:
    """The ``asyncio`` form of :func:`export_data`. Writes to ``destination`` happen on the
    event loop's thread, as with any file object."""
    if isinstance(destination, (str, os.PathLike)):
        target = Path(destination)
        try:
            with open(target, "wb") as file:
                return await export_data_async(
                    client, workspace_id, file, path=path, format=format, timeout=timeout
                )
        except BaseException:
            target.unlink(missing_ok=True)
            raise
    out = destination
    check = _ExportCheck(workspace_id)
    call = client.workspaces.ExportData(_export_request(workspace_id, path, format), timeout=timeout)
    try:
        async for response in call:
            chunk = check.chunk(response)
            if chunk is not None:
                out.write(chunk)
    finally:
        call.cancel()
    return check.result()


async def import_data_async(
    client: AsyncClient,
    workspace_id: str,
    source: Source | AsyncIterable[bytes],
    *,
    path: str = "",
    format: ArchiveFormat = workspace_pb2.ARCHIVE_FORMAT_UNSPECIFIED,
    replace: bool = False,
    sha256: str = "",
    timeout: float | None = None,
) -> ws.ImportDataResponse:
    """The ``asyncio`` form of :func:`import_data`; ``source`` may also be an async iterable
    of byte chunks. Reads of a file object or path happen on the event loop's thread."""
    requests = _Requests(_import_header(workspace_id, path, format, replace, sha256), source)
    try:
        return await client.workspaces.ImportData(requests.__aiter__(), timeout=timeout)
    except (grpc.RpcError, asyncio.CancelledError):
        # grpc.aio cancels the call when the request iterator raises: the call then raises
        # CancelledError, which is the iterator's error.
        if requests.error is not None:
            raise requests.error from None
        raise
