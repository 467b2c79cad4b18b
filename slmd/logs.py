"""Logging set-up: plain or JSON lines; llama.cpp's own log is routed into
Python logging (at debug level) instead of spraying stderr."""

from __future__ import annotations

import ctypes
import json
import logging
import sys
import time

import slmd.runtime  # noqa: F401  (sets the OpenMP wait policy before llama_cpp loads)
import llama_cpp as L

from slmd.config import LogConfig

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
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


@L.llama_log_callback
def _on_llama_log(level, text, user_data):  # noqa: ARG001 - C signature
    if _llama_log.isEnabledFor(logging.DEBUG):
        _llama_log.debug(text.decode("utf-8", "replace").rstrip())


def setup_logging(cfg: LogConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg.json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    L.llama_log_set(_on_llama_log, ctypes.c_void_p(0))
