"""The corpus memmaps and the pretraining loop: learning, exact resume, 2-rank DDP on gloo.

Everything runs the tiny SlimLM preset on one CPU thread per process for a
handful of steps on a few hundred tokens.
"""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.training.corpus import build_tiny_memmap, needs_tokenizer  # noqa: E402
from training.data import is_val, open_tokens, read_documents, read_meta  # noqa: E402
from training.pretrain import LOG_FILE, PretrainConfig, plot_log, read_log, train  # noqa: E402

pytestmark = needs_tokenizer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("memmap")
    build_tiny_memmap(out)
    return out


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(data_dir: Path, out_dir: Path, **overrides) -> PretrainConfig:
    base = PretrainConfig(data_dir=str(data_dir), out_dir=str(out_dir), preset="tiny", seq_len=32, batch_size=4,
                          max_steps=8, warmup_steps=2, learning_rate=3e-3, eval_every=4, eval_batches=2,
                          checkpoint_every=4, log_every=1, device="cpu", num_threads=1)
    return replace(base, **overrides)


def test_memmap_counts_and_split(data_dir: Path):
    meta = read_meta(data_dir)
    assert meta["dtype"] == "uint16"
    for split in ("train", "val"):
        tokens = open_tokens(data_dir, split)
        assert len(tokens) == meta["num_tokens"][split] > 0
        assert tokens.max() < meta["vocab_size"]
        # every document ends with <|endoftext|>
        assert int((np.asarray(tokens) == meta["endoftext_id"]).sum()) == meta["sources"]["wikipedia"][split]["num_documents"]
    docs = list(read_documents(data_dir))
    val_ids = {d.doc_id for d in docs if is_val(d.doc_id, meta["val_fraction"])}
    assert 0 < len(val_ids) < len(docs)
    assert meta["sources"]["wikipedia"]["val"]["num_documents"] == len(val_ids)


@pytest.mark.parametrize("optimizer", ["adamw", "lion"])
def test_loss_decreases(data_dir: Path, tmp_path: Path, optimizer: str):
    lr = 3e-3 if optimizer == "adamw" else 1e-3  # Lion: sign updates, a smaller rate
    cfg = tiny_config(data_dir, tmp_path, max_steps=30, optimizer=optimizer, learning_rate=lr, eval_every=30,
                      checkpoint_every=30)
    result = train(cfg)
    losses = [r["loss"] for r in read_log(tmp_path / LOG_FILE) if "loss" in r]
    assert len(losses) == 30
    # Random init over 49,152 ids starts near ln(49152) = 10.8; memorizing a tiny corpus goes far below.
    assert losses[0] > 10.0
    assert np.mean(losses[-5:]) < losses[0] - 2.0, losses
    assert result.val_loss is not None and result.val_loss < losses[0]
    tokens_per_s = [r["tokens_per_s"] for r in read_log(tmp_path / LOG_FILE) if "tokens_per_s" in r]
    assert all(t > 0 for t in tokens_per_s)


def test_resume_continues_exactly(data_dir: Path, tmp_path: Path):
    whole = train(tiny_config(data_dir, tmp_path / "whole"))
    first = train(tiny_config(data_dir, tmp_path / "split", stop_after=3))
    assert first.step == 3
    with pytest.raises(FileExistsError):
        train(tiny_config(data_dir, tmp_path / "split"))
    resumed = train(tiny_config(data_dir, tmp_path / "split", resume=True))
    assert resumed.step == whole.step == 8

    def losses(run: str) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in read_log(tmp_path / run / LOG_FILE) if "loss" in r]

    assert losses("split") == losses("whole")  # bit for bit, steps 1..8
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    ckpt = torch.load(tmp_path / "split" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 8 and ckpt["tokens_seen"] == 8 * 4 * 32


def test_plot_writes_png(data_dir: Path, tmp_path: Path):
    train(tiny_config(data_dir, tmp_path, max_steps=4))
    png = plot_log(tmp_path / LOG_FILE, tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, world_size: int, port: int, cfg: PretrainConfig, out: str) -> None:
    """One rank, as torchrun would start it: the environment names the group."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = train(cfg)
    torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_two_ranks_gloo(data_dir: Path, tmp_path: Path):
    import torch.multiprocessing as mp

    cfg = tiny_config(data_dir, tmp_path / "run", max_steps=4, eval_every=2, eval_batches=3)
    mp.spawn(_ddp_rank, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    initial = train(tiny_config(data_dir, tmp_path / "init", max_steps=1, stop_after=0)).model.state_dict()
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert any(not torch.equal(rank0[n], initial[n]) for n in rank0)  # they did train
    records = read_log(tmp_path / "run" / LOG_FILE)
    # Each step consumed both ranks' batches; only rank 0 writes the log and the checkpoint.
    assert [r["tokens_seen"] for r in records if "loss" in r] == [k * 2 * 4 * 32 for k in range(1, 5)]
    assert (tmp_path / "run" / "ckpt.pt").exists()
