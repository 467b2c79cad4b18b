"""Write a SlimLM as a GGUF file that llama.cpp runs with its `mpt` architecture.

    python -m training.export --checkpoint CKPT.pt --out OUT.gguf --type q4_0

llama.cpp's mpt graph (src/models/mpt.cpp) is exactly SlimLM when the file
sets `mpt.attention.max_alibi_bias` = 0 (no ALiBi) and carries a
`position_embd.weight` (learned positions, added to the token embeddings).
Every bias is optional there and SlimLM writes them all. Without an
`output.weight` llama.cpp reuses `token_embd.weight`, which is how tied
embeddings are stored.

Positions are rows of `position_embd`, so a position at or past
`mpt.context_length` makes llama.cpp abort the process (a GGML_ASSERT in
get_rows); it only warns when n_ctx exceeds that length. Whoever loads these
files must keep every sequence within `mpt.context_length` tokens.

The tokenizer is not SlimLM's to define: all `tokenizer.*` keys are copied
from the SmolLM2 GGUF whose vocabulary the model was trained with.
"""

from __future__ import annotations

import argparse
import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from slmd.models import DEFAULT_MODEL
from slmd.paths import default_data_dir
from training.model import SlimLM, SlimLMConfig

ARCH = "mpt"


class QuantType(enum.Enum):
    """Storage type of the weight matrices; norms, biases and positions stay F32."""

    F32 = "f32"
    F16 = "f16"
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"  # the paper's: 4 bits, one scale per group of 32

    @property
    def ggml_type(self) -> gguf.GGMLQuantizationType:
        return gguf.GGMLQuantizationType[self.name]

    @property
    def file_type(self) -> gguf.LlamaFileType:
        return gguf.LlamaFileType.ALL_F32 if self is QuantType.F32 else gguf.LlamaFileType[f"MOSTLY_{self.name}"]


def default_tokenizer_gguf() -> Path:
    """The daemon's default model, where `slmd pull` puts it."""
    return default_data_dir() / "models" / DEFAULT_MODEL.filename


def tensor_map(cfg: SlimLMConfig) -> list[tuple[str, str]]:
    """(GGUF tensor name, SlimLM state_dict key) for every tensor the file holds."""
    names = [
        ("token_embd.weight", "wte.weight"),
        ("position_embd.weight", "wpe.weight"),
        ("output_norm.weight", "ln_f.weight"),
        ("output_norm.bias", "ln_f.bias"),
    ]
    if not cfg.tie_embeddings:
        names.append(("output.weight", "lm_head.weight"))
    per_layer = [
        ("attn_norm", "ln_attn"),
        ("attn_qkv", "attn.qkv"),
        ("attn_output", "attn.proj"),
        ("ffn_norm", "ln_mlp"),
        ("ffn_up", "mlp.up"),
        ("ffn_down", "mlp.down"),
    ]
    for i in range(cfg.num_layers):
        for gguf_name, torch_name in per_layer:
            for suffix in ("weight", "bias"):
                names.append((f"blk.{i}.{gguf_name}.{suffix}", f"blocks.{i}.{torch_name}.{suffix}"))
    return names


def _storage_type(name: str, array: np.ndarray, qtype: QuantType) -> gguf.GGMLQuantizationType:
    # llama.cpp keeps 1-D tensors in F32 and never quantizes position embeddings
    # (llama-quant.cpp); a matrix whose rows do not fill whole blocks falls back to F16.
    if array.ndim < 2 or name == "position_embd.weight":
        return gguf.GGMLQuantizationType.F32
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype.ggml_type]
    if array.shape[-1] % block_size:
        return gguf.GGMLQuantizationType.F16
    return qtype.ggml_type


@dataclass(frozen=True)
class TokenizerKeys:
    """The `tokenizer.*` metadata of a GGUF, read once (reading takes seconds) and written many times."""

    source: Path
    num_tokens: int
    fields: tuple[tuple[str, Any, gguf.GGUFValueType, gguf.GGUFValueType | None], ...]

    @classmethod
    def read(cls, path: str | os.PathLike) -> "TokenizerKeys":
        reader = gguf.GGUFReader(path)
        tokens = reader.get_field("tokenizer.ggml.tokens")
        if tokens is None:
            raise ValueError(f"{path} has no tokenizer.ggml.tokens")
        fields = []
        for name, field in reader.fields.items():
            if name.startswith("tokenizer."):
                vtype = field.types[0]
                sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
                fields.append((name, field.contents(), vtype, sub_type))
        return cls(Path(path), len(tokens.data), tuple(fields))

    def write_to(self, writer: gguf.GGUFWriter, vocab_size: int) -> None:
        if self.num_tokens != vocab_size:
            raise ValueError(f"{self.source} has {self.num_tokens} tokens, the model {vocab_size}")
        for name, value, vtype, sub_type in self.fields:
            writer.add_key_value(name, value, vtype, sub_type=sub_type)


def export_gguf(
    model: SlimLM,
    cfg: SlimLMConfig,
    out_path: str | os.PathLike,
    qtype: QuantType | str = QuantType.Q4_0,
    tokenizer_gguf: str | os.PathLike | TokenizerKeys | None = None,
    name: str = "SlimLM",
) -> Path:
    """Write model as an `mpt` GGUF at out_path and return the path.

    tokenizer_gguf: the GGUF whose `tokenizer.*` keys to copy (default: the
    daemon's default model), or those keys already read.
    """
    qtype = QuantType(qtype)
    if not isinstance(tokenizer_gguf, TokenizerKeys):
        tokenizer_gguf = TokenizerKeys.read(tokenizer_gguf or default_tokenizer_gguf())
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    writer = gguf.GGUFWriter(out_path, ARCH)
    writer.add_name(name)
    writer.add_file_type(qtype.file_type)
    if qtype in (QuantType.Q8_0, QuantType.Q4_0):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.context_length)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_heads)
    writer.add_layer_norm_eps(cfg.layer_norm_eps)
    writer.add_max_alibi_bias(0.0)  # 0 turns ALiBi off; positions come from position_embd
    tokenizer_gguf.write_to(writer, cfg.vocab_size)

    state = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    for gguf_name, torch_name in tensor_map(cfg):
        array = state[torch_name]
        ggml_type = _storage_type(gguf_name, array, qtype)
        data = gguf.quants.quantize(array, ggml_type)
        # Quantized data arrives as raw bytes; the writer needs the type to recover the shape.
        writer.add_tensor(gguf_name, data, raw_dtype=ggml_type)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="torch checkpoint from training (model.checkpoint())")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--type", default=QuantType.Q4_0.value, choices=[q.value for q in QuantType])
    parser.add_argument("--tokenizer-gguf", type=Path, default=None, help=f"default: {default_tokenizer_gguf()}")
    parser.add_argument("--name", default="SlimLM")
    args = parser.parse_args(argv)

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model = SlimLM.from_checkpoint(ckpt)
    path = export_gguf(model, model.cfg, args.out, args.type, args.tokenizer_gguf, args.name)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.type})")


if __name__ == "__main__":
    main()
