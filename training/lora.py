"""LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update B @ A.

The shapes are llama.cpp's adapter convention, so an adapter exports as is:
`lora_a` is (rank, in_features), `lora_b` is (out_features, rank), and the
update is scaled by alpha / rank.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.rank, self.alpha = rank, alpha
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))  # zero: training starts at the base model
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        base.requires_grad_(False)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def delta(self) -> torch.Tensor:
        """The weight update, (out_features, in_features)."""
        return (self.lora_b @ self.lora_a) * self.scale

    def merged(self) -> nn.Linear:
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.base.weight + self.delta())
            if self.base.bias is not None:
                linear.bias.copy_(self.base.bias)
        return linear


def apply_lora(model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float) -> list[str]:
    """Freeze model and wrap every nn.Linear whose attribute name is in targets; return their paths."""
    model.requires_grad_(False)
    wrapped = []
    for path, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(module, name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{path}.{name}" if path else name)
    if not wrapped:
        raise ValueError(f"no nn.Linear named {targets} in the model")
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain linear holding base + update (in place)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    return model


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {path: m for path, m in model.named_modules() if isinstance(m, LoRALinear)}
