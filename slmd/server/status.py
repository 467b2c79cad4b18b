"""gRPC status helpers: errors that carry a code and a message naming the
field or limit, RESOURCE_EXHAUSTED with google.rpc.RetryInfo, and the
mapping from engine error kinds to codes."""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from slmd.request import ErrorKind


class RpcError(Exception):
    """Raised inside servicers; the wrapper aborts the call with it."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


def invalid(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, message)


def failed_precondition(message: str) -> RpcError:
    return RpcError(grpc.StatusCode.FAILED_PRECONDITION, message)


def exhausted(message: str, retry_after: float = 1.0) -> RpcError:
    return RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after)


KIND_TO_CODE = {
    ErrorKind.QUEUE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorKind.SHUTDOWN: grpc.StatusCode.UNAVAILABLE,
}


def from_kind(kind: ErrorKind, message: str, retry_after: float | None = None) -> RpcError:
    code = KIND_TO_CODE.get(kind, grpc.StatusCode.INTERNAL)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after = retry_after or 1.0
    return RpcError(code, message, retry_after if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None)


async def abort(context: grpc.aio.ServicerContext, err: RpcError) -> None:
    """Abort with a rich status when there is retry advice, a plain one otherwise."""
    if err.retry_after is None:
        await context.abort(err.code, err.message)
    secs = int(err.retry_after)
    info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=secs, nanos=int((err.retry_after - secs) * 1e9)))
    detail = status_pb2.Status(code=getattr(code_pb2, err.code.name), message=err.message)
    detail.details.add().Pack(info)
    await context.abort_with_status(rpc_status.to_status(detail))
