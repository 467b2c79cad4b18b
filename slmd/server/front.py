"""The peer-credential front. grpc.aio exposes no peer credentials on Unix
sockets (grpc issue 28755), so the public socket is served by this small
relay instead of gRPC: it reads SO_PEERCRED (pid, uid, gid) of each accepted
connection, then connects to gRPC's private socket (in a 0700 directory) from
a socket bound to an abstract address that spells those credentials and a
per-daemon secret. gRPC reports that address as the call's peer, so every
call carries the kernel's word on who is calling; no client can claim it.
Bytes are relayed by two paired asyncio protocols with flow control."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

_CRED = struct.Struct("3i")


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


class _Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self._pending: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self._pending.append(data)

    def flush_to(self, peer: "_Pipe") -> None:
        for chunk in self._pending:
            peer.transport.write(chunk)
        self._pending.clear()

    # the peer's write buffer is full: stop reading until it drains
    def pause_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.resume_reading()

    def eof_received(self):
        if self.peer and self.peer.transport and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True  # keep our side open until the peer closes

    def connection_lost(self, exc) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.close()


class PeerFront:
    def __init__(self, public_path: str, inner_path: str) -> None:
        self.public_path = public_path
        self.inner_path = inner_path
        self.secret = secrets.token_hex(8)
        self._ids = itertools.count()
        self._server: asyncio.AbstractServer | None = None

    @property
    def peer_prefix(self) -> str:
        """What gRPC's `context.peer()` starts with for calls through this front."""
        return f"unix-abstract:slmd-{self.secret}/"

    def parse_peer(self, peer: str) -> PeerCred | None:
        if not peer.startswith(self.peer_prefix):
            return None
        try:
            uid, gid, pid, _ = peer[len(self.peer_prefix):].split("/")
            return PeerCred(int(pid), int(uid), int(gid))
        except ValueError:
            return None

    async def start(self) -> None:
        # created under the caller's umask (0117 -> 0660), see app._listen
        self._server = await asyncio.get_running_loop().create_unix_server(self._accept_factory, self.public_path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _accept_factory(self) -> _Pipe:
        pipe = _Pipe()
        orig = pipe.connection_made

        def made(transport) -> None:
            orig(transport)
            asyncio.get_running_loop().create_task(self._connect_inner(pipe))

        pipe.connection_made = made
        return pipe

    async def _connect_inner(self, client: _Pipe) -> None:
        sock = client.transport.get_extra_info("socket")
        try:
            pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.bind(f"\0slmd-{self.secret}/{uid}/{gid}/{pid}/{next(self._ids)}")
            up.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(up, self.inner_path)
            inner = _Pipe()
            await loop.create_unix_connection(lambda: inner, sock=up)
        except OSError as e:
            log.warning("front: could not relay a connection: %s", e)
            client.transport.close()
            return
        client.peer, inner.peer = inner, client
        client.flush_to(inner)  # what either side sent before the pairing
        inner.flush_to(client)


def private_socket_path(public_path: str) -> str:
    """gRPC's own socket, in a fresh 0700 directory nobody else can enter."""
    import tempfile

    d = tempfile.mkdtemp(prefix=".slmd-", dir=os.path.dirname(public_path) or ".")
    return os.path.join(d, "grpc.sock")
