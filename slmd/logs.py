"""Logging set-up: plain or JSON lines; llama.cpp's own log is routed into
Python logging (at debug level) instead of spraying stderr.

Every line carries a request id and app id: the handling RPC's (from the
call context, server/calls.py), or the ones the engine thread passes with
`extra=`, or "-" outside any request. Prompt and document text is logged
only with `extra={"content": True}`, and such records are dropped unless
the operator enabled both `log.log_content` and debug level (privacy)."""

from __future__ import annotations

import ctypes
import json
import logging
import sys
import time

import slmd.runtime  # noqa: F401  (sets the OpenMP wait policy before llama_cpp loads)
import llama_cpp as L

from slmd.config import LogConfig
from slmd.runtime.llama_io import libc_callback
from slmd.server import calls

_llama_log = logging.getLogger("llama.cpp")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("request_id", "app_id"):
            doc[key] = getattr(record, key, "-")
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class RequestContextFilter(logging.Filter):
    """Stamps request_id and app_id on every record; drops content records
    unless content logging is allowed."""

    def __init__(self, allow_content: bool = False) -> None:
        super().__init__()
        self.allow_content = allow_content

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "content", False) and not self.allow_content:
            return False
        call = calls.current()
        if not hasattr(record, "request_id"):
            record.request_id = call.request_id if call else "-"
        if not hasattr(record, "app_id"):
            record.app_id = call.app_id if call else "-"
        return True


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(app_id)s %(request_id)s] %(message)s"


def content_allowed(cfg: LogConfig) -> bool:
    return cfg.log_content and cfg.level == "debug"


@L.llama_log_callback
def _on_llama_log(level, text, user_data):  # noqa: ARG001 - C signature
    if _llama_log.isEnabledFor(logging.DEBUG):
        _llama_log.debug(text.decode("utf-8", "replace").rstrip())


def _discard_llama_log():
    """A C function for ggml_log_callback that does nothing: libc's getpid,
    which takes no arguments (extra register arguments are harmless in the
    C calling conventions of the platforms llama.cpp runs on)."""
    return libc_callback("getpid", L.llama_log_callback)


def setup_logging(cfg: LogConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg.json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    handler.addFilter(RequestContextFilter(content_allowed(cfg)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    if root.isEnabledFor(logging.DEBUG):
        L.llama_log_set(_on_llama_log, ctypes.c_void_p(0))
    else:
        # llama.cpp logs from inside llama_decode (a CUDA build, every step); a
        # Python callback there takes the GIL mid-step, waiting on the event
        # loop's thread. Below debug level nothing is wanted: a C no-op it is.
        L.llama_log_set(_discard_llama_log(), ctypes.c_void_p(0))
