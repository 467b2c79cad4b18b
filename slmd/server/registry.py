"""Registering servicers from the proto service descriptors, with two things
the generated `add_*_to_server` functions cannot do:

- corrupt request bytes become INVALID_ARGUMENT (grpc.aio would answer
  UNKNOWN with the parser's message): the deserializer never raises, it hands
  the handler a `CorruptRequest`, which the wrapper rejects;
- every `RpcError` a handler raises aborts the call with its code, and any
  other exception becomes INTERNAL with a request-free message, so no handler
  bug can take the daemon down or leak a traceback to a client."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from slmd.server.status import RpcError, abort, invalid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorruptRequest:
    error: str


def _safe_parser(cls):
    def parse(data: bytes):
        try:
            return cls.FromString(data)
        except Exception as e:
            return CorruptRequest(f"{type(e).__name__}: {str(e)[:200]}")

    return parse


def _unary(fn):
    @functools.wraps(fn)
    async def handler(request, context):
        try:
            if isinstance(request, CorruptRequest):
                raise invalid(f"request message could not be parsed ({request.error})")
            return await fn(request, context)
        except RpcError as e:
            await abort(context, e)
        except Exception:
            log.exception("handler %s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the daemon log)")

    return handler


def _stream(fn):
    @functools.wraps(fn)
    async def handler(request, context):
        try:
            if isinstance(request, CorruptRequest):
                raise invalid(f"request message could not be parsed ({request.error})")
            async for item in fn(request, context):
                yield item
        except RpcError as e:
            await abort(context, e)
        except Exception:
            log.exception("handler %s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the daemon log)")

    return handler


def register(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor) -> None:
    handlers = {}
    for method in service.methods:
        fn = getattr(servicer, method.name)
        req_cls = GetMessageClass(method.input_type)
        resp_cls = GetMessageClass(method.output_type)
        if method.server_streaming:
            make, wrap = grpc.unary_stream_rpc_method_handler, _stream
        else:
            make, wrap = grpc.unary_unary_rpc_method_handler, _unary
        handlers[method.name] = make(
            wrap(fn), request_deserializer=_safe_parser(req_cls), response_serializer=resp_cls.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
