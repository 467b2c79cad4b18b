"""Fine-tune on DocAssist: loss on the responses only, LoRA or full, from SmolLM2 or a SlimLM checkpoint.

    python -m training.finetune --records training/datasets/docassist/records.jsonl --out-dir build/runs/ft \\
        --base smollm2 --lora-rank 8 --max-steps 300 \\
        --export-lora build/models/docassist-lora.gguf --export-gguf build/models/docassist-q4_1.gguf
    python -m training.finetune --base build/runs/slimlm/ckpt.pt ... --export-gguf build/models/slimlm-da.gguf

`--base smollm2` (the default) dequantizes the daemon's default GGUF into
training/llama.py's module. Each training example is tokenized exactly as the
daemon will prompt it (training/docassist.py: slmd's PromptLayout for
document tasks, its intent classifier prompt for intent examples), followed
by the response and <|im_end|>; only the response and <|im_end|> carry loss.

Outputs: `finetune.pt` (the LoRA weights or the full state), `log.jsonl`
(train loss per step, response loss on the test split before and after).
Exports: a llama.cpp LoRA adapter over the packaged base (`--export-lora`,
llama bases only: a few MB) and a merged model (`--export-gguf`: for llama,
the base GGUF with the changed matrices stored as Q8_0, the rest copied; for
SlimLM, training/export.py's mpt GGUF).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from slmd.chat import Prompter
from slmd.docassist.intent import intent_prompt
from slmd.docassist.prompts import PromptLayout
from slmd.tokenizer import Tokenizer
from training.docassist import SftExample, Split, examples_of, read_records
from training.export import default_tokenizer_gguf
from training.lora import apply_lora, lora_modules, merge_lora
from training.model import IGNORE_INDEX, SlimLM
from training.optim import cosine_lr, set_lr

SMOLLM2 = "smollm2"
LLAMA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
SLIMLM_TARGETS = ("qkv", "proj")


@dataclass(frozen=True)
class FinetuneConfig:
    records: str = "training/datasets/docassist/records.jsonl"
    out_dir: str = "build/runs/finetune"
    base: str = SMOLLM2  # "smollm2", a llama .gguf, or a SlimLM .pt checkpoint
    lora_rank: int = 8  # 0: full fine-tuning
    lora_alpha: float = 16.0
    max_steps: int = 200
    batch_size: int = 4
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_seq_len: int = 1024  # longer examples are dropped, not cut: a cut response teaches nothing
    seed: int = 1234
    num_threads: int = 0
    log_every: int = 10
    eval_examples: int = 64  # test-split examples scored before and after
    device: str = "auto"  # auto: cuda when available (bf16 autocast there)


@dataclass(frozen=True)
class TokenizedExample:
    prompt: list[int]
    response: list[int]  # ends with <|im_end|>

    def inputs_and_labels(self) -> tuple[list[int], list[int]]:
        """Next-token inputs and targets; prompt targets are IGNORE_INDEX."""
        seq = self.prompt + self.response
        labels = [IGNORE_INDEX] * (len(self.prompt) - 1) + self.response
        return seq[:-1], labels


class ExampleEncoder:
    """Prompts exactly as the daemon sends them to the model."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.layout = PromptLayout(Prompter(tokenizer))
        self.end_id = tokenizer.encode("<|im_end|>", allow_special=True)[0]

    def encode(self, example: SftExample) -> TokenizedExample:
        if example.kind == "intent":
            prompt = intent_prompt(self.layout, example.request)
        else:
            prompt = self.layout.prefix_ids(example.document) + self.layout.suffix_ids(example.request)
        return TokenizedExample(prompt, self.tokenizer.encode(example.response, allow_special=False) + [self.end_id])


def collate(examples: list[TokenizedExample]) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [e.inputs_and_labels() for e in examples]
    length = max(len(x) for x, _ in pairs)
    x = torch.zeros((len(pairs), length), dtype=torch.long)
    y = torch.full((len(pairs), length), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labels) in enumerate(pairs):
        x[row, : len(ids)] = torch.tensor(ids)
        y[row, : len(labels)] = torch.tensor(labels)
    return x, y


def load_base(base: str) -> tuple[torch.nn.Module, tuple[str, ...], Path | None]:
    """(model, LoRA target names, the base GGUF for llama bases)."""
    if base == SMOLLM2 or base.endswith(".gguf"):
        from training.llama import load_gguf

        path = default_tokenizer_gguf() if base == SMOLLM2 else Path(base)
        return load_gguf(path), LLAMA_TARGETS, path
    ckpt = torch.load(base, map_location="cpu", weights_only=True)
    return SlimLM.from_checkpoint(ckpt), SLIMLM_TARGETS, None


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.no_grad()
def response_loss(model: torch.nn.Module, examples: list[TokenizedExample], batch_size: int,
                  device: torch.device = torch.device("cpu")) -> float:
    """Mean loss per response token."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        x, y = collate(examples[i : i + batch_size])
        x, y = x.to(device), y.to(device)
        with _autocast(device):
            _, loss = model(x, y)
        n = int((y != IGNORE_INDEX).sum())
        total, count = total + loss.item() * n, count + n
    model.train()
    return total / max(count, 1)


@dataclass
class FinetuneResult:
    model: torch.nn.Module
    base_gguf: Path | None
    test_loss_before: float
    test_loss_after: float
    num_train_examples: int
    seconds: float


def finetune(cfg: FinetuneConfig, tokenizer: Tokenizer | None = None, log=print) -> FinetuneResult:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = ExampleEncoder(tokenizer or Tokenizer.from_gguf(default_tokenizer_gguf()))
    records = read_records(Path(cfg.records))

    def encoded(split: Split) -> list[TokenizedExample]:
        all_examples = [encoder.encode(e) for e in examples_of(records, split)]
        return [e for e in all_examples if len(e.prompt) + len(e.response) <= cfg.max_seq_len]

    train_examples, test_examples = encoded(Split.TRAIN), encoded(Split.TEST)[: cfg.eval_examples]
    if not train_examples:
        raise ValueError(f"no train examples within {cfg.max_seq_len} tokens in {cfg.records}")
    model, targets, base_gguf = load_base(cfg.base)
    if cfg.lora_rank:
        apply_lora(model, targets, cfg.lora_rank, cfg.lora_alpha)
    device = _device(cfg.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    log_path = out / "log.jsonl"
    log_path.unlink(missing_ok=True)

    def record(entry: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    before = response_loss(model, test_examples, cfg.batch_size, device) if test_examples else float("nan")
    record({"step": 0, "test_response_loss": before})
    log(f"{len(train_examples)} train examples, {len(test_examples)} test; test response loss {before:.4f}")
    generator = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    t0 = time.perf_counter()
    tokens = 0
    model.train()
    for step in range(cfg.max_steps):
        set_lr(optimizer, cosine_lr(step, max_lr=cfg.learning_rate, min_lr=cfg.learning_rate / 10,
                                    warmup_steps=cfg.warmup_steps, total_steps=cfg.max_steps))
        batch = []
        while len(batch) < cfg.batch_size:  # epochs of shuffled examples
            if not order:
                order = torch.randperm(len(train_examples), generator=generator).tolist()
            batch.append(train_examples[order.pop()])
        x, y = collate(batch)
        tokens += int(x.numel())
        with _autocast(device):
            _, loss = model(x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            record({"step": step + 1, "loss": loss.item()})
            log(f"step {step + 1}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
    seconds = time.perf_counter() - t0
    record({"train_seconds": seconds, "train_tokens_per_second": tokens / seconds})
    after = response_loss(model, test_examples, cfg.batch_size, device) if test_examples else float("nan")
    record({"step": cfg.max_steps, "test_response_loss": after})
    log(f"test response loss {before:.4f} -> {after:.4f}")
    model.to("cpu")  # exports and merges run on the CPU
    state = ({path: (m.lora_a.detach(), m.lora_b.detach()) for path, m in lora_modules(model).items()}
             if cfg.lora_rank else model.state_dict())
    torch.save({"base": cfg.base, "config": asdict(cfg), "lora" if cfg.lora_rank else "model": state},
               out / "finetune.pt")
    return FinetuneResult(model, base_gguf, before, after, len(train_examples), seconds)


def export_lora(result: FinetuneResult, cfg: FinetuneConfig, path: Path) -> Path:
    from training.llama import param_to_gguf, write_lora_gguf

    if result.base_gguf is None:
        raise ValueError("a GGUF LoRA adapter needs a llama base (--base smollm2 or a .gguf)")
    lora = {param_to_gguf(p): (m.lora_a, m.lora_b) for p, m in lora_modules(result.model).items()}
    return write_lora_gguf(lora, result.base_gguf, path, cfg.lora_alpha)


def export_merged(result: FinetuneResult, cfg: FinetuneConfig, path: Path, slimlm_type: str = "q4_0") -> Path:
    model = result.model
    if result.base_gguf is not None:
        from training.llama import param_to_gguf, write_gguf

        # Only the matrices LoRA touched are re-quantized; the rest are copied bit for bit.
        changed = {f"{param_to_gguf(p)}.weight" for p in lora_modules(model)} if cfg.lora_rank else None
        return write_gguf(merge_lora(model), result.base_gguf, path, changed)
    merge_lora(model)
    from training.export import export_gguf

    return export_gguf(model, model.cfg, path, slimlm_type, name="SlimLM-DocAssist")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(FinetuneConfig):
        kind = {"int": int, "float": float}.get(field.type, str)
        parser.add_argument("--" + field.name.replace("_", "-"), type=kind, default=field.default)
    parser.add_argument("--export-lora", type=Path, default=None, help="GGUF LoRA adapter (llama bases)")
    parser.add_argument("--export-gguf", type=Path, default=None, help="merged model GGUF")
    args = vars(parser.parse_args(argv))
    lora_path, gguf_path = args.pop("export_lora"), args.pop("export_gguf")
    cfg = FinetuneConfig(**args)
    result = finetune(cfg)
    print(f"{result.num_train_examples} examples, {cfg.max_steps} steps in {result.seconds:.0f} s; "
          f"test response loss {result.test_loss_before:.4f} -> {result.test_loss_after:.4f}")
    if lora_path is not None:
        print(f"wrote {export_lora(result, cfg, lora_path)}")
    if gguf_path is not None:
        print(f"wrote {export_merged(result, cfg, gguf_path)}")


if __name__ == "__main__":
    main()
