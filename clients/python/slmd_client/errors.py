"""The client library's exceptions. Every `grpc.RpcError` that reaches a caller
has been turned into one of these by `from_rpc_error`."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

# Trailing metadata key carrying a serialized google.rpc.Status (grpcio-status
# writes it with `rpc_status.to_status`).
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class SlmdError(Exception):
    """An RPC to the daemon failed.

    `code` is the gRPC status code (None when the failure did not come from an
    RPC), `details` the daemon's message, `retry_after` the seconds the daemon
    asked the caller to wait (from a google.rpc.RetryInfo detail) or None, and
    `status` the full google.rpc.Status when the daemon sent one.
    """

    def __init__(
        self,
        details: str = "",
        *,
        code: grpc.StatusCode | None = None,
        retry_after: float | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.retry_after = retry_after
        self.status = status

    @property
    def code_name(self) -> str:
        return self.code.name if self.code is not None else "UNKNOWN"

    def __str__(self) -> str:
        text = f"{self.code_name}: {self.details}" if self.details else self.code_name
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g}s)"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.details, self.code, self.retry_after))


def _rebuild(cls: type[SlmdError], details: str, code: grpc.StatusCode | None, retry_after: float | None) -> SlmdError:
    return cls(details, code=code, retry_after=retry_after)


class InvalidArgument(SlmdError):
    """The request was rejected as malformed or out of range."""


class ResourceExhausted(SlmdError):
    """The daemon is at capacity (queue full, quota); see `retry_after`."""


class DeadlineExceeded(SlmdError):
    """The call's deadline passed before it completed."""


class Cancelled(SlmdError):
    """The call was cancelled (by the caller or the daemon's shutdown)."""


class Unavailable(SlmdError):
    """The daemon is not reachable or is shutting down."""


class Unauthenticated(SlmdError):
    """The daemon could not identify the caller (missing or unknown token)."""


class PermissionDenied(SlmdError):
    """The caller is identified but not allowed to do this."""


class NotFound(SlmdError):
    """A named thing (model, document, request) does not exist."""


class FailedPrecondition(SlmdError):
    """The daemon is not in a state to serve this (for example, no model loaded)."""


class Internal(SlmdError):
    """The daemon hit a bug."""


_BY_CODE: dict[grpc.StatusCode, type[SlmdError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
}


def error_class_for(code: grpc.StatusCode | None) -> type[SlmdError]:
    return _BY_CODE.get(code, SlmdError) if code is not None else SlmdError


def from_rpc_error(e: grpc.RpcError) -> SlmdError:
    """Convert a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code = _call_value(e, "code")
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details = _call_value(e, "details") or ""
    status = _rich_status(e)
    if status is not None and not details:
        details = status.message
    error = error_class_for(code)(
        details,
        code=code,
        retry_after=_retry_after(status) if status is not None else None,
        status=status,
    )
    return error


def _call_value(e: grpc.RpcError, name: str) -> Any:
    method = getattr(e, name, None)
    if method is None:
        return None
    try:
        return method()
    except Exception:  # a bare RpcError raised by a test double, for one
        return None


def _rich_status(e: grpc.RpcError) -> status_pb2.Status | None:
    trailing = _call_value(e, "trailing_metadata")
    if not trailing:
        return None
    for item in trailing:
        key, value = item[0], item[1]
        if key != _STATUS_DETAILS_KEY:
            continue
        if isinstance(value, str):
            value = value.encode("latin-1")
        try:
            return status_pb2.Status.FromString(value)
        except Exception:
            return None
    return None


def _retry_after(status: status_pb2.Status) -> float | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    return None
