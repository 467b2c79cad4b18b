"""A llama-architecture decoder in PyTorch, loaded from (and written back to) a GGUF.

Used to fine-tune the daemon's default model, SmolLM2-135M-Instruct, from the
quantized GGUF it serves: every tensor is dequantized to F32 with gguf-py.
The module keeps GGUF's own layout, so nothing is permuted on the way in or
out: llama.cpp's converter already permuted Q and K for its "normal" RoPE,
which rotates adjacent pairs (x[2i], x[2i+1]); grouped-query heads map query
head h to key/value head h // (num_heads / num_kv_heads), as ggml broadcasts.
Without `output.weight` the output projection is the token embedding (tied).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from training.model import IGNORE_INDEX


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    context_length: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    d_model: int
    d_ff: int
    rope_base: float
    rms_eps: float

    @property
    def d_head(self) -> int:
        return self.d_model // self.num_heads


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        kv = cfg.num_kv_heads * cfg.d_head
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k = nn.Linear(cfg.d_model, kv, bias=False)
        self.v = nn.Linear(cfg.d_model, kv, bias=False)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        c = self.cfg
        q = _rope(self.q(x).view(B, T, c.num_heads, c.d_head), cos, sin).transpose(1, 2)
        k = _rope(self.k(x).view(B, T, c.num_kv_heads, c.d_head), cos, sin).transpose(1, 2)
        v = self.v(x).view(B, T, c.num_kv_heads, c.d_head).transpose(1, 2)
        group = c.num_heads // c.num_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, c.d_model))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, T, heads, d_head); rotate adjacent pairs by position-dependent angles.
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.rms_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.rms_eps)
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.rms_eps)
        self.lm_head: nn.Linear | None = None  # None: tied to wte

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.shape[1]
        c = self.cfg
        inv_freq = c.rope_base ** (-torch.arange(0, c.d_head, 2, device=idx.device, dtype=torch.float32) / c.d_head)
        angles = torch.arange(T, device=idx.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        cos, sin = angles.cos(), angles.sin()
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        x = self.norm(x)
        logits = F.linear(x, self.wte.weight if self.lm_head is None else self.lm_head.weight)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return logits, loss


# GGUF tensor name -> module parameter path, per layer; the global ones below.
_LAYER_NAMES = {
    "attn_norm.weight": "attn_norm.weight", "attn_q.weight": "attn.q.weight", "attn_k.weight": "attn.k.weight",
    "attn_v.weight": "attn.v.weight", "attn_output.weight": "attn.o.weight", "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "gate.weight", "ffn_up.weight": "up.weight", "ffn_down.weight": "down.weight",
}
_GLOBAL_NAMES = {"token_embd.weight": "wte.weight", "output_norm.weight": "norm.weight", "output.weight": "lm_head.weight"}


def gguf_to_param(name: str) -> str:
    if name.startswith("blk."):
        _, i, rest = name.split(".", 2)
        return f"blocks.{i}.{_LAYER_NAMES[rest]}"
    return _GLOBAL_NAMES[name]


def param_to_gguf(path: str) -> str:
    """Inverse of gguf_to_param, for module paths like blocks.3.attn.q (LoRA targets)."""
    inverse = {v.removesuffix(".weight"): k.removesuffix(".weight") for k, v in _LAYER_NAMES.items()}
    if path.startswith("blocks."):
        _, i, rest = path.split(".", 2)
        return f"blk.{i}.{inverse[rest]}"
    return {v.removesuffix(".weight"): k.removesuffix(".weight") for k, v in _GLOBAL_NAMES.items()}[path]


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    if field is None:
        raise ValueError(f"GGUF has no {key}")
    return field.contents()


def dequantize(tensor) -> np.ndarray:
    """A reader tensor as F32 in numpy order (rows = GGUF ne[1])."""
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.array(data, dtype=np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))


def load_gguf(path: str | os.PathLike) -> Llama:
    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r}, expected 'llama'")
    tensors = {t.name: t for t in reader.tensors}
    cfg = LlamaConfig(
        vocab_size=int(tensors["token_embd.weight"].shape[1]),
        context_length=int(_field(reader, "llama.context_length")),
        num_layers=int(_field(reader, "llama.block_count")),
        num_heads=int(_field(reader, "llama.attention.head_count")),
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv")),
        d_model=int(_field(reader, "llama.embedding_length")),
        d_ff=int(_field(reader, "llama.feed_forward_length")),
        rope_base=float(_field(reader, "llama.rope.freq_base")),
        rms_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
    )
    with torch.device("meta"):
        model = Llama(cfg)
    if "output.weight" in tensors:
        with torch.device("meta"):
            model.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
    state = {gguf_to_param(name): torch.from_numpy(dequantize(t)) for name, t in tensors.items()}
    model.load_state_dict(state, assign=True)
    return model


def write_gguf(model: Llama, base_path: str | os.PathLike, out_path: str | os.PathLike,
               changed: set[str] | None = None,
               qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.Q8_0) -> Path:
    """Copy base_path's metadata and tensors, replacing the tensors named in `changed` (GGUF names,
    default: every weight) with the model's. Replaced matrices are stored as qtype (Q8_0: a second
    4-bit rounding on top of the base's would blur a small update); 1-D tensors stay F32."""
    reader = gguf.GGUFReader(base_path)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out_path, _field(reader, "general.architecture"))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # written by GGUFWriter itself
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)
    state = model.state_dict()
    for t in reader.tensors:
        if changed is None or t.name in changed:
            array = state[gguf_to_param(t.name)].detach().float().cpu().numpy()
            kind = gguf.GGMLQuantizationType.F32 if array.ndim < 2 else qtype
            writer.add_tensor(t.name, gguf.quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def write_lora_gguf(lora: dict, base_path: str | os.PathLike, out_path: str | os.PathLike, alpha: float) -> Path:
    """An adapter llama.cpp applies over base_path: {gguf tensor base name: (lora_a, lora_b)} as F32."""
    reader = gguf.GGUFReader(base_path)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out_path, _field(reader, "general.architecture"))
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for name, (a, b) in lora.items():
        writer.add_tensor(f"{name}.weight.lora_a", a.detach().float().cpu().numpy())
        writer.add_tensor(f"{name}.weight.lora_b", b.detach().float().cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
