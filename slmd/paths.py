"""Where slmd keeps things. The socket path comes from the client library so
the daemon and its clients always agree on the default."""

from __future__ import annotations

import os
from pathlib import Path

from slmd_client.defaults import default_socket_path as _client_socket_path


def default_data_dir() -> Path:
    """`$SLMD_DATA_DIR`, else `/var/lib/slmd` for root, else `$XDG_DATA_HOME/slmd`."""
    if os.environ.get("SLMD_DATA_DIR"):
        return Path(os.environ["SLMD_DATA_DIR"])
    if os.geteuid() == 0 and os.environ.get("XDG_DATA_HOME") is None and Path("/var/lib/slmd").is_dir():
        return Path("/var/lib/slmd")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "slmd"


def default_socket_path() -> Path:
    return Path(_client_socket_path())
