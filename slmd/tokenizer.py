"""A tiktoken encoding built from a GGUF vocabulary that reproduces llama.cpp's token ids.

`Tokenizer.from_gguf(path)` reads the vocabulary (tokens, token types, merges,
special ids, chat template) straight from the GGUF metadata and builds a
`tiktoken.Encoding` offline. Encoding then runs in tiktoken's Rust core, which
releases the GIL, so the daemon can tokenize without touching llama.cpp.

Exactness with llama.cpp (`llama_tokenize`, checked by tests/unit/test_tokenizer.py):

* Supported: `tokenizer.ggml.model == "gpt2"` (byte-level BPE) with one of the
  `tokenizer.ggml.pre` values in `SUPPORTED_PRE_TYPES`: the GPT-2 family and the
  StarCoder/SmolLM family (which first splits every digit off). Any other value
  raises `ValueError` naming the file and the pre type.
* llama.cpp runs its pre-tokenizer regexes one after another; the digit split of
  the SmolLM family is folded into one pattern here. Chunk ends created by that
  split are what `\\s+(?!\\S)` sees, hence `(?![^\\s<N>])` in the folded pattern.
* llama.cpp classifies code points with Unicode 15.1 tables while tiktoken's
  regex engine knows a newer Unicode; letters and digits are therefore
  restricted to code points assigned by 15.1 (`\\p{Age=15.1}`), so newer ones
  fall into the "other" class just as in llama.cpp.
* llama.cpp merges by pair rank (order in `tokenizer.ggml.merges`); tiktoken by
  the rank of the merged bytes. Ranks are the merge order, so the two agree as
  long as each merge result is a distinct vocabulary entry (checked here).
* Bytes without a vocabulary entry are dropped, as llama.cpp does.
* Special tokens are split out first: control tokens only when
  `allow_special=True` (llama.cpp's `parse_special`), user-defined tokens always.
  Overlapping special texts are rejected, since tiktoken picks the leftmost match
  where llama.cpp picks the longest token first.
* Not reproduced: LSTRIP/RSTRIP token attributes (only set by llama.cpp for
  jina/phi-3/modern-bert vocabularies) and the gpt-oss/solar/gemma EOG tweaks.
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import tiktoken

# llama.cpp's src/unicode-data.cpp in llama-cpp-python 0.3.36 is generated from Unicode 15.1.
_LLAMA_UNICODE_AGE = "15.1"
_L = rf"[\p{{L}}&&\p{{Age={_LLAMA_UNICODE_AGE}}}]"
_N = rf"[\p{{N}}&&\p{{Age={_LLAMA_UNICODE_AGE}}}]"
_OTHER = rf"[^\s{_L}{_N}]"
_CONTRACTIONS = "'s|'t|'re|'ve|'m|'ll|'d"


class PreTokenizer(enum.Enum):
    """llama.cpp pre-tokenizer families this module reproduces, with their folded regex."""

    # llama.cpp: "'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)" (+ \s+ fallback)
    GPT2 = rf"{_CONTRACTIONS}| ?{_L}+| ?{_N}+| ?{_OTHER}+|\s+(?!\S)|\s+"
    # llama.cpp: "\p{N}" split, then the GPT-2 regex on what is left.
    SMOLLM = rf"{_N}|{_CONTRACTIONS}| ?{_L}+| ?{_OTHER}+|\s+(?![^\s{_N}])|\s+"
    # llama.cpp (one regex, case-insensitive contractions, single digits):
    # "(?:'[sS]|'[tT]|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    QWEN2 = (rf"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n{_L}{_N}]?{_L}+|{_N}"
             rf"| ?{_OTHER}+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


# tokenizer.ggml.pre value -> family, as mapped in llama.cpp's src/llama-vocab.cpp.
SUPPORTED_PRE_TYPES = MappingProxyType({
    **{name: PreTokenizer.GPT2 for name in (
        "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
        "a.x-4.0", "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe",
        "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4")},
    **{name: PreTokenizer.SMOLLM for name in (
        "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b",
        "mellum2")},
    **{name: PreTokenizer.QWEN2 for name in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "hunyuan")},
})


class TokenType(enum.IntEnum):
    """`tokenizer.ggml.token_type` values (llama.h's llama_token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Token texts llama.cpp promotes to control tokens (src/llama-vocab.cpp, "auto-detect special tokens").
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
            "<|code_prefix|>", "<|prefix|>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
            "<|code_suffix|>", "<|suffix|>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
            "<|code_middle|>", "<|middle|>"),
    "pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
})
_GPT2_DEFAULT_BOS_EOS = 11  # llama.cpp's default for gpt2 vocabularies without explicit ids


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100.."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    extra = (b for b in range(256) if b not in set(printable))
    table.update({chr(0x100 + n): b for n, b in enumerate(extra)})
    return table


_UNICODE_TO_BYTE = MappingProxyType(_gpt2_unicode_to_byte())


def _decode_piece(text: str) -> bytes:
    """A normal token's GPT-2 text to raw bytes, with llama_decode_text's marker for strays."""
    out = bytearray()
    for ch in text:
        byte = _UNICODE_TO_BYTE.get(ch)
        if byte is None:  # llama.cpp emits this marker instead of failing
            out += b"[UNK_BYTE_0x" + ch.encode().hex().encode() + text.encode() + b"]"
        else:
            out.append(byte)
    return bytes(out)


# GGUF value types -> struct format of one scalar (8 = string, 9 = array are handled apart).
_GGUF_SCALARS = MappingProxyType({0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
                                  10: "Q", 11: "q", 12: "d"})
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, object]:
    """The key/value header of a little-endian GGUF v2/v3 file, without touching tensor data.

    Hand-rolled because gguf.GGUFReader builds numpy views per array item and takes
    seconds on a 49k-token vocabulary; this takes tens of milliseconds.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        magic, version, _n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"{os.fspath(path)}: not a little-endian GGUF v2/v3 file")
        pos = 24

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", buf, pos)
            pos += 8 + n
            return buf[pos - n:pos].decode("utf-8", errors="replace")

        def value(kind: int):
            nonlocal pos
            if kind == _GGUF_STRING:
                return string()
            if kind == _GGUF_ARRAY:
                item_kind, n = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if item_kind in _GGUF_SCALARS:
                    fmt = _GGUF_SCALARS[item_kind]
                    items = list(struct.unpack_from(f"<{n}{fmt}", buf, pos))
                    pos += n * struct.calcsize(fmt)
                    return items
                return [value(item_kind) for _ in range(n)]
            fmt = "<" + _GGUF_SCALARS[kind]
            (scalar,) = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return scalar

        metadata = {}
        for _ in range(n_kv):
            key = string()
            (kind,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            metadata[key] = value(kind)
        return metadata


@dataclass(frozen=True, slots=True)
class GgufVocab:
    """The tokenizer metadata of one GGUF file, as llama.cpp interprets it."""

    path: str
    model: str
    pre: str
    tokens: tuple[str, ...]
    token_types: tuple[TokenType, ...]
    merges: tuple[str, ...]
    ids: MappingProxyType  # key name ("bos", "eos", "eot", ...) -> token id
    add_bos: bool
    chat_template: str | None

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> GgufVocab:
        metadata = read_gguf_metadata(path)

        def get(key: str, default=None):
            return metadata.get(key, default)

        tokens = list(get("tokenizer.ggml.tokens", []))
        # llama.cpp renames empty tokens so that every text maps back to one id
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        types = get("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens)
        ids = {}
        for name in ("bos", "eos", "eot", "eom", "unknown", "padding", "fim_pre", "fim_suf",
                     "fim_mid", "fim_pad", "fim_rep", "fim_sep"):
            value = get(f"tokenizer.ggml.{name}_token_id")
            if value is not None and 0 <= int(value) < len(tokens):
                ids[name] = int(value)
        for name, legacy in (("fim_pre", "prefix"), ("fim_suf", "suffix"), ("fim_mid", "middle")):
            value = get(f"tokenizer.ggml.{legacy}_token_id")
            if value is not None and 0 <= int(value) < len(tokens):
                ids[name] = int(value)
        return cls(
            path=os.fspath(path),
            model=str(get("tokenizer.ggml.model", "")),
            pre=str(get("tokenizer.ggml.pre", "")),
            tokens=tuple(tokens),
            token_types=tuple(TokenType(t) if t in TokenType._value2member_map_ else TokenType.UNDEFINED
                              for t in types),
            merges=tuple(get("tokenizer.ggml.merges", [])),
            ids=MappingProxyType(ids),
            add_bos=bool(get("tokenizer.ggml.add_bos_token", False)),
            chat_template=get("tokenizer.chat_template"),
        )


def _promote_special_tokens(vocab: GgufVocab) -> tuple[list[TokenType], dict[str, int], frozenset[int]]:
    """Token types, special ids and EOG ids after llama.cpp's text-based auto-detection."""
    types = list(vocab.token_types)
    ids = dict(vocab.ids)
    if vocab.model == "gpt2":
        ids.setdefault("bos", _GPT2_DEFAULT_BOS_EOS)
        ids.setdefault("eos", _GPT2_DEFAULT_BOS_EOS)
    by_text = {text: i for i, text in enumerate(vocab.tokens)}

    def detect(key: str, texts: Iterable[str]) -> None:
        # Only when the GGUF names no id. llama.cpp scans a hash map, so with several
        # candidates its pick may differ from this vocabulary-order pick.
        found = None if key in ids else next((by_text[t] for t in texts if t in by_text), None)
        if found is not None:
            ids[key] = found
            types[found] = TokenType.CONTROL

    detect("eot", _EOT_TEXTS)
    detect("eom", ("<|eom_id|>",))
    for kind, texts in _FIM_TEXTS.items():
        detect(f"fim_{kind}", texts)
    eog = {ids[k] for k in ("fim_pad", "fim_rep", "fim_sep", "eos", "eot", "eom") if k in ids}
    for text in _EOG_TEXTS & by_text.keys():
        eog.add(by_text[text])
        types[by_text[text]] = TokenType.CONTROL
    return types, ids, frozenset(i for i in eog if 0 <= i < len(types))


def _check_special_overlaps(path: str, texts: Sequence[str]) -> None:
    """Reject special texts where one contains, or overlaps the end of, another."""
    prefixes = {t[:k] for t in texts for k in range(1, len(t))}
    for text in texts:
        clash = next((o for o in texts if o != text and text in o), None)
        if clash is None and any(text[k:] in prefixes for k in range(1, len(text))):
            clash = "(a suffix overlaps another token's prefix)"
        if clash is not None:
            raise ValueError(f"{path}: special token {text!r} overlaps {clash!r}; "
                             "llama.cpp's longest-first split is not reproduced")


@dataclass(frozen=True, slots=True, eq=False)
class Tokenizer:
    """Text <-> llama.cpp token ids. Immutable; safe to share between threads."""

    n_vocab: int
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    eog_ids: frozenset[int]
    chat_template: str | None
    add_bos: bool  # whether the model wants BOS prepended (what llama_tokenize's add_special does)
    _encoding: tiktoken.Encoding
    _pieces: tuple[bytes, ...]  # id -> what llama_token_to_piece(special=True) returns
    _special_texts: frozenset[str]  # split out when allow_special=True
    _always_split_texts: frozenset[str]  # user-defined tokens: split out even when allow_special=False
    _rank_to_id: np.ndarray | None  # None when ranks already are ids; -1 marks unencodable bytes

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        return cls._from_vocab(GgufVocab.read(path))

    @classmethod
    def _from_vocab(cls, vocab: GgufVocab, *, force_rank_table: bool = False) -> Tokenizer:
        family = SUPPORTED_PRE_TYPES.get(vocab.pre)
        if vocab.model != "gpt2" or family is None:
            raise ValueError(f"{vocab.path}: unsupported tokenizer (tokenizer.ggml.model={vocab.model!r}, "
                             f"tokenizer.ggml.pre={vocab.pre!r}); supported pre types: "
                             f"{', '.join(sorted(SUPPORTED_PRE_TYPES))}")
        types, ids, eog_ids = _promote_special_tokens(vocab)
        n_vocab = len(vocab.tokens)
        special_kinds = (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN)
        specials = {vocab.tokens[i]: i for i in range(n_vocab) if types[i] in special_kinds}
        _check_special_overlaps(vocab.path, list(specials))

        pieces = []
        for text, kind in zip(vocab.tokens, types):
            if kind in special_kinds:
                pieces.append(text.encode())
            elif kind == TokenType.NORMAL:
                pieces.append(_decode_piece(text))
            elif kind == TokenType.BYTE:
                pieces.append(bytes([int(text[3:5], 16)]))  # "<0xAB>"
            else:  # llama.cpp renders unused/undefined tokens as nothing
                pieces.append(b"")

        mergeable_ranks, rank_to_id = cls._mergeable_ranks(vocab, types, pieces, force_rank_table)
        if rank_to_id is None:
            special_ranks = specials
        else:  # specials get ranks after the mergeable ones and map back through the table
            base = len(rank_to_id)
            special_ranks = {text: base + n for n, text in enumerate(specials)}
            rank_to_id = np.concatenate([rank_to_id, np.fromiter(specials.values(), np.int64)])
        encoding = tiktoken.Encoding(
            name=f"gguf:{os.path.basename(vocab.path)}",
            pat_str=family.value,
            mergeable_ranks=mergeable_ranks,
            special_tokens=special_ranks,
        )
        return cls(
            n_vocab=n_vocab,
            bos_id=ids.get("bos"),
            eos_id=ids.get("eos"),
            pad_id=ids.get("padding"),
            eog_ids=eog_ids,
            chat_template=vocab.chat_template,
            add_bos=vocab.add_bos,
            _encoding=encoding,
            _pieces=tuple(pieces),
            _special_texts=frozenset(specials),
            _always_split_texts=frozenset(t for t, i in specials.items() if types[i] == TokenType.USER_DEFINED),
            _rank_to_id=rank_to_id,
        )

    @staticmethod
    def _mergeable_ranks(vocab: GgufVocab, types: Sequence[TokenType], pieces: Sequence[bytes],
                         force_table: bool) -> tuple[dict[bytes, int], np.ndarray | None]:
        """tiktoken ranks in llama.cpp's merge order, plus a rank -> id table when ids differ."""
        by_text = {text: i for i, text in enumerate(vocab.tokens)}
        # Rank order: the 256 bytes first (never compared: tiktoken ranks merged pairs), then merges.
        ordered: list[int] = []
        missing_bytes = []
        for byte in range(256):
            text = next(ch for ch, b in _UNICODE_TO_BYTE.items() if b == byte)
            if text in by_text and types[by_text[text]] == TokenType.NORMAL:
                ordered.append(by_text[text])
            else:
                missing_bytes.append(byte)
        seen = set(ordered)
        for merge in vocab.merges:
            left, _, right = merge.partition(" ")
            token_id = by_text.get(left + right)
            # A merge may yield a token llama.cpp promoted to control by its text
            # (Qwen2's "</s>"): BPE still produces it from plain text.
            if token_id is None or token_id in seen or TokenType.NORMAL not in (types[token_id],
                                                                                vocab.token_types[token_id]):
                raise ValueError(f"{vocab.path}: merge {merge!r} does not yield a distinct normal token; "
                                 "tiktoken cannot reproduce llama.cpp's merges for this vocabulary")
            ordered.append(token_id)
            seen.add(token_id)
        ids_are_ranks = not force_table and all(a < b for a, b in zip(ordered[256 - len(missing_bytes):],
                                                                       ordered[257 - len(missing_bytes):]))
        if ids_are_ranks:
            ranks = {pieces[i]: i for i in ordered}
            # Bytes llama.cpp cannot encode get ranks past the vocabulary and are dropped after encoding.
            ranks.update({bytes([b]): len(vocab.tokens) + n for n, b in enumerate(missing_bytes)})
            return ranks, None
        ranks = {pieces[i]: rank for rank, i in enumerate(ordered)}
        ranks.update({bytes([b]): len(ordered) + n for n, b in enumerate(missing_bytes)})
        table = np.array(ordered + [-1] * len(missing_bytes), dtype=np.int64)
        return ranks, table

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, text: str, *, allow_special: bool = True, add_bos: bool = False) -> list[int]:
        """Token ids as llama_tokenize(text, add_special=add_bos, parse_special=allow_special) gives them.

        `add_bos` prepends `bos_id` unconditionally; pass `add_bos=tok.add_bos` for llama.cpp's default.
        """
        allowed = self._special_texts if allow_special else self._always_split_texts
        ranks = self._encoding.encode(text, allowed_special=allowed, disallowed_special=())
        return self._finish(ranks, add_bos)

    def encode_batch(self, texts: Sequence[str], *, allow_special: bool = True,
                     add_bos: bool = False) -> list[list[int]]:
        allowed = self._special_texts if allow_special else self._always_split_texts
        batch = self._encoding.encode_batch(list(texts), allowed_special=allowed, disallowed_special=())
        return [self._finish(ranks, add_bos) for ranks in batch]

    def _finish(self, ranks: list[int], add_bos: bool) -> list[int]:
        if self._rank_to_id is not None and ranks:
            ids = self._rank_to_id[np.asarray(ranks, dtype=np.int64)]
            ranks = ids[ids >= 0].tolist()
        elif ranks and max(ranks) >= self.n_vocab:  # only bytes without a token rank this high
            ranks = [r for r in ranks if r < self.n_vocab]
        if add_bos and self.bos_id is not None:
            ranks.insert(0, self.bos_id)
        return ranks

    # -- decoding -----------------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token, as llama_token_to_piece(..., special=True) returns them."""
        if not 0 <= token_id < self.n_vocab:
            raise IndexError(f"token id {token_id} outside vocabulary of {self.n_vocab}")
        return self._pieces[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= self.n_vocab):
            raise IndexError(f"token id outside vocabulary of {self.n_vocab}")
        return b"".join(map(self._pieces.__getitem__, ids))

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids
