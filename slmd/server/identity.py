"""Who is calling. The daemon derives the app identity; a client never names
itself (metadata such as `x-slmd-app` is ignored for identity).

- Unix socket: the kernel's peer credentials, relayed by the front
  (slmd/server/front.py), are matched against the `apps` table: by uid, gid
  or executable path. An unmatched caller becomes `uid-<uid>` (or the
  default app, or is refused, per `auth.unknown_callers`). A bearer token,
  when given, selects its app instead.
- TCP (loopback only): a per-app token (`authorization: Bearer ...`) is
  mandatory.
"""

from __future__ import annotations

import fnmatch
import hmac
import os
from dataclasses import dataclass

import grpc

from slmd.server import calls
from slmd.server.front import PeerCred, PeerFront
from slmd.server.status import RpcError


@dataclass(frozen=True)
class Identity:
    app_id: str
    transport: str  # "unix" or "tcp"
    uid: int | None = None


@dataclass(frozen=True)
class PeerRule:
    app_id: str
    uids: tuple[int, ...] = ()
    gids: tuple[int, ...] = ()
    exe: tuple[str, ...] = ()  # glob patterns on /proc/<pid>/exe

    def matches(self, cred: PeerCred, exe: str | None) -> bool:
        if not (self.uids or self.gids or self.exe):
            return False
        return ((not self.uids or cred.uid in self.uids) and (not self.gids or cred.gid in self.gids)
                and (not self.exe or (exe is not None and any(fnmatch.fnmatch(exe, p) for p in self.exe))))


def _exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


class IdentityResolver:
    def __init__(self, tokens: dict[str, str], unix_default_app: str | None, *,
                 rules: tuple[PeerRule, ...] = (), unknown_callers: str = "uid",
                 front: PeerFront | None = None) -> None:
        self._tokens = dict(tokens)
        self._unix_default = unix_default_app
        self._rules = rules
        self._unknown = unknown_callers
        self.front = front

    def _lookup(self, token: str) -> str | None:
        found = None
        for known, app in self._tokens.items():  # constant-time compare against every token
            if hmac.compare_digest(known.encode(), token.encode()):
                found = app
        return found

    def _from_peer(self, cred: PeerCred) -> Identity:
        exe = _exe_of(cred.pid) if any(r.exe for r in self._rules) else None
        for rule in self._rules:
            if rule.matches(cred, exe):
                return Identity(rule.app_id, "unix", cred.uid)
        if self._unknown == "uid":
            return Identity(f"uid-{cred.uid}", "unix", cred.uid)
        if self._unknown == "default" and self._unix_default:
            return Identity(self._unix_default, "unix", cred.uid)
        raise RpcError(grpc.StatusCode.PERMISSION_DENIED,
                       f"uid {cred.uid} is not granted access (no `apps` entry matches; auth.unknown_callers=deny)")

    def resolve(self, context: grpc.aio.ServicerContext) -> Identity:
        ident = self._resolve(context)
        calls.note_app(ident.app_id)  # for this call's metrics and log lines
        return ident

    def _resolve(self, context: grpc.aio.ServicerContext) -> Identity:
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
        if transport == "unix":
            cred = self.front.parse_peer(peer) if self.front else None
            if cred is not None:
                return self._from_peer(cred)
            if self._unix_default:
                return Identity(self._unix_default, transport)
        raise RpcError(grpc.StatusCode.UNAUTHENTICATED,
                       "a token is required (metadata `authorization: Bearer <token>`; see auth.tokens)")
