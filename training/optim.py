"""Optimizers and the learning-rate schedule shared by pretraining and fine-tuning.

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") is
what the SlimLM paper pretrains with; AdamW is the usual alternative. Lion's
update is the sign of an interpolated momentum, so its step size is the
learning rate itself: use about a tenth of AdamW's rate and ten times its
weight decay.
"""

from __future__ import annotations

import enum
import math

import torch


class OptimizerKind(enum.Enum):
    ADAMW = "adamw"
    LION = "lion"


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                p.mul_(1 - lr * wd)  # decoupled weight decay, as AdamW
                p.add_(torch.sign(m.mul(beta1).add(p.grad, alpha=1 - beta1)), alpha=-lr)
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings only; biases and norm gains are left alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(kind: OptimizerKind, model: torch.nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float]) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if kind is OptimizerKind.LION:
        return Lion(groups, lr=lr, betas=betas)
    # fused AdamW is CUDA-only; foreach is the fast path on CPU.
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def cosine_lr(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to max_lr, then cosine decay to min_lr at total_steps (and flat after).

    A pure function of the step, so a resumed run needs no scheduler state.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
