"""Reading and writing a whole file of a workspace in one call: :func:`read_file` collects a
ReadFile stream, :func:`write_file` sends the content in one client-streaming WriteFile call.
Both take a :class:`berth.Client`; the ``berth.aio`` forms :func:`read_file_async` and
:func:`write_file_async` take a :class:`berth.aio.AsyncClient`.

The workspace may be running or stopped. A write replaces the file atomically: readers inside
the workspace see the old content or the new one, never a mix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, overload

from berth.workspace.v1 import filesystem_service_pb2 as fs

if TYPE_CHECKING:
    from berth._client import Client
    from berth.aio import AsyncClient

__all__ = ["read_file", "read_file_async", "write_file", "write_file_async"]

_CHUNK_BYTES = 1 << 20
"""Bytes per WriteFile message: the size of the server's own ReadFile chunks."""


class _Collector:
    """Accumulates a ReadFile stream's content."""

    def __init__(self, workspace_id: str, path: str) -> None:
        self.workspace_id = workspace_id
        self.path = path
        self.content = bytearray()
        self.described = False

    def add(self, response: fs.ReadFileResponse) -> None:
        event = response.WhichOneof("event")
        if event == "entry":
            self.described = True
        elif event == "chunk":
            self.content.extend(response.chunk)

    def result(self, encoding: str | None, errors: str) -> bytes | str:
        if not self.described:
            raise RuntimeError(
                f"ReadFile of {self.path!r} in {self.workspace_id!r} ended without describing the file"
            )
        if encoding is None:
            return bytes(self.content)
        return self.content.decode(encoding, errors)


def _write_requests(
    workspace_id: str,
    path: str,
    data: bytes | str,
    mode: int,
    expected_revision: str,
    create_parents: bool,
    encoding: str,
) -> Iterator[fs.WriteFileRequest]:
    content = data.encode(encoding) if isinstance(data, str) else data
    header = fs.WriteFileRequest.Header(
        workspace_id=workspace_id,
        path=path,
        mode=mode,
        expected_revision=expected_revision,
        create_parents=create_parents,
    )
    yield fs.WriteFileRequest(header=header)
    view = memoryview(content)
    for offset in range(0, len(content), _CHUNK_BYTES):
        yield fs.WriteFileRequest(chunk=bytes(view[offset : offset + _CHUNK_BYTES]))


def _entry(response: fs.WriteFileResponse, workspace_id: str, path: str) -> fs.EntryInfo:
    if not response.HasField("entry"):
        raise RuntimeError(f"the write of {path!r} in {workspace_id!r} returned no entry")
    return response.entry


@overload
def read_file(
    client: Client, workspace_id: str, path: str, *, timeout: float | None = None
) -> bytes: ...
@overload
def read_file(
    client: Client,
    workspace_id: str,
    path: str,
    *,
    encoding: str,
    errors: str = "strict",
    timeout: float | None = None,
) -> str: ...
def read_file(
    client: Client,
    workspace_id: str,
    path: str,
    *,
    encoding: str | None = None,
    errors: str = "strict",
    timeout: float | None = None,
) -> bytes | str:
    """Reads a whole regular file of a workspace: its bytes, or with ``encoding`` its text
    (decoded with ``errors`` as in :meth:`bytes.decode`).

    Raises:
        grpc.RpcError: the call failed (read it with :func:`berth.error_info`); a missing file
            is ``NOT_FOUND`` with reason ``PATH_NOT_FOUND``, a directory
            ``FAILED_PRECONDITION`` with ``IS_A_DIRECTORY``.
        UnicodeDecodeError: with ``encoding``, the content is not text in it.
    """
    collector = _Collector(workspace_id, path)
    request = fs.ReadFileRequest(workspace_id=workspace_id, path=path)
    for response in client.files.ReadFile(request, timeout=timeout):
        collector.add(response)
    return collector.result(encoding, errors)


def write_file(
    client: Client,
    workspace_id: str,
    path: str,
    data: bytes | str,
    *,
    mode: int = 0,
    expected_revision: str = "",
    create_parents: bool = False,
    encoding: str = "utf-8",
    timeout: float | None = None,
) -> fs.EntryInfo:
    """Creates or replaces a file of a workspace with ``data`` (a ``str`` is encoded with
    ``encoding``) and returns the file as written, with its new ``revision``.

    Args:
        mode: permission bits such as ``0o600``; 0 keeps the mode of the file being replaced,
            or uses 0644 for a new file.
        expected_revision: the ``revision`` (of an ``EntryInfo``) the file must still have;
            empty writes unconditionally.
        create_parents: create missing parent directories (mode 0755).

    Raises:
        grpc.RpcError: the call failed (read it with :func:`berth.error_info`); an
            ``expected_revision`` that no longer matches is ``ABORTED`` with reason
            ``REVISION_MISMATCH`` (the file is left as it was), a missing parent directory
            ``NOT_FOUND`` with ``PATH_NOT_FOUND``.
    """
    requests = _write_requests(
        workspace_id, path, data, mode, expected_revision, create_parents, encoding
    )
    return _entry(client.files.WriteFile(requests, timeout=timeout), workspace_id, path)


@overload
async def read_file_async(
    client: AsyncClient, workspace_id: str, path: str, *, timeout: float | None = None
) -> bytes: ...
@overload
async def read_file_async(
    client: AsyncClient,
    workspace_id: str,
    path: str,
    *,
    encoding: str,
    errors: str = "strict",
    timeout: float | None = None,
) -> str: ...
async def read_file_async(
    client: AsyncClient,
    workspace_id: str,
    path: str,
    *,
    encoding: str | None = None,
    errors: str = "strict",
    timeout: float | None = None,
) -> bytes | str:
    """The ``asyncio`` form of :func:`read_file`."""
    collector = _Collector(workspace_id, path)
    request = fs.ReadFileRequest(workspace_id=workspace_id, path=path)
    async for response in client.files.ReadFile(request, timeout=timeout):
        collector.add(response)
    return collector.result(encoding, errors)


async def write_file_async(
    client: AsyncClient,
    workspace_id: str,
    path: str,
    data: bytes | str,
    *,
    mode: int = 0,
    expected_revision: str = "",
    create_parents: bool = False,
    encoding: str = "utf-8",
    timeout: float | None = None,
) -> fs.EntryInfo:
    """The ``asyncio`` form of :func:`write_file`."""
    requests = _write_requests(
        workspace_id, path, data, mode, expected_revision, create_parents, encoding
    )
    return _entry(await client.files.WriteFile(requests, timeout=timeout), workspace_id, path)
