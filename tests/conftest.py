"""Shared fixtures: model paths and a real `slmd serve` subprocess on a
temporary Unix socket. `make test` sets SLMD_REQUIRE_MODELS=1 so a missing
model fails the run instead of skipping tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slmd.testing import DaemonProc, start_daemon

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "build" / "models" / "tiny-q4_0.gguf"


def _data_dir() -> Path:
    from slmd.paths import default_data_dir

    return default_data_dir()


def _need(path: Path, how: str) -> Path:
    if path.exists():
        return path
    msg = f"{path} is missing ({how})"
    if os.environ.get("SLMD_REQUIRE_MODELS"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def default_model() -> Path:
    env = os.environ.get("SLMD_TEST_MODEL")
    return _need(Path(env) if env else _data_dir() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf", "run `slmd pull`")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return _need(TINY_MODEL, "run `make tiny-model`")


@pytest.fixture
def daemon_factory(tmp_path_factory):
    started: list[DaemonProc] = []

    def make(model: Path, *extra: str, env: dict | None = None) -> DaemonProc:
        d = start_daemon(tmp_path_factory.mktemp("slmd"), model, *extra, env=env, cwd=ROOT)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture(scope="module")
def default_daemon(tmp_path_factory, default_model):
    """One daemon on the default model, shared by a test module."""
    d = start_daemon(tmp_path_factory.mktemp("slmd"), default_model, "--max-running", "8", cwd=ROOT)
    yield d
    d.stop()
