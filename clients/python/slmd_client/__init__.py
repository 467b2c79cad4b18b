"""Client library for slmd, the local small-language-model daemon.

    from slmd_client import AsyncClient, Client
"""

from slmd_client._common import __version__
from slmd_client.client import AsyncClient
from slmd_client.datatypes import (
    Completion,
    FinishReason,
    GenerateChunk,
    Priority,
    Status,
    TokenCount,
    Usage,
)
from slmd_client.defaults import default_socket_path, target_for
from slmd_client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SlmdError,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from slmd_client.sync import Client

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Client",
    "Completion",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FinishReason",
    "GenerateChunk",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Priority",
    "ResourceExhausted",
    "SlmdError",
    "Status",
    "TokenCount",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "__version__",
    "default_socket_path",
    "from_rpc_error",
    "target_for",
]
