"""Pretrain a SlimLM on the token memmaps of training/data.py.

    python -m training.pretrain --data-dir build/data/pretrain --out-dir build/runs/tiny --preset tiny \\
        --max-steps 2000 --plot build/runs/tiny/loss.png
    torchrun --nproc_per_node 2 -m training.pretrain ...      # DDP: gloo on CPU, nccl on GPU
    python -m training.pretrain --out-dir build/runs/tiny --resume ...   # continue from ckpt.pt

nanoGPT's loop, reading top to bottom: random windows of `seq_len` tokens,
AdamW or Lion, linear warmup then cosine decay, gradient clipping, bf16
autocast on CUDA. `ckpt.pt` holds the model config and weights (what
training/export.py reads), the optimizer state, the step and the RNG state.
Batches are drawn from a generator seeded by (seed, step, rank), and the
learning rate is a function of the step, so a resumed run continues exactly
where an uninterrupted one would have been. `log.jsonl` gets one line per
`log_every` steps (loss, lr, tokens/s) and one per evaluation (val_loss).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from training.data import open_tokens
from training.model import SlimLM, SlimLMConfig
from training.optim import OptimizerKind, cosine_lr, make_optimizer, set_lr

CHECKPOINT_FILE = "ckpt.pt"
LOG_FILE = "log.jsonl"


@dataclass(frozen=True)
class PretrainConfig:
    data_dir: str = "build/data/pretrain"
    out_dir: str = "build/runs/pretrain"
    preset: str = "tiny"
    seq_len: int = 256
    batch_size: int = 8  # sequences per rank per micro-step
    grad_accum: int = 1
    max_steps: int = 1000  # where the cosine schedule ends
    warmup_steps: int = 100
    learning_rate: float = 1e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = OptimizerKind.ADAMW.value
    eval_every: int = 200
    eval_batches: int = 20
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"  # auto: cuda when available
    compile: bool = False
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    resume: bool = False
    stop_after: int | None = None  # leave after this step, as if interrupted (the schedule still ends at max_steps)

    def __post_init__(self) -> None:
        OptimizerKind(self.optimizer)
        if self.seq_len < 1 or self.batch_size < 1 or self.grad_accum < 1 or self.max_steps < 1:
            raise ValueError("seq_len, batch_size, grad_accum and max_steps must be >= 1")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> "DistInfo":
        # torchrun (and tests that spawn ranks) set these.
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("WORLD_SIZE", 1)))

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    model: SlimLM
    step: int
    loss: float
    val_loss: float | None
    tokens_per_s: float


def _device(cfg: PretrainConfig, info: DistInfo) -> torch.device:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":  # an explicit index: torch.cuda.set_device refuses a bare "cuda"
        name = f"cuda:{info.local_rank}"
    return torch.device(name)


def get_batch(tokens: np.ndarray, seq_len: int, batch_size: int, generator: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows: inputs and the same windows shifted by one token."""
    if len(tokens) <= seq_len + 1:
        raise ValueError(f"{len(tokens)} tokens are too few for windows of {seq_len}")
    starts = torch.randint(len(tokens) - seq_len - 1, (batch_size,), generator=generator).tolist()
    window = torch.from_numpy(np.stack([tokens[s : s + seq_len + 1].astype(np.int64) for s in starts]))
    x, y = window[:, :-1], window[:, 1:]
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def _generator(*keys: int) -> torch.Generator:
    # One generator per (seed, step, rank, micro-step): no sampler state to checkpoint.
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + k) % (2**63)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: np.ndarray, cfg: PretrainConfig, info: DistInfo,
             device: torch.device, autocast) -> float:
    """Mean loss over the same eval_batches windows every time, shared out among ranks."""
    model.eval()
    total = torch.zeros(2, device=device)
    for i in range(info.rank, cfg.eval_batches, info.world_size):
        x, y = get_batch(tokens, cfg.seq_len, cfg.batch_size, _generator(cfg.seed, 2**31 + i), device)
        with autocast:
            _, loss = model(x, y)
        total += torch.stack([loss.float(), torch.ones((), device=device)])
    if info.is_distributed:
        dist.all_reduce(total)
    model.train()
    return (total[0] / total[1]).item()


def save_checkpoint(path: Path, model: SlimLM, optimizer: torch.optim.Optimizer, cfg: PretrainConfig,
                    step: int, tokens_seen: int) -> None:
    ckpt = model.checkpoint()
    ckpt.update(
        optimizer=optimizer.state_dict(),
        step=step,
        tokens_seen=tokens_seen,
        train_config=asdict(cfg),
        rng={"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    )
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact


def train(cfg: PretrainConfig) -> TrainResult:
    info = DistInfo.from_env()
    device = _device(cfg, info)
    if info.is_distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / CHECKPOINT_FILE, out / LOG_FILE

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    ckpt = None
    if ckpt_path.exists():
        if not cfg.resume:
            raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out-dir")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model = SlimLM.from_checkpoint(ckpt)
    else:
        model = SlimLM(SlimLMConfig.preset(cfg.preset))
    if cfg.seq_len > model.cfg.context_length:
        raise ValueError(f"seq_len {cfg.seq_len} exceeds the model's context length {model.cfg.context_length}")
    model.to(device)
    optimizer = make_optimizer(OptimizerKind(cfg.optimizer), model, cfg.learning_rate, cfg.weight_decay,
                               (cfg.beta1, cfg.beta2))
    step, tokens_seen = 0, 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        step, tokens_seen = ckpt["step"], ckpt["tokens_seen"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        del ckpt

    eval_model: torch.nn.Module = torch.compile(model) if cfg.compile else model
    forward_model = eval_model
    if info.is_distributed:
        forward_model = DDP(eval_model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    train_tokens, val_tokens = open_tokens(Path(cfg.data_dir), "train"), open_tokens(Path(cfg.data_dir), "val")
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * info.world_size
    min_lr = cfg.learning_rate * cfg.min_lr_ratio
    last_step = cfg.max_steps if cfg.stop_after is None else min(cfg.max_steps, cfg.stop_after)

    def log(record: dict) -> None:
        if info.is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    loss_value, val_loss, tokens_per_s = float("nan"), None, 0.0
    window_start, window_steps = time.perf_counter(), 0
    model.train()
    while step < last_step:
        lr = cosine_lr(step, max_lr=cfg.learning_rate, min_lr=min_lr, warmup_steps=cfg.warmup_steps,
                       total_steps=cfg.max_steps)
        set_lr(optimizer, lr)
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, y = get_batch(train_tokens, cfg.seq_len, cfg.batch_size,
                             _generator(cfg.seed, step, info.rank, micro), device)
            # Gradients are averaged across ranks on the last micro-step only.
            sync = micro == cfg.grad_accum - 1 or not info.is_distributed
            with (nullcontext() if sync else forward_model.no_sync()), autocast:
                _, loss = forward_model(x, y)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        window_steps += 1

        if step % cfg.log_every == 0 or step == last_step:
            mean_loss = loss_sum / cfg.grad_accum
            if info.is_distributed:
                dist.all_reduce(mean_loss)
                mean_loss /= info.world_size
            loss_value = mean_loss.item()  # synchronizes the device, so the clock below is honest
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_steps * tokens_per_step / elapsed
            log({"step": step, "loss": loss_value, "lr": lr, "tokens_seen": tokens_seen,
                 "tokens_per_s": round(tokens_per_s, 1)})
            window_start, window_steps = time.perf_counter(), 0
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val_loss = evaluate(eval_model, val_tokens, cfg, info, device, autocast)
            log({"step": step, "val_loss": val_loss, "tokens_seen": tokens_seen})
        if info.is_main and (step % cfg.checkpoint_every == 0 or step == last_step):
            save_checkpoint(ckpt_path, model, optimizer, cfg, step, tokens_seen)
        if step % cfg.eval_every == 0 or step % cfg.checkpoint_every == 0:
            window_start = time.perf_counter()  # keep evaluation and saving out of tokens/s
            window_steps = 0

    if info.is_distributed:
        dist.barrier()
    return TrainResult(model, step, loss_value, val_loss, tokens_per_s)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_log(log_path: Path, png_path: Path, title: str = "SlimLM pretraining") -> Path:
    """Training and validation loss against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [(r["tokens_seen"], r["loss"]) for r in records if "loss" in r]
    val = [(r["tokens_seen"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def config_from_args(argv: list[str] | None = None) -> tuple[PretrainConfig, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # One flag per PretrainConfig field: --seq-len 256, --compile/--no-compile, ...
    for field in dataclasses.fields(PretrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(field.type, str)
            parser.add_argument(flag, type=kind, default=field.default)
    parser.add_argument("--plot", type=Path, default=None, help="write the loss curve (PNG) here when done")
    args = vars(parser.parse_args(argv))
    plot = args.pop("plot")
    return PretrainConfig(**args), plot


def main(argv: list[str] | None = None) -> None:
    cfg, plot = config_from_args(argv)
    result = train(cfg)
    info = DistInfo.from_env()
    if info.is_main:
        val = "n/a" if result.val_loss is None else f"{result.val_loss:.4f}"
        print(f"step {result.step}: loss {result.loss:.4f}, val loss {val}, "
              f"{result.tokens_per_s:,.0f} tokens/s, {result.model.num_params():,} parameters")
        if plot is not None:
            print(f"wrote {plot_log(Path(cfg.out_dir) / LOG_FILE, plot)}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
