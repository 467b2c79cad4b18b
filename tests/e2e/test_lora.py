"""Base + LoRA adapter: `slmd serve --lora ADAPTER.gguf` applies a GGUF LoRA
(training/llama.py's writer, what training/finetune.py --export-lora ships)
over the default model. A zero adapter changes nothing; a non-zero one changes
greedy output; a missing or foreign adapter refuses to start, naming it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from slmd_client import AsyncClient
from tests.e2e.test_lifecycle import _serve_fails
from training.llama import write_lora_gguf

PROMPT = [{"role": "user", "content": "Name three colors."}]
RANK = 4
D_MODEL, D_KV, D_FF, N_LAYERS = 576, 192, 1536, 30  # SmolLM2-135M


def _adapter(path, scale_b: float):
    g = torch.Generator().manual_seed(0)
    lora = {}
    for layer in range(N_LAYERS):
        for name, (d_in, d_out) in {"attn_q": (D_MODEL, D_MODEL), "attn_v": (D_MODEL, D_KV),
                                    "ffn_up": (D_MODEL, D_FF)}.items():
            a = torch.randn(RANK, d_in, generator=g) / d_in ** 0.5
            b = torch.randn(d_out, RANK, generator=g) * scale_b
            lora[f"blk.{layer}.{name}"] = (a, b)
    return write_lora_gguf(lora, _adapter.base, path, alpha=RANK)


async def _greedy(target: str) -> list[int]:
    async with AsyncClient(target, timeout=120) as c:
        return (await c.complete(messages=PROMPT, max_tokens=16, temperature=0, deterministic=True)).token_ids


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, default_model):
    _adapter.base = default_model
    tmp = tmp_path_factory.mktemp("lora")
    return _adapter(tmp / "zero.gguf", 0.0), _adapter(tmp / "strong.gguf", 0.5)


def test_lora_adapter_is_applied(daemon_factory, default_model, adapters):
    zero, strong = adapters
    outs = []
    for extra in ((), ("--lora", str(zero)), ("--lora", str(strong))):
        d = daemon_factory(default_model, "--threads", "1", "--max-running", "2", *extra)
        outs.append(asyncio.run(_greedy(d.target)))
        d.stop()
    base, with_zero, with_strong = outs
    assert with_zero == base  # the adapter path is the same computation when B = 0
    assert with_strong != base


def test_missing_adapter_refuses_to_start(tmp_path, default_model):
    out = _serve_fails(tmp_path, default_model, "--lora", str(tmp_path / "nope.gguf"))
    assert "nope.gguf" in out and "lora" in out.lower()


def test_adapter_for_another_model_refuses_to_start(tmp_path, default_model, tiny_model):
    out = _serve_fails(tmp_path, tiny_model, "--lora", str(default_model))
    assert str(default_model) in out


SHIPPED = Path(__file__).resolve().parents[2] / "training" / "artifacts" / "docassist-lora.gguf"


def _model_intent_accuracy(target: str, cases) -> float:
    from slmd_client import Client

    with Client(target, timeout=120) as c:
        hits = sum(next(iter(c.documents.assist(None, text, detector="model", detect_only=True))).intent.upper()
                   == label for text, label in cases)
    return hits / len(cases)


def test_shipped_docassist_adapter_detects_intent(daemon_factory, default_model):
    """The DocAssist LoRA (training/artifacts, fine-tuned on the teacher's dataset)
    over the default model: the model intent detector goes from near chance to
    reliable on requests it never saw (tests/e2e/intent_cases.py, OTHER left
    out: the DocAssist data has no such requests)."""
    from tests.e2e.intent_cases import CASES, HELD_OUT

    cases = [c for c in (*CASES, *HELD_OUT) if c[1] != "OTHER"]
    acc = {}
    for name, extra in (("base", ()), ("adapter", ("--lora", str(SHIPPED)))):
        d = daemon_factory(default_model, "--threads", "1", "--max-running", "2", *extra)
        acc[name] = _model_intent_accuracy(d.target, cases)
        d.stop()
    print(f"model intent accuracy on {len(cases)} requests: {acc}")
    assert acc["adapter"] >= 0.8 and acc["adapter"] > acc["base"] + 0.2, acc
