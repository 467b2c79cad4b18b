"""Round trip: a SlimLM trained here, exported to GGUF, run by llama.cpp.

llama.cpp (its `mpt` graph, low-level API) must compute what PyTorch computes:
the same logits within a tolerance and the same greedy continuations, with
several sequences decoded in one batch. Quantized exports must load and mostly
agree. Needs the default SmolLM2 GGUF for the tokenizer keys.
"""

from __future__ import annotations

import ctypes
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

from training.export import QuantType, TokenizerKeys, default_tokenizer_gguf, export_gguf, tensor_map  # noqa: E402
from training.make_tiny import LlamaVocab, TinyTrainConfig, token_documents, train_tiny  # noqa: E402
from training.model import SlimLM, SlimLMConfig  # noqa: E402

TOKENIZER_GGUF = default_tokenizer_gguf()
pytestmark = pytest.mark.skipif(
    not TOKENIZER_GGUF.exists(),
    reason=f"default model {TOKENIZER_GGUF} (tokenizer keys for the export) is absent; run `slmd pull`",
)

# F16 weights and an F16 KV cache against an F32 PyTorch model whose weights
# were rounded to F16 first: what is left is ggml's F16 activations in the KV
# cache and its tabulated GELU. Measured max abs diff ~5e-3 on logits of
# magnitude ~10; 0.05 leaves room without hiding a wrong layout, which shows
# up as differences of whole units.
F16_LOGIT_TOLERANCE = 0.05
NUM_GREEDY = 20
PROMPTS = [
    "The quick brown fox",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time there was a little robot who loved to read. The cat sat on the mat and",
    "Monday, Tuesday, Wednesday",
]


class LlamaRunner:
    """A llama.cpp model and context, driven through the low-level ctypes API."""

    def __init__(self, path: Path, n_ctx: int = 512, n_seq_max: int = 4):
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
        assert self.model, f"llama.cpp could not load {path}"
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        params.n_ubatch = n_ctx
        params.n_seq_max = n_seq_max
        params.n_threads = params.n_threads_batch = 1
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        assert self.ctx, "llama_init_from_model failed"
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(n_ctx, 0, n_seq_max)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def decode(self, entries: list[tuple[int, int, int, bool]]) -> list[np.ndarray]:
        """Decode (token, pos, seq_id, wants_logits) entries as one batch; logits of those that asked."""
        b = self.batch
        for i, (token, pos, seq_id, wants_logits) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq_id
            b.logits[i] = wants_logits
        b.n_tokens = len(entries)
        assert llama_cpp.llama_decode(self.ctx, b) == 0
        out = []
        for i, entry in enumerate(entries):
            if entry[3]:
                ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
                out.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())
        return out

    def prompt_logits(self, ids: list[int]) -> np.ndarray:
        self.clear()
        return np.stack(self.decode([(t, p, 0, True) for p, t in enumerate(ids)]))

    def greedy_batch(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        """Greedy continuations of all prompts, every step decoding all sequences in one batch."""
        self.clear()
        entries = [(t, p, s, p == len(ids) - 1) for s, ids in enumerate(prompts) for p, t in enumerate(ids)]
        logits = self.decode(entries)
        outs: list[list[int]] = [[] for _ in prompts]
        for step in range(n):
            for s, row in enumerate(logits):
                outs[s].append(int(np.argmax(row)))
            if step == n - 1:
                break
            logits = self.decode([(outs[s][-1], len(ids) + step, s, True) for s, ids in enumerate(prompts)])
        return outs


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # This model's matmuls are tiny: a second thread buys nothing when the machine
    # is idle and, spinning, costs 10x when other tests share the cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vocab():
    with LlamaVocab(TOKENIZER_GGUF) as v:
        yield v


@pytest.fixture(scope="module")
def tokenizer_keys() -> TokenizerKeys:
    return TokenizerKeys.read(TOKENIZER_GGUF)


@pytest.fixture(scope="module")
def trained(vocab) -> tuple[SlimLM, SlimLMConfig]:
    # Untied, so output.weight is exported and checked too; make_tiny uses the tied preset.
    cfg = SlimLMConfig.preset("tiny-untied", context_length=256)
    model, loss = train_tiny(token_documents(vocab), cfg, TinyTrainConfig(steps=150))
    assert loss < 1.5, f"tiny model did not learn the corpus (loss {loss:.2f})"
    return model, cfg


@pytest.fixture(scope="module")
def exports(trained, tokenizer_keys, tmp_path_factory) -> dict[QuantType, Path]:
    model, cfg = trained
    out = tmp_path_factory.mktemp("gguf")
    return {q: export_gguf(model, cfg, out / f"tiny-{q.value}.gguf", q, tokenizer_keys) for q in QuantType}


@pytest.fixture(scope="module")
def prompt_ids(vocab) -> list[list[int]]:
    return [vocab.tokenize(p) for p in PROMPTS]


def torch_greedy(model: SlimLM, ids: list[int], n: int) -> list[int]:
    out = model.generate_greedy(torch.tensor([ids]), n)
    return out[0, len(ids) :].tolist()


def f16_rounded(model: SlimLM, cfg: SlimLMConfig) -> SlimLM:
    """The model as llama.cpp sees an F16 export: matrices rounded to F16, the rest F32."""
    copy = SlimLM(cfg)
    quantized = {torch_name for gguf_name, torch_name in tensor_map(cfg) if gguf_name != "position_embd.weight"}
    state = {
        k: v.half().float() if k in quantized and v.dim() == 2 else v.clone() for k, v in model.state_dict().items()
    }
    copy.load_state_dict(state)
    return copy.eval()


def test_tensor_names_and_types(trained, exports):
    _, cfg = trained
    reader = gguf.GGUFReader(exports[QuantType.Q4_0])
    assert reader.get_field("general.architecture").contents() == "mpt"
    assert reader.get_field("mpt.attention.max_alibi_bias").contents() == 0.0
    assert reader.get_field("mpt.context_length").contents() == cfg.context_length
    assert len(reader.get_field("tokenizer.ggml.tokens").data) == cfg.vocab_size
    assert reader.get_field("tokenizer.chat_template") is not None
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {name for name, _ in tensor_map(cfg)}
    Q = gguf.GGMLQuantizationType
    assert tensors["blk.0.attn_qkv.weight"].tensor_type == Q.Q4_0
    assert list(tensors["blk.0.attn_qkv.weight"].shape) == [cfg.d_model, 3 * cfg.d_model]
    assert tensors["position_embd.weight"].tensor_type == Q.F32
    assert tensors["blk.1.ffn_norm.bias"].tensor_type == Q.F32


def test_f16_logits_match_torch(trained, exports, prompt_ids):
    model, cfg = trained
    reference = f16_rounded(model, cfg)
    runner = LlamaRunner(exports[QuantType.F16])
    try:
        worst = 0.0
        for ids in prompt_ids:
            ours = runner.prompt_logits(ids)
            with torch.no_grad():
                theirs = reference(torch.tensor([ids]))[0][0].numpy()
            worst = max(worst, float(np.abs(ours - theirs).max()))
        print(f"f16 max abs logit diff over {len(prompt_ids)} prompts: {worst:.4f}")
        assert worst < F16_LOGIT_TOLERANCE
    finally:
        runner.close()


def test_f32_logits_match_torch_closely(trained, exports, prompt_ids):
    model, _ = trained
    runner = LlamaRunner(exports[QuantType.F32])
    try:
        ids = prompt_ids[2]
        ours = runner.prompt_logits(ids)
        with torch.no_grad():
            theirs = model(torch.tensor([ids]))[0][0].numpy()
        diff = float(np.abs(ours - theirs).max())
        print(f"f32 max abs logit diff: {diff:.4f}")
        assert diff < F16_LOGIT_TOLERANCE
    finally:
        runner.close()


def test_f16_greedy_matches_torch_in_a_batch(trained, exports, prompt_ids):
    model, cfg = trained
    reference = f16_rounded(model, cfg)
    expected = [torch_greedy(reference, ids, NUM_GREEDY) for ids in prompt_ids]
    runner = LlamaRunner(exports[QuantType.F16], n_seq_max=len(prompt_ids))
    try:
        assert runner.greedy_batch(prompt_ids, NUM_GREEDY) == expected
    finally:
        runner.close()


def test_greedy_output_is_memorized_text(trained, vocab, prompt_ids):
    model, _ = trained
    text = vocab.detokenize(torch_greedy(model, prompt_ids[0], 8))
    assert text.startswith(" jumps over the lazy dog."), text


@pytest.mark.parametrize("qtype, min_agreement", [(QuantType.Q8_0, 0.98), (QuantType.Q4_0, 0.85)])
def test_quantized_top1_mostly_agrees(trained, exports, prompt_ids, qtype, min_agreement):
    """Top-1 agreement with torch along torch's own greedy sequences (teacher-forced,
    so one early disagreement does not derail the rest of the count)."""
    model, _ = trained
    runner = LlamaRunner(exports[qtype], n_seq_max=len(prompt_ids))
    try:
        free_running = runner.greedy_batch(prompt_ids, NUM_GREEDY)
        matches, num_same = [], 0
        for ids, ours_free in zip(prompt_ids, free_running):
            sequence = model.generate_greedy(torch.tensor([ids]), NUM_GREEDY)[0].tolist()
            with torch.no_grad():
                theirs = model(torch.tensor([sequence]))[0][0].argmax(-1).numpy()
            ours = runner.prompt_logits(sequence).argmax(-1)
            matches += list(ours[len(ids) - 1 : -1] == theirs[len(ids) - 1 : -1])
            num_same += ours_free == sequence[len(ids) :]
    finally:
        runner.close()
    agreement = float(np.mean(matches))
    print(
        f"{qtype.value}: teacher-forced top-1 agreement {agreement:.2%} of {len(matches)} tokens; "
        f"{num_same}/{len(prompt_ids)} free-running {NUM_GREEDY}-token continuations identical"
    )
    assert agreement >= min_agreement


def test_tied_export_matches_torch(tmp_path, tokenizer_keys, prompt_ids):
    # make_tiny's preset ties the output to token_embd: no output.weight in the file.
    cfg = SlimLMConfig.preset("tiny", context_length=128)
    torch.manual_seed(0)
    model = SlimLM(cfg).eval()
    path = export_gguf(model, cfg, tmp_path / "tied.gguf", QuantType.F32, tokenizer_keys)
    assert "output.weight" not in {name for name, _ in tensor_map(cfg)}
    runner = LlamaRunner(path, n_ctx=128, n_seq_max=1)
    try:
        ids = prompt_ids[2]
        with torch.no_grad():
            theirs = model(torch.tensor([ids]))[0][0].numpy()
        diff = float(np.abs(runner.prompt_logits(ids) - theirs).max())
    finally:
        runner.close()
    print(f"tied f32 max abs logit diff: {diff:.5f}")
    assert diff < F16_LOGIT_TOLERANCE


def test_checkpoint_round_trip(trained, tmp_path):
    model, cfg = trained
    path = tmp_path / "ckpt.pt"
    torch.save(model.checkpoint(), path)
    loaded = SlimLM.from_checkpoint(torch.load(path, weights_only=True))
    assert loaded.cfg == cfg
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded.eval()(ids)[0], model(ids)[0])


def test_presets_have_their_named_sizes():
    # Instantiated on the meta device: shapes only, no memory, no init time.
    expected_millions = {"125m": 125, "270m": 270, "450m": 450, "760m": 760, "1b": 1000}
    for name, millions in expected_millions.items():
        with torch.device("meta"):
            num_params = SlimLM(SlimLMConfig.preset(name)).num_params()
        # 1b is MPT-1B's shape, 1.31B with this vocabulary: hence the slack.
        assert abs(num_params / 1e6 - millions) / millions < 0.35, (name, num_params)
    assert replace(SlimLMConfig.preset("tiny"), num_layers=3).num_layers == 3
    with pytest.raises(ValueError):
        SlimLMConfig.preset("tiny", num_heads=5)
