"""Python SDK of berth: persistent Linux workspaces (containerd containers) over gRPC.

    import berth
    from berth import workspace_service_pb2 as ws

    with berth.connect("127.0.0.1:50051") as client:
        for event in client.workspaces.CreateWorkspace(
            ws.CreateWorkspaceRequest(workspace_id="bot-1", image="debian:bookworm")
        ):
            print(event.WhichOneof("event"))

:func:`connect` gives a synchronous :class:`Client`, :func:`berth.aio.connect` an asyncio one.
Their ``workspaces``, ``files`` and ``processes`` are the generated gRPC stubs; the request and
response messages are in the re-exported ``*_pb2`` modules (generated from
``proto/berth/workspace/v1``). :func:`run` / :func:`stream` run commands, :func:`read_file` /
:func:`write_file` move whole files, :func:`export_data` / :func:`import_data` move a directory
out and in as an archive (all with ``_async`` forms for :mod:`berth.aio`), and
:func:`error_info` reads the status code and berth's ErrorInfo reason of a failed call.
"""

from berth import aio as aio
from berth._auth import Token as Token
from berth._client import ChannelOptions as ChannelOptions
from berth._client import Client as Client
from berth._client import connect as connect
from berth.commands import CommandResult as CommandResult
from berth.commands import Output as Output
from berth.commands import run as run
from berth.commands import run_async as run_async
from berth.commands import stream as stream
from berth.commands import stream_async as stream_async
from berth.data import ArchiveIntegrityError as ArchiveIntegrityError
from berth.data import export_data as export_data
from berth.data import export_data_async as export_data_async
from berth.data import import_data as import_data
from berth.data import import_data_async as import_data_async
from berth.errors import ERROR_DOMAIN as ERROR_DOMAIN
from berth.errors import BerthError as BerthError
from berth.errors import error_info as error_info
from berth.errors import is_reason as is_reason
from berth.files import read_file as read_file
from berth.files import read_file_async as read_file_async
from berth.files import write_file as write_file
from berth.files import write_file_async as write_file_async
from berth.workspace.v1 import error_reason_pb2 as error_reason_pb2
from berth.workspace.v1 import filesystem_service_pb2 as filesystem_service_pb2
from berth.workspace.v1 import filesystem_service_pb2_grpc as filesystem_service_pb2_grpc
from berth.workspace.v1 import process_service_pb2 as process_service_pb2
from berth.workspace.v1 import process_service_pb2_grpc as process_service_pb2_grpc
from berth.workspace.v1 import workspace_pb2 as workspace_pb2
from berth.workspace.v1 import workspace_service_pb2 as workspace_service_pb2
from berth.workspace.v1 import workspace_service_pb2_grpc as workspace_service_pb2_grpc

__version__ = "0.1.0"

__all__ = [
    "ERROR_DOMAIN",
    "ArchiveIntegrityError",
    "BerthError",
    "ChannelOptions",
    "Client",
    "CommandResult",
    "Output",
    "Token",
    "aio",
    "connect",
    "error_info",
    "error_reason_pb2",
    "export_data",
    "export_data_async",
    "filesystem_service_pb2",
    "filesystem_service_pb2_grpc",
    "import_data",
    "import_data_async",
    "is_reason",
    "process_service_pb2",
    "process_service_pb2_grpc",
    "read_file",
    "read_file_async",
    "run",
    "run_async",
    "stream",
    "stream_async",
    "workspace_pb2",
    "workspace_service_pb2",
    "workspace_service_pb2_grpc",
    "write_file",
    "write_file_async",
]
