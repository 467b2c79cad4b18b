"""Putting the daemon together: model store -> runtime -> engine thread ->
grpc.aio servicers on a Unix socket (and loopback TCP when configured), with
health, reflection and a graceful stop (health NOT_SERVING, then
`server.stop(grace)`, then the engine drains)."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import signal
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection
from slmd_client._proto.slmd.v1 import admin_pb2, documents_pb2, generation_pb2

from slmd.chat import Prompter
from slmd.config import Config
from slmd.cache.prefix_cache import CacheConfig, EvictionPolicy
from slmd.core import Engine
from slmd.metrics import Metrics
from slmd.memory.model import ModelSlot, vocab_grammar_check
from slmd.memory.levels import PressureLevel
from slmd.memory.reactor import MemoryReactor
from slmd.models import ModelError, resolve_model
from slmd.runtime.llama import LlamaRuntime, RuntimeConfig
from slmd.scheduler.scheduler import SchedulerConfig
from slmd.server import convert
from slmd.docassist.prompts import PromptLayout
from slmd.docassist.store import DocumentStore
from slmd.server.admin import AdminServicer
from slmd.server.documents import DocumentsServicer
from slmd.server.generation import GenerationServicer
from slmd.server.front import PeerFront, private_socket_path
from slmd.server.identity import IdentityResolver, PeerRule
from slmd.server.policies import AppPolicies
from slmd.server.registry import register
from slmd.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SERVICES = (
    generation_pb2.DESCRIPTOR.services_by_name["Generation"],
    admin_pb2.DESCRIPTOR.services_by_name["Admin"],
    documents_pb2.DESCRIPTOR.services_by_name["Documents"],
)


@dataclass
class Daemon:
    cfg: Config
    engine: Engine
    runtime: ModelSlot
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    front: PeerFront | None = None
    metrics: Metrics | None = None
    reactor: MemoryReactor | None = None


def build(cfg: Config) -> Daemon:
    model_path = resolve_model(cfg.model.path, cfg.models_dir)
    tokenizer = Tokenizer.from_gguf(model_path)
    eng = cfg.engine
    metrics = Metrics({*cfg.apps, *cfg.auth.tokens.values(), cfg.auth.unix_default_app or "local"}, cfg.metrics.max_apps)
    runtime_cfg = RuntimeConfig(
        model_path=model_path, num_sequences=eng.streams,
        context_per_sequence=cfg.model.context_per_sequence, batch_tokens=eng.step_token_budget,
        n_threads=cfg.model.n_threads, n_gpu_layers=cfg.model.n_gpu_layers,
        kv_unified=eng.kv_unified, kv_pool_tokens=eng.kv_pool_tokens, use_mmap=cfg.model.use_mmap,
        lora_path=cfg.model.lora_path, lora_scale=cfg.model.lora_scale,
        backend_sampling=cfg.model.backend_sampling, argmax_threads=cfg.model.argmax_threads,
        flash_attn=cfg.model.flash_attn, adapt_threads=cfg.model.adapt_threads,
    )
    # the engine unloads the model under memory pressure or after keep_alive, and reloads it from here
    runtime = ModelSlot(lambda n: LlamaRuntime(replace(runtime_cfg, num_sequences=n or runtime_cfg.num_sequences)),
                        grammar_check=vocab_grammar_check(model_path))
    info = runtime.info
    metrics.on_model_loaded()
    log.info("model %s (%s, %.1f M params, %d sequences x %d tokens%s)", info.name, info.architecture,
             info.n_params / 1e6, info.num_sequences, info.context_per_sequence,
             f", one KV pool of {runtime_cfg.num_cells} tokens" if eng.kv_pool_tokens else "")
    policies = AppPolicies(cfg.apps)
    engine = Engine(runtime, SchedulerConfig(
        num_sequences=eng.streams, max_running=eng.max_running, step_token_budget=eng.step_token_budget,
        context_per_sequence=info.context_per_sequence, max_waiting=eng.max_waiting,
        kv_bytes_per_token=runtime.kv_bytes_per_token, kv_pool_tokens=eng.kv_pool_tokens,
        interactive_step_seconds=eng.interactive_step_seconds, interactive_window_seconds=eng.interactive_window_seconds,
        cache=CacheConfig(enabled=cfg.cache.enabled, min_tokens=cfg.cache.min_tokens, host_bytes=cfg.cache.host_bytes,
                          policy=EvictionPolicy(cfg.cache.policy),
                          sharing_groups={g: tuple(a) for g, a in cfg.cache.sharing_groups.items()}),
    ), policies.get, metrics, eng.keep_alive_seconds)
    engine.lifecycle.retry_after = cfg.memory.calm_seconds
    reactor = MemoryReactor(engine, cfg.memory.calm_seconds, metrics, max_calm_seconds=cfg.memory.max_calm_seconds)
    metrics.watch(engine)
    front = None
    if cfg.auth.peer_credentials:
        path = str(cfg.server.socket_path.absolute())
        front = PeerFront(path, private_socket_path(path))
    rules = tuple(PeerRule(name, tuple(a.uids), tuple(a.gids), tuple(a.exe)) for name, a in cfg.apps.items())
    identity = IdentityResolver(cfg.auth.tokens, cfg.auth.unix_default_app, rules=rules,
                                unknown_callers=cfg.auth.unknown_callers, front=front)
    limits = convert.Limits(eng.max_tokens_default, eng.max_tokens_limit, eng.max_prompt_bytes, info.n_vocab)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", cfg.server.max_message_bytes),
        ("grpc.max_send_message_length", cfg.server.max_message_bytes),
    ])
    register(server, GenerationServicer(engine, Prompter(tokenizer), limits, identity, policies,
                                        info.context_per_sequence, eng.deterministic, eng.kv_pool_tokens),
             SERVICES[0], metrics)
    register(server, AdminServicer(engine, info, identity, metrics, runtime.kv_bytes_per_token, reactor,
                                   frozenset(a for a, c in cfg.apps.items() if c.admin)), SERVICES[1], metrics)
    documents = DocumentsServicer(engine, PromptLayout(Prompter(tokenizer)), limits, identity,
                                  info.context_per_sequence, cfg.docs, policies.priority)
    register(server, documents, SERVICES[2], metrics)
    reactor.add_listener(_shed_documents(documents.store, asyncio.get_running_loop()))
    health_servicer = health.aio.HealthServicer()
    # Check goes through slmd's registry (corrupt bytes -> INVALID_ARGUMENT); Watch,
    # a long-lived stream written with context.write, keeps grpc's plain handler
    register(server, health_servicer, health_pb2.DESCRIPTOR.services_by_name["Health"], metrics, only=("Check",))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Watch": grpc.unary_stream_rpc_method_handler(
            health_servicer.Watch, request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString)}),))
    reflection.enable_server_reflection([s.full_name for s in SERVICES] + [reflection.SERVICE_NAME, "grpc.health.v1.Health"], server)
    return Daemon(cfg, engine, runtime, server, health_servicer, front, metrics, reactor)


def _shed_documents(store: DocumentStore, loop: asyncio.AbstractEventLoop) -> Callable[[PressureLevel], None]:
    """A memory-pressure listener: at moderate or above, every open document's
    derived state (indexes, embeddings, part summaries) is dropped; the
    documents stay open and rebuild it on next use. The store belongs to the
    event loop, so a level reported from the watcher thread is handed over."""

    def shed() -> None:
        freed = store.shed(1 << 62)  # all of it, in-flight part summaries included
        log.info("memory pressure: %d bytes of document state dropped", freed)

    def on_level(level: PressureLevel) -> None:
        if level < PressureLevel.MODERATE:
            return
        try:
            here = asyncio.get_running_loop() is loop  # the Admin RPC runs on the loop
        except RuntimeError:
            here = False
        shed() if here else loop.call_soon_threadsafe(shed)

    return on_level


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket of a daemon that died
        else:
            raise ModelError(f"another daemon is listening on {path}")
        finally:
            probe.close()


def _listen(d: Daemon) -> list[str]:
    """Bind gRPC (behind the front when peer credentials are on). Sockets are
    created by bind() under a umask that makes them 0660 from the first
    instant; a chmod afterwards would leave a window."""
    cfg = d.cfg.server
    path = cfg.socket_path.absolute()
    old = os.umask(0o117)
    try:
        d.server.add_insecure_port(f"unix:{d.front.inner_path if d.front else path}")
    finally:
        os.umask(old)
    addrs = [f"unix:{path}"]
    if cfg.tcp.port:
        port = d.server.add_insecure_port(f"{cfg.tcp.host}:{cfg.tcp.port}")
        addrs.append(f"{cfg.tcp.host}:{port}")
    return addrs


async def _start_front(d: Daemon) -> None:
    if d.front is not None:
        old = os.umask(0o117)
        try:
            await d.front.start()
        finally:
            os.umask(old)
    if d.cfg.server.socket_group:
        os.chown(d.cfg.server.socket_path, -1, grp.getgrnam(d.cfg.server.socket_group).gr_gid)


async def serve(cfg: Config, *, ready_fd: int | None = None) -> int:
    _prepare_socket(cfg.server.socket_path.absolute())  # refuse before the model loads
    d = build(cfg)
    d.engine.start()
    d.reactor.start(cfg.memory)
    addrs = _listen(d)
    await d.server.start()
    await _start_front(d)
    await d.health.set("", health_pb2.HealthCheckResponse.SERVING)
    for s in SERVICES:
        await d.health.set(s.full_name, health_pb2.HealthCheckResponse.SERVING)
    if cfg.metrics.is_served:
        port = d.metrics.serve(cfg.metrics.host, cfg.metrics.port)
        if port is not None:
            addrs.append(f"metrics http://{cfg.metrics.host}:{port}/metrics")
    log.info("slmd serving on %s", ", ".join(addrs))
    if ready_fd is not None:
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"ready\n")
    _notify_systemd("READY=1")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("stopping: draining in-flight requests (grace %.1f s)", cfg.server.shutdown_grace_seconds)
    _notify_systemd("STOPPING=1")
    await d.health.enter_graceful_shutdown()
    if d.front is not None:
        await d.front.stop()  # no new connections; open ones keep draining through the relay
    await d.server.stop(cfg.server.shutdown_grace_seconds)
    await loop.run_in_executor(None, d.engine.stop, 5.0)
    d.reactor.stop()
    if d.runtime.is_loaded:
        d.runtime.close()
        d.metrics.on_model_unloaded()
    d.metrics.close()
    with contextlib.suppress(FileNotFoundError):
        cfg.server.socket_path.unlink()
    if d.front is not None:
        with contextlib.suppress(OSError):
            os.unlink(d.front.inner_path)
            os.rmdir(os.path.dirname(d.front.inner_path))
    log.info("stopped")
    return 0


def _notify_systemd(state: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.send(state.encode())
