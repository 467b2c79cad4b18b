"""Who is calling. The daemon derives the app identity; a client never names
itself. On TCP a per-app token (`authorization: Bearer ...`) is mandatory. On
the Unix socket (mode 0660, so only the slmd group can connect at all) a token
selects the app when given; without one the caller is the configured default
app. grpc.aio exposes no peer credentials on Unix sockets (grpc issue 28755),
which is why tokens carry identity there."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import grpc

from slmd.server.status import RpcError


@dataclass(frozen=True)
class Identity:
    app_id: str
    transport: str  # "unix" or "tcp"


class IdentityResolver:
    def __init__(self, tokens: dict[str, str], unix_default_app: str | None) -> None:
        self._tokens = dict(tokens)
        self._unix_default = unix_default_app

    def _lookup(self, token: str) -> str | None:
        found = None
        for known, app in self._tokens.items():  # constant-time compare against every token
            if hmac.compare_digest(known.encode(), token.encode()):
                found = app
        return found

    def resolve(self, context: grpc.aio.ServicerContext) -> Identity:
        peer = context.peer() or ""
        transport = "unix" if peer.startswith("unix") else "tcp"
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[7:].strip()
        if token:
            app = self._lookup(token)
            if app is None:
                raise RpcError(grpc.StatusCode.UNAUTHENTICATED, "unknown token (authorization: Bearer ...)")
            return Identity(app, transport)
        if transport == "unix" and self._unix_default:
            return Identity(self._unix_default, transport)
        raise RpcError(grpc.StatusCode.UNAUTHENTICATED,
                       "a token is required (metadata `authorization: Bearer <token>`; see auth.tokens)")
