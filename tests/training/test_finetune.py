"""Fine-tuning: responses-only labels, LoRA on a SlimLM, and SmolLM2 from its GGUF with a
LoRA adapter that llama.cpp applies over the packaged base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")

from tests.training.corpus import TOKENIZER_GGUF, needs_tokenizer, tiny_records, write_records  # noqa: E402
from training.docassist import Split, examples_of  # noqa: E402
from training.finetune import ExampleEncoder, FinetuneConfig, export_merged, finetune  # noqa: E402
from training.lora import LoRALinear, apply_lora, lora_modules  # noqa: E402
from training.model import IGNORE_INDEX, SlimLM, SlimLMConfig  # noqa: E402

pytestmark = needs_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from slmd.tokenizer import Tokenizer

    return Tokenizer.from_gguf(TOKENIZER_GGUF)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_only_the_response_carries_loss(tokenizer):
    encoder = ExampleEncoder(tokenizer)
    example = next(e for e in examples_of(tiny_records(), Split.TRAIN) if e.kind == "document")
    tokenized = encoder.encode(example)
    # The prompt is what the daemon's Documents service sends.
    assert tokenized.prompt == encoder.layout.prefix_ids(example.document) + encoder.layout.suffix_ids(example.request)
    inputs, labels = tokenized.inputs_and_labels()
    assert len(inputs) == len(labels) == len(tokenized.prompt) + len(tokenized.response) - 1
    scored = [t for t in labels if t != IGNORE_INDEX]
    assert scored == tokenized.response and scored[-1] == encoder.end_id
    assert tokenizer.decode(scored[:-1]) == example.response
    intent = next(e for e in examples_of(tiny_records(), Split.TRAIN) if e.kind == "intent")
    assert tokenizer.decode(encoder.encode(intent).response[:-1]) == intent.intent.value


def _losses(log_path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in log_path.read_text().splitlines() if '"loss"' in line]


@pytest.fixture
def slimlm_base(tmp_path: Path) -> tuple[SlimLM, Path, Path]:
    torch.manual_seed(0)
    base = SlimLM(SlimLMConfig.preset("tiny"))
    torch.save(base.checkpoint(), tmp_path / "base.pt")
    return base, tmp_path / "base.pt", write_records(tmp_path / "records.jsonl", tiny_records())


def test_slimlm_full_finetune_learns_responses(tmp_path: Path, tokenizer, slimlm_base):
    _, ckpt, records = slimlm_base
    cfg = FinetuneConfig(records=str(records), out_dir=str(tmp_path / "ft"), base=str(ckpt), lora_rank=0,
                         max_steps=12, batch_size=4, learning_rate=1e-2, warmup_steps=2, log_every=1, num_threads=1,
                         eval_examples=4)
    result = finetune(cfg, tokenizer, log=lambda _: None)
    losses = _losses(tmp_path / "ft" / "log.jsonl")
    assert np.mean(losses[-3:]) < losses[0] - 2.0, losses
    assert result.num_train_examples == 3 * 8  # 3 train documents, 8 examples each; the test document unseen
    assert result.test_loss_after < result.test_loss_before


def test_slimlm_lora_trains_only_the_adapter(tmp_path: Path, tokenizer, slimlm_base):
    base, ckpt, records = slimlm_base
    cfg = FinetuneConfig(records=str(records), out_dir=str(tmp_path / "ft"), base=str(ckpt), lora_rank=8,
                         lora_alpha=16, max_steps=3, batch_size=2, learning_rate=1e-2, warmup_steps=1, log_every=1,
                         num_threads=1, eval_examples=2)
    result = finetune(cfg, tokenizer, log=lambda _: None)
    wrapped = lora_modules(result.model)
    assert len(wrapped) == 2 * base.cfg.num_layers
    for path, module in wrapped.items():  # the base weights are frozen, the update is not zero
        assert torch.equal(module.base.weight, base.get_submodule(path).weight)
        assert module.lora_b.abs().sum() > 0
    assert torch.equal(result.model.wte.weight, base.wte.weight)
    saved = torch.load(tmp_path / "ft" / "finetune.pt", weights_only=True)
    assert set(saved["lora"]) == set(wrapped)
    out = export_merged(result, cfg, tmp_path / "merged.gguf", "f16")
    assert out.stat().st_size > 0 and not lora_modules(result.model)


def _llama_logits(model_path: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    llm = llama_cpp.Llama(str(model_path), n_ctx=128, n_threads=1, logits_all=True, verbose=False,
                          lora_path=str(lora) if lora else None)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)])
    llm.close()
    return out


@pytest.mark.default_model
@pytest.mark.slow
def test_smollm2_lora_adapter_and_merge_run_in_llama_cpp(default_model: Path, tmp_path: Path, tokenizer):
    from training.llama import load_gguf, param_to_gguf, write_gguf, write_lora_gguf
    from training.lora import merge_lora

    model = load_gguf(default_model).eval()
    ids = tokenizer.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    with torch.no_grad():
        base_logits = model(torch.tensor([ids]))[0][0].numpy()
    apply_lora(model, ("q", "v"), rank=4, alpha=8)
    torch.manual_seed(0)
    for m in lora_modules(model).values():  # a visible update, as training would leave
        torch.nn.init.normal_(m.lora_b, std=0.3)
    with torch.no_grad():
        tuned_logits = model(torch.tensor([ids]))[0][0].numpy()
    lora = {param_to_gguf(p): (m.lora_a, m.lora_b) for p, m in lora_modules(model).items()}
    adapter = write_lora_gguf(lora, default_model, tmp_path / "adapter.gguf", alpha=8)
    assert adapter.stat().st_size < 2 * 2**20  # a small artifact next to the 100 MB base

    with_adapter = _llama_logits(default_model, ids, adapter)
    base_noise = np.abs(_llama_logits(default_model, ids) - base_logits).max()  # Q4_1 vs dequantized F32
    effect = np.abs(tuned_logits - base_logits).max()
    assert effect > 3 * base_noise, (effect, base_noise)
    assert np.abs(with_adapter - tuned_logits).max() < 2 * base_noise + 0.5

    changed = {f"{param_to_gguf(p)}.weight" for p in lora_modules(model)}
    merged_path = write_gguf(merge_lora(model), default_model, tmp_path / "merged.gguf", changed)
    merged = _llama_logits(merged_path, ids)
    assert np.abs(merged - tuned_logits).max() < 2 * base_noise + 0.5
    assert isinstance(model.blocks[0].attn.q, torch.nn.Linear) and not isinstance(model.blocks[0].attn.q, LoRALinear)
