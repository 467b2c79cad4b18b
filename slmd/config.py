"""Daemon configuration: pydantic models filled from a TOML file, `SLMD_*`
environment variables and CLI flags (flags override the environment, which
overrides the file). Validated once at start; an invalid value stops the
daemon with a message naming the key and what is allowed."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slmd.memory.sources import parse_trigger
from slmd.paths import default_data_dir, default_socket_path


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    path: Path | None = None  # None: the default model, pulled on first use
    n_gpu_layers: int = Field(0, ge=-1)  # -1 = all layers on the GPU
    n_threads: int = Field(0, ge=0)  # 0 = all cores
    context_per_sequence: int = Field(2048, ge=64, le=131072)
    use_mmap: bool = True
    lora_path: Path | None = None  # a GGUF LoRA adapter (training/finetune.py --export-lora) over the model
    lora_scale: float = Field(1.0, ge=0, le=4)
    # greedy argmax inside the decode graph: no n_outputs x n_vocab logits copy to
    # host, but slower as measured (CPU 2.5x slower steps; H100 N=64 -4%): off
    backend_sampling: bool = False
    # threads for the host argmax over many greedy rows (64 x 49k logits per
    # GPU step); 0 = min(8, threads) on 4 or more threads, else 1
    argmax_threads: int = Field(0, ge=0, le=64)
    # llama.cpp's flash attention. "auto": off on the CPU, where it halved
    # decode speed at 800-token contexts (prefill 1.4x faster), llama.cpp's
    # own choice on a GPU.
    flash_attn: Literal["auto", "on", "off"] = "auto"
    # compute with fewer CPU threads while other programs keep cores busy
    # (slmd/runtime/threads.py); CPU only, and not with flash attention on
    adapt_threads: bool = True


class EngineConfig(_Section):
    max_running: int = Field(8, ge=1, le=256)  # sequences decoded together
    num_sequences: int = Field(0, ge=0, le=512)  # KV streams (running + idle cache holders); 0 = 2 x max_running
    step_token_budget: int = Field(512, ge=16, le=8192)  # tokens per llama_decode
    kv_unified: bool = False  # separate KV streams: prefill bit-identical to a solo run
    # One unified KV cache of this many cells shared by all sequences, sized for
    # aggregate demand instead of num_sequences x context (0 = off: a stream per sequence)
    kv_pool_tokens: int = Field(0, ge=0, le=1 << 22)
    deterministic: bool = False  # default for requests that do not ask
    max_waiting: int = Field(256, ge=0)  # queued requests before RESOURCE_EXHAUSTED
    max_tokens_default: int = Field(256, ge=1)
    max_tokens_limit: int = Field(4096, ge=1)
    max_prompt_bytes: int = Field(1 << 20, ge=1)
    keep_alive_seconds: float = Field(-1, ge=-1)  # -1 = never unload
    # While an interactive app is active, one step's lower-class prefill is
    # bounded to this long (0 = off), which bounds an interactive arrival's wait.
    interactive_step_seconds: float = Field(0.1, ge=0, le=10)
    interactive_window_seconds: float = Field(30.0, ge=0)
    # CPython's GIL switch interval in the daemon: between two decodes the
    # engine thread may wait this long for the event loop's thread. The
    # default is CPython's; 1 ms measured no better on an H100 at 64 streams.
    switch_interval_ms: float = Field(5.0, gt=0, le=100)

    @model_validator(mode="after")
    def _limits(self) -> "EngineConfig":
        if self.max_tokens_default > self.max_tokens_limit:
            raise ValueError("engine.max_tokens_default must be <= engine.max_tokens_limit")
        if self.num_sequences and self.num_sequences < self.max_running:
            raise ValueError("engine.num_sequences must be 0 or >= engine.max_running")
        if 0 < self.kv_pool_tokens < 64:
            raise ValueError("engine.kv_pool_tokens must be 0 (off) or >= 64")
        if self.kv_pool_tokens and self.deterministic:
            # bit-identical output needs a KV stream of its own (see README, deterministic mode)
            raise ValueError("engine.deterministic needs separate KV streams: set engine.kv_pool_tokens = 0")
        return self

    @property
    def streams(self) -> int:
        return self.num_sequences or 2 * self.max_running


class CacheSection(_Section):
    enabled: bool = True
    min_tokens: int = Field(16, ge=1)
    host_bytes: int = Field(512 << 20, ge=0)  # host-memory tier; 0 = off
    policy: Literal["lru", "priority"] = "lru"
    sharing_groups: dict[str, list[str]] = Field(default_factory=dict)  # group -> app ids that share documents


class AppSection(_Section):
    # who this app is (any that are set must all match the caller's peer credentials)
    uids: list[int] = Field(default_factory=list)
    gids: list[int] = Field(default_factory=list)
    exe: list[str] = Field(default_factory=list)  # glob patterns on the caller's executable path
    weight: float = Field(1.0, gt=0, le=1000)
    max_priority: Literal["background", "normal", "interactive"] = "interactive"
    default_priority: Literal["background", "normal", "interactive"] = "normal"
    max_concurrent: int = Field(64, ge=1)
    max_waiting: int = Field(64, ge=0)
    tokens_per_minute: int = Field(0, ge=0)  # 0 = unlimited
    admin: bool = False  # may call operator RPCs (Admin.SignalMemoryPressure)


class TcpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)  # 0 = TCP off

    @field_validator("host")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if v not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("server.tcp.host must be a loopback address (127.0.0.1, ::1, localhost)")
        return v


class ServerConfig(_Section):
    socket_path: Path = Field(default_factory=default_socket_path)
    socket_group: str | None = None  # group owning the 0660 socket; None = daemon's group
    tcp: TcpConfig = Field(default_factory=TcpConfig)
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    max_message_bytes: int = Field(8 << 20, ge=1024)


class AuthConfig(_Section):
    tokens: dict[str, str] = Field(default_factory=dict)  # token -> app id; mandatory on TCP
    peer_credentials: bool = True  # identify Unix-socket callers by SO_PEERCRED (see server/front.py)
    unknown_callers: Literal["uid", "default", "deny"] = "uid"  # no `apps` rule matches: uid-<uid>, the default app, or refuse
    unix_default_app: str | None = "local"  # the default app (also used when peer_credentials is off)


class MetricsConfig(_Section):
    """Prometheus /metrics over HTTP, on loopback only: never on the apps' socket."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)  # 0 = off
    max_apps: int = Field(64, ge=1, le=10_000)  # distinct unconfigured app labels before "other"

    @field_validator("host")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if v not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("metrics.host must be a loopback address (127.0.0.1, ::1, localhost)")
        return v

    @property
    def is_served(self) -> bool:
        return self.enabled and self.port > 0


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_format: bool = False
    log_content: bool = False  # prompts/documents in logs only when explicitly enabled


class DocsConfig(_Section):
    """Document assistance: ingestion limits, the token budget (the paper's
    default: up to 5 chunks of 200 tokens) and the per-app document registry."""

    max_bytes: int = Field(20 << 20, ge=1)  # a file as sent (server.max_message_bytes also bounds it)
    max_pages: int = Field(200, ge=1)  # PDF pages, slides or sheets
    max_chars: int = Field(2_000_000, ge=1)  # extracted text
    max_seconds: float = Field(30.0, gt=0)  # reading one file
    chunk_tokens: int = Field(200, ge=16, le=4096)
    max_chunks: int = Field(5, ge=1, le=256)
    reserved_tokens: int = Field(448, ge=64)  # context kept for prompt and output when a budget is raised
    max_documents_per_app: int = Field(16, ge=1)  # least recently used ones are closed beyond this
    document_ttl_seconds: float = Field(3600.0, gt=0)  # after the last use
    max_questions: int = Field(10, ge=1, le=50)
    max_concurrent_ingests: int = Field(2, ge=1)  # files parsed at once (CPU and memory bound)
    retrieval: Literal["bm25", "hybrid"] = "bm25"  # ranking of a long document's chunks (hybrid: + embeddings)
    max_derived_bytes: int = Field(256 << 20, ge=0)  # indexes, embeddings, part summaries of all open documents


class MemoryConfig(_Section):
    """Memory pressure (slmd/memory/): its sources and the calm period before the level falls."""

    calm_seconds: float = Field(30.0, gt=0)  # no report at a level for this long: the level falls
    max_calm_seconds: float = Field(600.0, gt=0)  # backoff cap: a level that relapses doubles its calm period
    poll_seconds: float = Field(1.0, gt=0)  # polled sources (cgroup counters, budget)
    psi: bool = True  # PSI triggers on the service cgroup's memory.pressure (else /proc/pressure/memory)
    psi_path: Path | None = None  # override the pressure file
    # "<some|full> <stall us> <window us>"; unprivileged triggers need a window that is a multiple of 2 s
    psi_trigger: str = "some 150000 2000000"  # moderate
    psi_critical_trigger: str = "full 150000 2000000"  # critical; "" = off
    systemd: bool = True  # MEMORY_PRESSURE_WATCH / MEMORY_PRESSURE_WRITE from the service manager
    cgroup: bool = True  # poll memory.events and memory.current against memory.high
    cgroup_dir: Path | None = None  # override the cgroup v2 directory
    budget_bytes: int = Field(0, ge=0)  # slmd's own RSS budget; 0 = off

    @field_validator("psi_trigger", "psi_critical_trigger")
    @classmethod
    def _trigger(cls, v: str) -> str:
        if v:
            parse_trigger(v)
        return v


class Config(_Section):
    """The whole daemon configuration (see packaging/slmd.toml for every key)."""

    data_dir: Path = Field(default_factory=default_data_dir)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    cache: CacheSection = Field(default_factory=CacheSection)
    apps: dict[str, AppSection] = Field(default_factory=dict)  # per-app policy; "default" applies to the rest
    log: LogConfig = Field(default_factory=LogConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    docs: DocsConfig = Field(default_factory=DocsConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    @model_validator(mode="after")
    def _tcp_needs_tokens(self) -> "Config":
        if self.server.tcp.port and not self.auth.tokens:
            raise ValueError("server.tcp.port is set but auth.tokens is empty: TCP requires per-app tokens")
        return self

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


class ConfigError(Exception):
    """Raised with a message that names the offending key."""


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def env_overrides(environ: dict[str, str] | os._Environ) -> dict[str, Any]:
    """`SLMD_ENGINE__MAX_RUNNING=8` -> {"engine": {"max_running": "8"}}.
    Double underscores separate sections so keys may contain single ones."""
    dotted = {}
    top_level = set(Config.model_fields)
    for name, value in environ.items():
        if not name.startswith("SLMD_") or name in _CLIENT_ENV:
            continue
        # settings are SLMD_SECTION__KEY or a top-level key (SLMD_DATA_DIR); other
        # SLMD_* variables belong to tools and tests, not to the daemon
        if "__" not in name and name[5:].lower() not in top_level:
            continue
        if value[:1] in "{[":  # tables and lists come as JSON: SLMD_AUTH__TOKENS='{"tok": "app"}'
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        dotted[name[5:].lower().replace("__", ".")] = value
    return _nest(dotted)


# Variables the client library reads; they are not daemon settings.
_CLIENT_ENV = {"SLMD_SOCKET", "SLMD_TOKEN", "SLMD_CONFIG", "SLMD_TEST_MODEL"}


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error" and "expected" in (e.get("ctx") or {}):
            msg = f"allowed values: {e['ctx']['expected']}"
        lines.append(f"{key}: {msg} (got {e.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(
    file: Path | None = None,
    *,
    environ: dict[str, str] | os._Environ | None = None,
    flags: dict[str, Any] | None = None,
) -> Config:
    """File < environment < flags. `flags` uses dotted keys ("engine.max_running")."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    file = file or (Path(environ["SLMD_CONFIG"]) if environ.get("SLMD_CONFIG") else None)
    if file is not None:
        try:
            raw = tomllib.loads(Path(file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {file} is not valid TOML: {e}") from None
    raw = _deep_merge(raw, env_overrides(environ))
    raw = _deep_merge(raw, _nest({k: v for k, v in (flags or {}).items() if v is not None}))
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None
