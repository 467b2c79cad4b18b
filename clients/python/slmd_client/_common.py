"""What the async and the sync client share: connection settings and call
options."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slmd_client.defaults import TOKEN_ENV, target_for

__version__ = "0.1.0"

# Metadata the daemon reads. The token authenticates TCP callers; over the Unix
# socket the daemon identifies the caller by its peer credentials, and the app
# name only labels the caller's requests.
AUTHORIZATION_KEY = "authorization"
APP_NAME_KEY = "x-slmd-app"

_DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.primary_user_agent", f"slmd-client-python/{__version__}"),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
)


@dataclass(frozen=True)
class CallSettings:
    target: str
    metadata: tuple[tuple[str, str], ...]
    timeout: float | None
    wait_for_ready: bool
    channel_options: tuple[tuple[str, Any], ...]

    @classmethod
    def build(
        cls,
        target: str | os.PathLike[str] | None,
        *,
        token: str | None,
        app_name: str | None,
        timeout: float | None,
        wait_for_ready: bool,
        metadata: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        options: Sequence[tuple[str, Any]] | None,
    ) -> CallSettings:
        if token is None:
            token = os.environ.get(TOKEN_ENV) or None
        pairs: list[tuple[str, str]] = []
        if token:
            pairs.append((AUTHORIZATION_KEY, f"Bearer {token}"))
        if app_name:
            pairs.append((APP_NAME_KEY, app_name))
        if metadata:
            items = metadata.items() if isinstance(metadata, Mapping) else metadata
            pairs.extend((str(k).lower(), str(v)) for k, v in items)
        merged = dict(_DEFAULT_OPTIONS)
        merged.update(dict(options or ()))
        return cls(
            target=target_for(target),
            metadata=tuple(pairs),
            timeout=timeout,
            wait_for_ready=wait_for_ready,
            channel_options=tuple(merged.items()),
        )

    def call_kwargs(self, timeout: float | None) -> dict[str, Any]:
        return {
            "timeout": timeout if timeout is not None else self.timeout,
            "metadata": self.metadata or None,
            "wait_for_ready": self.wait_for_ready,
        }
