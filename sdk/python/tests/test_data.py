"""export_data and import_data against a live berth, sync and asyncio: a tree made inside a
workspace goes out as an archive that tarfile reads, comes back into another directory
identical, and a wrong checksum changes nothing."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from helpers import unique_id

import berth
import berth.aio
from berth import workspace_pb2
from berth import workspace_service_pb2 as ws

TIMEOUT = 60.0

# A small tree: a file with its own mode, a symlink, and in a subdirectory 1.5 MB of random
# bytes (they do not compress: more than one 1 MiB chunk each way).
MAKE_TREE = (
    "rm -rf /data/tree /data/copy && mkdir -p /data/tree/sub && printf 'hello\\n' > /data/tree/a.txt"
    " && chmod 640 /data/tree/a.txt && ln -s a.txt /data/tree/link"
    " && head -c 1500000 /dev/urandom > /data/tree/sub/r.bin"
)


def manifest_script(directory: str) -> str:
    """What a directory holds, as seen inside: names, types, modes, link targets and contents."""
    return (
        f"cd {directory} && find . | sort && stat -c '%n %F %a' a.txt link sub sub/r.bin"
        " && readlink link && sha256sum a.txt sub/r.bin"
    )


def check_archive(archive: bytes, trailer: ws.ExportDataResponse.Trailer, r_bin_sha256: str) -> None:
    """The trailer describes the bytes received, and tarfile reads the tree from them."""
    assert trailer.size_bytes == len(archive), trailer
    assert trailer.sha256 == hashlib.sha256(archive).hexdigest(), trailer
    assert trailer.entry_count == 4, trailer  # a.txt, link, sub, sub/r.bin
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = {member.name.rstrip("/"): member for member in tar.getmembers()}
        assert sorted(members) == ["a.txt", "link", "sub", "sub/r.bin"], sorted(members)
        assert members["a.txt"].isfile() and members["a.txt"].mode & 0o7777 == 0o640
        assert members["link"].issym() and members["link"].linkname == "a.txt"
        assert members["sub"].isdir()
        a_txt = tar.extractfile("a.txt")
        r_bin = tar.extractfile("sub/r.bin")
        assert a_txt is not None and r_bin is not None
        assert a_txt.read() == b"hello\n"
        assert hashlib.sha256(r_bin.read()).hexdigest() == r_bin_sha256


@pytest.fixture
def workspace(server: str, image: str) -> Iterator[str]:
    """A running workspace, deleted afterwards whatever happened."""
    workspace_id = unique_id("py-data")
    with berth.connect(server) as client:
        list(
            client.workspaces.CreateWorkspace(
                ws.CreateWorkspaceRequest(workspace_id=workspace_id, image=image), timeout=TIMEOUT
            )
        )
        try:
            yield workspace_id
        finally:
            try:
                client.workspaces.DeleteWorkspace(
                    ws.DeleteWorkspaceRequest(workspace_id=workspace_id), timeout=TIMEOUT
                )
            except grpc.RpcError as err:
                if not berth.is_reason(err, "WORKSPACE_NOT_FOUND"):
                    raise


def test_export_and_import(server: str, workspace: str, tmp_path: Path) -> None:
    with berth.connect(server) as client:

        def shell(script: str) -> str:
            result = berth.run(client, workspace, "sh", "-c", script)
            assert result.exit_code == 0, (script, result)
            return result.stdout.decode()

        shell(MAKE_TREE)
        tree = shell(manifest_script("/data/tree"))
        r_bin_sha256 = shell("sha256sum /data/tree/sub/r.bin").split()[0]

        # Into a file object.
        out = io.BytesIO()
        trailer = berth.export_data(client, workspace, out, path="/data/tree", timeout=TIMEOUT)
        archive = out.getvalue()
        check_archive(archive, trailer, r_bin_sha256)

        # From bytes into another directory (created by the import): the same tree inside.
        response = berth.import_data(
            client, workspace, archive, path="/data/copy", sha256=trailer.sha256, timeout=TIMEOUT
        )
        assert (response.size_bytes, response.sha256) == (len(archive), trailer.sha256)
        assert response.entry_count == 4
        assert shell(manifest_script("/data/copy")) == tree

        # zstd, through a file on disk, with replace: exactly the archive's tree again.
        zstd_path = tmp_path / "tree.tar.zst"
        zstd = workspace_pb2.ARCHIVE_FORMAT_TAR_ZSTD
        berth.export_data(client, workspace, zstd_path, path="/data/tree", format=zstd)
        assert zstd_path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd", "a zstd frame"
        shell("echo stray > /data/copy/stray.txt && rm /data/copy/a.txt")
        # The format is read from the archive's first bytes.
        berth.import_data(client, workspace, zstd_path, path="/data/copy", replace=True)
        assert shell(manifest_script("/data/copy")) == tree

        # A wrong sha256 fails before anything becomes visible.
        shell("echo marker > /data/copy/marker")
        with pytest.raises(grpc.RpcError) as mismatch:
            berth.import_data(
                client, workspace, archive, path="/data/copy", replace=True, sha256="0" * 64
            )
        info = berth.error_info(mismatch.value)
        assert info is not None
        assert (info.code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CHECKSUM_MISMATCH")
        assert shell("cat /data/copy/marker") == "marker\n"

        # A missing directory: its reason, and no file left at the path.
        missing = tmp_path / "missing.tar.gz"
        with pytest.raises(grpc.RpcError) as not_found:
            berth.export_data(client, workspace, missing, path="/data/no-such-dir")
        assert berth.is_reason(not_found.value, "PATH_NOT_FOUND")
        assert not missing.exists()


@pytest.mark.asyncio
async def test_export_and_import_async(server: str, workspace: str, tmp_path: Path) -> None:
    async with berth.aio.connect(server) as client:

        async def shell(script: str) -> str:
            result = await berth.run_async(client, workspace, "sh", "-c", script)
            assert result.exit_code == 0, (script, result)
            return result.stdout.decode()

        await shell(MAKE_TREE)
        tree = await shell(manifest_script("/data/tree"))
        r_bin_sha256 = (await shell("sha256sum /data/tree/sub/r.bin")).split()[0]

        # Into a path, imported from that path.
        path = tmp_path / "tree.tar.gz"
        trailer = await berth.export_data_async(client, workspace, path, path="/data/tree")
        check_archive(path.read_bytes(), trailer, r_bin_sha256)
        response = await berth.import_data_async(
            client, workspace, path, path="/data/copy", sha256=trailer.sha256
        )
        assert (response.size_bytes, response.entry_count) == (trailer.size_bytes, 4)
        assert await shell(manifest_script("/data/copy")) == tree

        await shell("echo marker > /data/copy/marker")
        with pytest.raises(grpc.aio.AioRpcError) as mismatch:
            await berth.import_data_async(
                client, workspace, path, path="/data/copy", replace=True, sha256="f" * 64
            )
        info = berth.error_info(mismatch.value)
        assert info is not None
        assert (info.code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CHECKSUM_MISMATCH")
        assert await shell("cat /data/copy/marker") == "marker\n"
