"""slmd.tokenizer gives exactly llama.cpp's token ids, pieces and special ids for the default model."""

from __future__ import annotations

import ctypes
import dataclasses
import os
from pathlib import Path

import pytest

from slmd.tokenizer import GgufVocab, Tokenizer, read_gguf_metadata
from .tokenizer_corpus import corpus_pieces

pytestmark = pytest.mark.default_model


@pytest.fixture(scope="module")
def model_path(default_model: Path) -> Path:
    # tests/conftest.py: SLMD_TEST_MODEL, else ${SLMD_DATA_DIR:-${XDG_DATA_HOME:-~/.local/share}/slmd}/models/
    # SmolLM2-135M-Instruct.Q4_1.gguf; skips with the path when absent (fails under SLMD_REQUIRE_MODELS).
    return default_model


@pytest.fixture(scope="module")
def tok(model_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(model_path)


class LlamaVocab:
    """llama.cpp's own tokenizer, loaded vocab-only through llama-cpp-python's low-level API."""

    def __init__(self, path: Path) -> None:
        import llama_cpp

        self._llama = llama_cpp
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(os.fsencode(path), params)
        assert self._model, f"llama.cpp could not load {path}"
        self.vocab = llama_cpp.llama_model_get_vocab(self._model)

    def tokenize(self, text: str, *, parse_special: bool, add_special: bool = False) -> list[int]:
        data = text.encode()
        n_max = len(data) + 8
        out = (self._llama.llama_token * n_max)()
        n = self._llama.llama_tokenize(self.vocab, data, len(data), out, n_max, add_special, parse_special)
        assert n >= 0, f"llama_tokenize needed {-n} tokens"
        return out[:n]

    def piece(self, token_id: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self._llama.llama_token_to_piece(self.vocab, token_id, buf, len(buf), 0, True)
        assert n >= 0
        return buf.raw[:n]

    def close(self) -> None:
        self._llama.llama_model_free(self._model)


@pytest.fixture(scope="module")
def llama(model_path: Path):
    vocab = LlamaVocab(model_path)
    yield vocab
    vocab.close()


@pytest.fixture(scope="module")
def pieces() -> list[str]:
    result = corpus_pieces()
    assert sum(len(p.encode()) for p in result) >= 1_000_000
    return result


def _first_mismatches(tok: Tokenizer, llama: LlamaVocab, pieces: list[str], allow_special: bool) -> list[str]:
    report = []
    for index, text in enumerate(pieces):
        ours = tok.encode(text, allow_special=allow_special)
        theirs = llama.tokenize(text, parse_special=allow_special)
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            context = tok.decode(theirs[max(0, at - 3):at + 3])
            report.append(f"piece {index} token {at}: ours {ours[at:at + 4]} llama.cpp {theirs[at:at + 4]} "
                          f"near {context!r}")
            if len(report) >= 5:
                break
    return report


@pytest.mark.parametrize("allow_special", [True, False])
def test_ids_match_llama_cpp(tok, llama, pieces, allow_special):
    assert _first_mismatches(tok, llama, pieces, allow_special) == []


def test_special_tokens_parse_only_when_allowed(tok, llama):
    text = "<|im_start|>user\nhi<|im_end|>\n"
    assert tok.encode(text)[0] == 1 and tok.encode(text).count(2) == 1
    assert 1 not in tok.encode(text, allow_special=False)
    assert tok.encode(text, allow_special=False) == llama.tokenize(text, parse_special=False)


def test_decode_round_trips(tok, pieces):
    # Bytes without a token of their own are dropped, as llama.cpp does (control bytes such as
    # 0x04, and lead bytes 0xF1/0xF2 of planes 4-11, whose continuation bytes then decode to U+FFFD).
    single_bytes = {tok.token_bytes(i)[0] for i in range(tok.n_vocab) if len(tok.token_bytes(i)) == 1}
    assert len(single_bytes) < 256  # the corpus does exercise dropping
    for text in pieces:
        kept = bytes(b for b in text.encode() if b in single_bytes).decode("utf-8", errors="replace")
        assert tok.decode(tok.encode(text, allow_special=False)) == kept
        assert tok.decode(tok.encode(text)) == kept


def test_token_bytes_match_llama_cpp(tok, llama):
    mismatched = [i for i in range(tok.n_vocab) if tok.token_bytes(i) != llama.piece(i)]
    assert mismatched == []
    with pytest.raises(IndexError):
        tok.token_bytes(tok.n_vocab)


def test_special_ids_match_llama_cpp(tok, llama):
    import llama_cpp

    assert tok.n_vocab == llama_cpp.llama_vocab_n_tokens(llama.vocab)
    assert tok.bos_id == llama_cpp.llama_vocab_bos(llama.vocab)
    assert tok.eos_id == llama_cpp.llama_vocab_eos(llama.vocab)
    assert tok.add_bos == llama_cpp.llama_vocab_get_add_bos(llama.vocab)
    assert tok.eog_ids == {i for i in range(tok.n_vocab) if llama_cpp.llama_vocab_is_eog(llama.vocab, i)}
    assert {2, 0} <= tok.eog_ids  # <|im_end|>, <|endoftext|>


def test_add_bos_matches_add_special(tok, llama):
    text = "Hello world"
    assert tok.encode(text, add_bos=tok.add_bos) == llama.tokenize(text, parse_special=True, add_special=True)
    assert tok.encode(text, add_bos=True) == [tok.bos_id, *tok.encode(text)]


def test_chat_template_is_read(tok, model_path):
    assert tok.chat_template == read_gguf_metadata(model_path)["tokenizer.chat_template"]
    assert "<|im_start|>" in tok.chat_template


def test_encode_batch_equals_encode(tok, pieces):
    sample = pieces[::17]
    assert tok.encode_batch(sample) == [tok.encode(p) for p in sample]
    assert tok.encode_batch(sample, allow_special=False) == [tok.encode(p, allow_special=False) for p in sample]


def test_rank_table_path_gives_same_ids(tok, model_path, pieces):
    # Vocabularies whose ids are not in merge order go through a rank -> id table.
    tabled = Tokenizer._from_vocab(GgufVocab.read(model_path), force_rank_table=True)
    assert tabled._rank_to_id is not None
    for text in pieces[::9]:
        assert tabled.encode(text) == tok.encode(text)
        assert tabled.encode(text, allow_special=False) == tok.encode(text, allow_special=False)


def test_unsupported_pre_type_is_rejected(model_path):
    vocab = dataclasses.replace(GgufVocab.read(model_path), pre="llama-bpe")
    with pytest.raises(ValueError, match="llama-bpe") as err:
        Tokenizer._from_vocab(vocab)
    assert str(model_path) in str(err.value)


def test_is_immutable(tok):
    with pytest.raises(dataclasses.FrozenInstanceError):
        tok.bos_id = 5  # type: ignore[misc]
