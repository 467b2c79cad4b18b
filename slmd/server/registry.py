"""Registering servicers from the proto service descriptors, with two things
the generated `add_*_to_server` functions cannot do:

- corrupt request bytes become INVALID_ARGUMENT (grpc.aio would answer
  UNKNOWN with the parser's message): the deserializer never raises, it hands
  the handler a `CorruptRequest`, which the wrapper rejects;
- every `RpcError` a handler raises aborts the call with its code, and any
  other exception becomes INTERNAL with a request-free message, so no handler
  bug can take the daemon down or leak a traceback to a client;
- every call is counted once, by app, method, intent and the status code it
  ended with (a client that went away: CANCELLED), and runs under a
  `CallInfo` (server/calls.py) that log lines and metrics read."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from slmd.metrics import Metrics, intent_of
from slmd.server import calls
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


class _Outcome:
    """The status code a call ends with, counted once when it ends."""

    def __init__(self, metrics: Metrics, method: str) -> None:
        self.metrics = metrics
        self.info = calls.begin(method, intent_of(method))
        self.code = grpc.StatusCode.OK

    def count(self) -> None:
        i = self.info
        self.metrics.on_call(i.app_id, i.method, i.intent, self.code.name)


def _unary(fn, metrics: Metrics, method: str):
    @functools.wraps(fn)
    async def handler(request, context):
        out = _Outcome(metrics, method)
        try:
            if isinstance(request, CorruptRequest):
                raise invalid(f"request message could not be parsed ({request.error})")
            return await fn(request, context)
        except RpcError as e:
            out.code = e.code
            await abort(context, e)
        except grpc.aio.AbortError:  # the handler aborted the call itself (grpc's own servicers do)
            out.code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            out.code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            out.code = grpc.StatusCode.INTERNAL
            log.exception("handler %s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the daemon log)")
        finally:
            out.count()

    return handler


def _stream(fn, metrics: Metrics, method: str):
    @functools.wraps(fn)
    async def handler(request, context):
        out = _Outcome(metrics, method)
        try:
            if isinstance(request, CorruptRequest):
                raise invalid(f"request message could not be parsed ({request.error})")
            async for item in fn(request, context):
                yield item
        except RpcError as e:
            out.code = e.code
            await abort(context, e)
        except (asyncio.CancelledError, GeneratorExit):  # the client went away mid-stream
            out.code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            out.code = grpc.StatusCode.INTERNAL
            log.exception("handler %s failed", fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (see the daemon log)")
        finally:
            out.count()

    return handler


def register(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor,
             metrics: Metrics | None = None, only: tuple[str, ...] | None = None) -> None:
    """`only`: register just these methods (the rest can come from another handler,
    added after this one: grpc picks the first handler that knows a method)."""
    metrics = metrics or Metrics()
    handlers = {}
    for method in service.methods:
        if only is not None and method.name not in only:
            continue
        fn = getattr(servicer, method.name)
        req_cls = GetMessageClass(method.input_type)
        resp_cls = GetMessageClass(method.output_type)
        if method.server_streaming:
            make, wrap = grpc.unary_stream_rpc_method_handler, _stream
        else:
            make, wrap = grpc.unary_unary_rpc_method_handler, _unary
        handlers[method.name] = make(
            wrap(fn, metrics, method.name), request_deserializer=_safe_parser(req_cls), response_serializer=resp_cls.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
