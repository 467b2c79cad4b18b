"""`make train-tiny`: every training stage end to end on tiny settings, through the real CLIs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.training.corpus import needs_tokenizer

pytest.importorskip("torch")


@needs_tokenizer
@pytest.mark.e2e
@pytest.mark.default_model
@pytest.mark.slow
def test_train_tiny_runs_every_stage(tmp_path: Path):
    corpus = ROOT / "build" / "corpus"  # reused when `training.data fetch` already ran; fetched otherwise
    proc = subprocess.run([sys.executable, "-m", "training.pipeline", "--work", str(tmp_path), "--corpus",
                           str(corpus)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["num_tokens"]["train"] > 10_000
    assert (tmp_path / "pretrain" / "ckpt.pt").exists() and (tmp_path / "pretrain" / "loss.png").exists()
    records = (tmp_path / "docassist" / "records.jsonl").read_text().splitlines()
    assert len(records) >= 6
    assert (tmp_path / "models" / "slimlm-tiny-docassist-q4_0.gguf").exists()
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| smollm2-135m-instruct |" in report and "| slimlm-tiny-ft |" in report
