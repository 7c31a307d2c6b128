"""Running commands in a workspace: :func:`run` collects a command's output and exit status,
:func:`stream` yields its output as it arrives. Both take a :class:`berth.Client`; the
``berth.aio`` forms :func:`run_async` and :func:`stream_async` take a
:class:`berth.aio.AsyncClient`.

The process runs detached on the server: leaving the loop (or a timeout of the call) does not
end it. Bound it with ``timeout`` instead, which makes berth SIGKILL it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf.duration_pb2 import Duration

from berth.workspace.v1 import process_service_pb2 as ps

if TYPE_CHECKING:
    from berth._client import Client
    from berth.aio import AsyncClient

__all__ = ["CommandResult", "Output", "run", "run_async", "stream", "stream_async"]


@dataclass(frozen=True)
class CommandResult:
    """What a command run to its end produced."""

    stdout: bytes
    """Everything the process wrote to stdout (or its pseudo-terminal)."""
    stderr: bytes
    """Everything the process wrote to stderr."""
    exit_code: int
    """Exit status; 128+n when signal n ended it, -1 when berth could not learn it."""
    signal: int
    """The ``Signal`` that ended the process; ``SIGNAL_UNSPECIFIED`` (0) when it exited itself."""
    error: str
    """Why berth ended the process (its timeout passed, the workspace stopped); empty otherwise."""


@dataclass(frozen=True)
class Output:
    """One chunk of output: ``channel`` is ``"stdout"``, ``"stderr"`` or ``"pty"``."""

    channel: str
    data: bytes


def _request(
    workspace_id: str,
    cmd: str,
    args: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str,
    user: str,
    timeout: float | None,
) -> ps.StartRequest:
    request = ps.StartRequest(
        workspace_id=workspace_id,
        process=ps.ProcessConfig(cmd=cmd, args=list(args), env=dict(env or {}), cwd=cwd, user=user),
    )
    if timeout is not None:
        request.timeout.CopyFrom(Duration(seconds=int(timeout), nanos=int((timeout % 1) * 1e9)))
    return request


def _output(event: ps.ProcessEvent) -> Output | None:
    if event.WhichOneof("event") != "data":
        return None
    channel = event.data.WhichOneof("output")
    if channel is None:
        return None
    data: bytes = getattr(event.data, channel)
    return Output(channel, data)


class _Collector:
    """Accumulates a stream's output and its end event."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.end: ps.ProcessEvent.End | None = None

    def add(self, event: ps.ProcessEvent) -> None:
        if event.WhichOneof("event") == "end":
            self.end = event.end
            return
        output = _output(event)
        if output is None:
            return
        (self.stderr if output.channel == "stderr" else self.stdout).extend(output.data)

    def result(self, cmd: str) -> CommandResult:
        if self.end is None:
            raise RuntimeError(f"the stream of {cmd!r} ended without an end event")
        return CommandResult(
            bytes(self.stdout), bytes(self.stderr), self.end.exit_code, self.end.signal, self.end.error
        )


def stream(
    client: Client,
    workspace_id: str,
    cmd: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str = "",
    user: str = "",
    timeout: float | None = None,
) -> Iterator[Output | ps.ProcessEvent.End]:
    """Starts ``cmd`` with ``args`` and yields its output chunks as they come, then its end.

    Raises:
        grpc.RpcError: the call failed (read it with :func:`berth.error_info`).
    """
    for response in client.processes.Start(_request(workspace_id, cmd, args, env, cwd, user, timeout)):
        if response.event.WhichOneof("event") == "end":
            yield response.event.end
            return
        output = _output(response.event)
        if output is not None:
            yield output


def run(
    client: Client,
    workspace_id: str,
    cmd: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str = "",
    user: str = "",
    timeout: float | None = None,
) -> CommandResult:
    """Runs ``cmd`` with ``args`` to its end and returns its output and exit status. A non-zero
    exit code is not an error: read :attr:`CommandResult.exit_code`.

    Raises:
        grpc.RpcError: the call failed (read it with :func:`berth.error_info`).
    """
    collector = _Collector()
    for response in client.processes.Start(_request(workspace_id, cmd, args, env, cwd, user, timeout)):
        collector.add(response.event)
    return collector.result(cmd)


async def stream_async(
    client: AsyncClient,
    workspace_id: str,
    cmd: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str = "",
    user: str = "",
    timeout: float | None = None,
) -> AsyncIterator[Output | ps.ProcessEvent.End]:
    """The ``asyncio`` form of :func:`stream`."""
    async for response in client.processes.Start(_request(workspace_id, cmd, args, env, cwd, user, timeout)):
        if response.event.WhichOneof("event") == "end":
            yield response.event.end
            return
        output = _output(response.event)
        if output is not None:
            yield output


async def run_async(
    client: AsyncClient,
    workspace_id: str,
    cmd: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str = "",
    user: str = "",
    timeout: float | None = None,
) -> CommandResult:
    """The ``asyncio`` form of :func:`run`."""
    collector = _Collector()
    async for response in client.processes.Start(_request(workspace_id, cmd, args, env, cwd, user, timeout)):
        collector.add(response.event)
    return collector.result(cmd)
