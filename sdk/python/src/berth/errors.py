"""Reading the gRPC status code and the berth ErrorInfo reason of a failed call.

Every error berth returns carries, in its ``grpc-status-details-bin`` trailer, a
``google.rpc.Status`` whose details hold a ``google.rpc.ErrorInfo`` with domain ``berth.dev`` and a
reason naming an :class:`~berth.workspace.v1.error_reason_pb2.ErrorReason` value, such as
``"WORKSPACE_NOT_FOUND"``. :func:`error_info` decodes it (with grpcio-status) from the exceptions
both the synchronous and the ``grpc.aio`` clients raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, TypeAlias

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from berth.workspace.v1 import error_reason_pb2

__all__ = ["ERROR_DOMAIN", "BerthError", "error_info", "is_reason"]

ERROR_DOMAIN = "berth.dev"
"""The domain of the ``google.rpc.ErrorInfo`` every berth error carries."""

ErrorReasonValue: TypeAlias = error_reason_pb2.ErrorReason.ValueType
"""A value of the generated ``ErrorReason`` enum, such as ``ErrorReason.WORKSPACE_NOT_FOUND``."""


@dataclass(frozen=True)
class BerthError:
    """A failed berth call, decoded from its gRPC status.

    Branch on :attr:`reason` rather than on :attr:`message`; treat reasons you do not know by
    :attr:`code`.
    """

    code: grpc.StatusCode
    """The gRPC status code, for example ``grpc.StatusCode.NOT_FOUND``."""
    message: str
    """The human-readable status message."""
    reason: str | None = None
    """The ErrorInfo reason, for example ``"WORKSPACE_NOT_FOUND"``. None when the status carries
    no ErrorInfo of domain ``berth.dev`` (for example errors raised by grpcio itself, such as
    ``UNAVAILABLE`` when the server cannot be reached)."""
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    """The ErrorInfo metadata, for example ``{"workspace_id": "bot-1"}``. Empty when absent."""
    status: status_pb2.Status | None = field(default=None, compare=False, hash=False, repr=False)
    """The whole decoded ``google.rpc.Status``, for callers that need other details. None when
    the call carried no status details."""

    @property
    def error_reason(self) -> ErrorReasonValue | None:
        """:attr:`reason` as an ``ErrorReason`` value; None when absent or unknown to this SDK."""
        if self.reason is None:
            return None
        try:
            return error_reason_pb2.ErrorReason.Value(self.reason)
        except ValueError:
            return None

    def __str__(self) -> str:
        """Formats the error as ``CODE REASON: message``, or ``CODE: message`` without reason."""
        head = self.code.name if self.reason is None else f"{self.code.name} {self.reason}"
        return f"{head}: {self.message}"


def error_info(err: BaseException) -> BerthError | None:
    """Decodes the status of a failed berth call.

    Works on the ``grpc.RpcError`` raised by synchronous calls (unary and streaming) and on the
    ``grpc.aio.AioRpcError`` raised by ``grpc.aio`` calls. Returns None when ``err`` carries no
    gRPC status (any other exception, or a bare ``grpc.RpcError`` raised by user code).
    """
    code: grpc.StatusCode
    details: str | None
    trailing: Sequence[tuple[str, str | bytes]]
    if isinstance(err, grpc.aio.AioRpcError):
        code, details = err.code(), err.details()
        trailing = tuple(err.trailing_metadata() or ())
    elif isinstance(err, grpc.RpcError) and isinstance(err, grpc.Call):
        code, details = err.code(), err.details()
        trailing = tuple(err.trailing_metadata() or ())
    else:
        return None
    message = details or ""
    status = _rich_status(code, message, trailing)
    if status is None:
        return BerthError(code=code, message=message)
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return BerthError(
                code=code,
                message=message,
                reason=info.reason,
                metadata=dict(info.metadata),
                status=status,
            )
    return BerthError(code=code, message=message, status=status)


def is_reason(err: BaseException, reason: str | ErrorReasonValue) -> bool:
    """Whether ``err`` is a failed berth call with the given ErrorInfo reason.

    ``reason`` is a reason name (``"WORKSPACE_NOT_FOUND"``) or an ``ErrorReason`` value
    (``error_reason_pb2.WORKSPACE_NOT_FOUND``).
    """
    info = error_info(err)
    if info is None or info.reason is None:
        return False
    name = reason if isinstance(reason, str) else error_reason_pb2.ErrorReason.Name(reason)
    return info.reason == name


def _rich_status(
    code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str | bytes]]
) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` of the trailer, decoded by grpcio-status's ``from_call``.

    None when there is none, when it cannot be decoded, or when it contradicts the call's code
    or message (grpcio-status rejects such a status); the call's own code and message are kept
    then.
    """
    try:
        call = _FinishedCall(code, details, trailing)
        status: status_pb2.Status | None = rpc_status.from_call(call)
    except (ValueError, DecodeError):
        return None
    return status


class _FinishedCall(grpc.Call):
    """The finished call ``rpc_status.from_call`` reads, built from an error's code, details and
    trailing metadata (``grpc.aio.AioRpcError`` is no ``grpc.Call``, but holds the same)."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str | bytes]]
    ) -> None:
        self._code = code
        self._details = details
        self._trailing = tuple(trailing)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing

    def initial_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], object]) -> bool:
        return False
