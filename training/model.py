"""SlimLM: the decoder of the SlimLM paper (arXiv 2411.09944), in one file.

An MPT-style pre-norm decoder, as the paper configures it: no ALiBi, learned
absolute position embeddings, biases on every linear layer and LayerNorm, a
4x GELU MLP, and input/output embeddings tied by default.

The layout mirrors what llama.cpp's `mpt` architecture computes, so that
training/export.py is a renaming and nothing more:
- Q, K and V come from one fused linear (`attn_qkv`), in that order;
- GELU is the tanh approximation, because that is what ggml_gelu evaluates;
- the output projection has no bias (llama.cpp's `output` has none) and, when
  untied, is its own `output.weight`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F

SMOLLM2_VOCAB_SIZE = 49_152
# PyTorch's own default for cross_entropy; targets equal to it carry no loss.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class SlimLMConfig:
    vocab_size: int = SMOLLM2_VOCAB_SIZE
    context_length: int = 2048
    num_layers: int = 12
    num_heads: int = 12
    d_model: int = 768
    mlp_ratio: int = 4
    layer_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of num_heads {self.num_heads}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.num_heads

    @property
    def d_ff(self) -> int:
        return self.mlp_ratio * self.d_model

    @classmethod
    def preset(cls, name: str, **overrides) -> "SlimLMConfig":
        try:
            base = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
        return replace(base, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


# The paper's sizes. Layer/head/width triples follow MosaicML's MPT recipes
# (llm-foundry), which SlimLM trains with; with the 49,152-token vocabulary
# and tied embeddings they give the parameter counts in the names.
PRESETS: dict[str, SlimLMConfig] = {
    "125m": SlimLMConfig(num_layers=12, num_heads=12, d_model=768),
    "270m": SlimLMConfig(num_layers=16, num_heads=16, d_model=1024),
    "450m": SlimLMConfig(num_layers=20, num_heads=16, d_model=1280),
    "760m": SlimLMConfig(num_layers=24, num_heads=12, d_model=1536),
    "1b": SlimLMConfig(num_layers=24, num_heads=16, d_model=2048),
    # For tests: d_model 64 keeps every matrix row a multiple of the 32-wide
    # Q4_0/Q8_0 blocks, so quantized exports quantize every matrix.
    "tiny": SlimLMConfig(num_layers=2, num_heads=4, d_model=64, context_length=2048),
    "tiny-untied": SlimLMConfig(num_layers=2, num_heads=4, d_model=64, context_length=2048, tie_embeddings=False),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SlimLMConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, d_head); head h owns channels [h*d_head, (h+1)*d_head)
        q, k, v = (t.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: SlimLMConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: SlimLMConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class SlimLM(nn.Module):
    def __init__(self, cfg: SlimLMConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context_length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds to the stream 2*num_layers times.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() - self.wte.weight.numel() if non_embedding else n

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Final normalized hidden states (B, T, d_model): what the output projection reads."""
        T = idx.shape[1]
        if T > self.cfg.context_length:
            raise ValueError(f"sequence of {T} tokens exceeds context length {self.cfg.context_length}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits for every position, and the mean next-token loss when targets are given."""
        logits = F.linear(self.hidden(idx), self.output_weight)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return logits, loss

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas=(0.9, 0.95)):
        # Decay matrices and embeddings only; biases and LayerNorm gains are left alone.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)

    @torch.no_grad()
    def generate_greedy(self, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Append max_new_tokens argmax tokens to idx (B, T); the reference for llama.cpp tests."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.context_length :])
            idx = torch.cat((idx, logits[:, -1].argmax(dim=-1, keepdim=True)), dim=1)
        return idx

    # Checkpoints are plain dicts: {"config": SlimLMConfig.to_dict(), "model": state_dict},
    # plus whatever the trainer adds (optimizer, step); extra keys are ignored here.
    def checkpoint(self) -> dict:
        return {"config": self.cfg.to_dict(), "model": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "SlimLM":
        model = cls(SlimLMConfig(**ckpt["config"]))
        # torch.compile wraps modules and prefixes their keys; strip that.
        state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
        model.load_state_dict(state)
        return model
