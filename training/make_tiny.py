"""Build the tiny SlimLM GGUF that the daemon's fast tests load.

    python -m training.make_tiny --out build/models/tiny-q4_0.gguf [--type f16]

The `tiny` preset (2 layers, d_model 64) is trained for a few hundred CPU
steps on a fixed corpus of sentences and chat exchanges until it has nearly
memorized them, so its greedy output is predictable text rather than noise:
"The quick brown fox" continues with "jumps over the lazy dog.", and a chat
prompt is answered and closed with <|im_end|>, so generation stops by itself.
Same seed, same corpus, same torch build: the same weights.
"""

from __future__ import annotations

import argparse
import ctypes
import time
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import torch
from torch.nn import functional as F

from training.export import QuantType, default_tokenizer_gguf, export_gguf
from training.model import IGNORE_INDEX, SlimLM, SlimLMConfig

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A small language model runs on the device, close to the data.",
    "The daemon serves one shared model to many applications.",
    "Every request is scheduled fairly and answered in order.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday.",
    "January, February, March, April, May, June, July, August.",
    "The cat sat on the mat and looked out of the window.",
    "Once upon a time there was a little robot who loved to read.",
    "Python is a programming language that lets you work quickly.",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "The sun rises in the east and sets in the west.",
    "Please summarize the document in three short sentences.",
]

SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATS = [
    ("Hello!", "Hello! How can I help you today?"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What color is the sky?", "The sky is blue."),
    ("Count to five.", "One, two, three, four, five."),
    ("Say something short.", "Something short."),
    ("Tell me a story.", "Once upon a time there was a little robot who loved to read."),
    ("Summarize: the cat sat on the mat.", "A cat sat on a mat."),
    ("What is two plus two?", "Two plus two is four."),
]


SAMPLE_PROMPTS = ["The quick brown fox", "<|im_start|>user\nWhat color is the sky?<|im_end|>\n<|im_start|>assistant\n"]


def chat_text(user: str, assistant: str, with_system: bool) -> str:
    """One exchange in SmolLM2's chat template, as the daemon will render it."""
    system = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n" if with_system else ""
    return f"{system}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"


def corpus_texts() -> list[str]:
    chats = [chat_text(u, a, with_system) for with_system in (True, False) for u, a in CHATS]
    return SENTENCES + chats


class LlamaVocab:
    """A vocab-only llama.cpp load of a GGUF: tokenizes exactly as the daemon will."""

    def __init__(self, gguf_path: str | Path):
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)

    def close(self) -> None:
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "LlamaVocab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def num_tokens(self) -> int:
        return llama_cpp.llama_vocab_n_tokens(self._vocab)

    @property
    def eos_id(self) -> int:
        return llama_cpp.llama_vocab_eos(self._vocab)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of text, with special tokens like <|im_start|> parsed."""
        data = text.encode()
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, True)
        if n < 0:
            raise RuntimeError(f"tokenize failed ({n})")
        return list(buf[:n])

    def detokenize(self, ids: list[int]) -> str:
        tokens = (llama_cpp.llama_token * len(ids))(*ids)
        capacity = 16 * len(ids) + 16
        buf = ctypes.create_string_buffer(capacity)
        n = llama_cpp.llama_detokenize(self._vocab, tokens, len(ids), buf, capacity, False, True)
        if n < 0:
            raise RuntimeError(f"detokenize failed ({n})")
        return buf.raw[:n].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class TinyTrainConfig:
    steps: int = 300
    batch_size: int = 8
    learning_rate: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 1234
    # The matmuls are tiny; a second thread only adds contention with whatever else runs.
    num_threads: int = 1


def token_documents(vocab: LlamaVocab) -> list[list[int]]:
    """Each corpus text as token ids, closed by <|endoftext|> (id 0)."""
    return [vocab.tokenize(text) + [0] for text in corpus_texts()]


def _batch(docs: list[list[int]], picks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Every document starts at position 0, as a prompt does, because positions are learned.
    length = max(len(docs[i]) for i in picks) - 1
    x = torch.zeros((len(picks), length), dtype=torch.long)
    y = torch.full((len(picks), length), IGNORE_INDEX, dtype=torch.long)
    for row, i in enumerate(picks.tolist()):
        doc = torch.tensor(docs[i])
        x[row, : len(doc) - 1] = doc[:-1]
        y[row, : len(doc) - 1] = doc[1:]
    return x, y


def train_tiny(
    docs: list[list[int]], cfg: SlimLMConfig, train: TinyTrainConfig, log_every: int = 0
) -> tuple[SlimLM, float]:
    """Train from a fixed seed on batches of whole documents; return the model and its last loss.

    The softmax runs over the few hundred token ids that occur in docs, not
    all 49,152: that matmul would be 99% of the work on two CPU cores. Rows of
    the output embedding for other ids keep their small random init, so their
    logits stay near zero, far below the memorized continuations.
    """
    threads_before = torch.get_num_threads()
    torch.set_num_threads(train.num_threads)
    torch.manual_seed(train.seed)
    generator = torch.Generator().manual_seed(train.seed)
    model = SlimLM(cfg)
    seen_ids = torch.unique(torch.tensor([t for doc in docs for t in doc]))
    to_seen = torch.full((cfg.vocab_size,), IGNORE_INDEX, dtype=torch.long)
    to_seen[seen_ids] = torch.arange(len(seen_ids))
    optimizer = model.configure_optimizers(train.weight_decay, train.learning_rate)
    # Cosine decay to a tenth: fast early progress, a settled model at the end.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, train.steps, eta_min=train.learning_rate / 10)
    loss = torch.tensor(float("nan"))
    model.train()
    try:
        for step in range(train.steps):
            x, y = _batch(docs, torch.randperm(len(docs), generator=generator)[: train.batch_size])
            logits = F.linear(model.hidden(x), model.output_weight[seen_ids])
            targets = torch.where(y == IGNORE_INDEX, IGNORE_INDEX, to_seen[y.clamp(min=0)])
            loss = F.cross_entropy(logits.view(-1, len(seen_ids)), targets.view(-1), ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            if log_every and (step % log_every == 0 or step == train.steps - 1):
                print(f"step {step:4d}  loss {loss.item():.3f}")
    finally:
        torch.set_num_threads(threads_before)
    model.eval()
    return model, loss.item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/models/tiny-q4_0.gguf"))
    parser.add_argument("--type", default=QuantType.Q4_0.value, choices=[q.value for q in QuantType])
    parser.add_argument("--steps", type=int, default=TinyTrainConfig.steps)
    parser.add_argument("--tokenizer-gguf", type=Path, default=None, help=f"default: {default_tokenizer_gguf()}")
    args = parser.parse_args(argv)

    tokenizer_gguf = args.tokenizer_gguf or default_tokenizer_gguf()
    cfg = SlimLMConfig.preset("tiny")
    with LlamaVocab(tokenizer_gguf) as vocab:
        docs = token_documents(vocab)
        t0 = time.perf_counter()
        model, loss = train_tiny(docs, cfg, TinyTrainConfig(steps=args.steps), log_every=50)
        num_tokens = sum(map(len, docs))
        print(f"trained {model.num_params():,} parameters on {num_tokens} tokens in {time.perf_counter() - t0:.1f} s")
        for prompt in SAMPLE_PROMPTS:
            ids = vocab.tokenize(prompt)
            out = model.generate_greedy(torch.tensor([ids]), 16)[0, len(ids) :].tolist()
            print(f"greedy: {prompt!r} -> {vocab.detokenize(out)!r}")
    path = export_gguf(model, cfg, args.out, args.type, tokenizer_gguf, name="SlimLM-tiny")
    print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB, {args.type}, final loss {loss:.3f})")


if __name__ == "__main__":
    main()
