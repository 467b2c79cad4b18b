"""Where the daemon listens by default. The daemon imports `default_socket_path`
from here too, so both sides always agree."""

from __future__ import annotations

import os

SOCKET_ENV = "SLMD_SOCKET"
TOKEN_ENV = "SLMD_TOKEN"
SYSTEM_SOCKET_PATH = "/run/slmd/slmd.sock"

# Target schemes gRPC understands; such targets are passed through unchanged.
_GRPC_SCHEMES = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:")


def default_socket_path() -> str:
    """`$SLMD_SOCKET`; else `$XDG_RUNTIME_DIR/slmd/slmd.sock`; else
    `/run/slmd/slmd.sock` for root; else `/tmp/slmd-<uid>/slmd.sock`."""
    explicit = os.environ.get(SOCKET_ENV)
    if explicit:
        return explicit
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return os.path.join(runtime_dir, "slmd", "slmd.sock")
    uid = os.getuid()
    if uid == 0:
        return SYSTEM_SOCKET_PATH
    return f"/tmp/slmd-{uid}/slmd.sock"


def find_socket_path() -> str:
    """The socket a client should try: `default_socket_path()` when it exists
    (or `$SLMD_SOCKET` is set), else the system daemon's socket when that
    exists, else `default_socket_path()` (so errors name the expected path).

    A user session has `XDG_RUNTIME_DIR` set, so without this fallback a
    client would never find a daemon started by systemd as a system service.
    """
    path = default_socket_path()
    if os.environ.get(SOCKET_ENV) or os.path.exists(path):
        return path
    if os.path.exists(SYSTEM_SOCKET_PATH):
        return SYSTEM_SOCKET_PATH
    return path


def target_for(socket_path_or_address: str | os.PathLike[str] | None = None) -> str:
    """A gRPC target string for a socket path or a network address.

    - None: the socket from `find_socket_path()`;
    - a gRPC target with a scheme (`unix:...`, `dns:...`, `ipv4:...`): unchanged;
    - `tcp://host:port` or `host:port` (including `[::1]:port`): `host:port`;
    - anything else is a filesystem path: `unix:` + its absolute path.
    """
    if socket_path_or_address is None:
        return "unix:" + os.path.abspath(find_socket_path())
    value = os.fspath(socket_path_or_address)
    if value.startswith(_GRPC_SCHEMES):
        return value
    if value.startswith("tcp://"):
        return value[len("tcp://") :]
    if _looks_like_address(value):
        return value
    return "unix:" + os.path.abspath(os.path.expanduser(value))


def is_unix_target(target: str) -> bool:
    return target.startswith(("unix:", "unix-abstract:"))


def _looks_like_address(value: str) -> bool:
    """`host:port` or `[v6]:port` with a numeric port and no path separator."""
    if "/" in value or os.sep in value:
        return False
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit())
