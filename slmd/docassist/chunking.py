"""Cutting a document's text to the model's token budget, as SlimLM does: the
text is tokenized once, split on token boundaries into chunks of
`chunk_tokens` tokens, and the first chunks that fit the budget are kept.
All chunks of the whole text are kept too: tasks on documents longer than
the budget choose among them (retrieval, map-reduce). Each chunk remembers
the section it starts in ("page 2", "slide 1"), so answers can point at
where the text came from.

Document text is always tokenized with special tokens off: a document that
contains "<|im_end|>" gets the plain characters, never the control token, so
no document can close its own turn of the prompt."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slmd.docassist.ingest import ExtractedDocument
from slmd.tokenizer import Tokenizer


@dataclass(frozen=True)
class Chunk:
    text: str
    label: str  # the section the chunk starts in
    num_tokens: int
    index: int = 0  # among all chunks of the document


def join_chunks(chunks: list[Chunk] | tuple[Chunk, ...]) -> str:
    """Chunks (in document order) back into text; a gap where chunks were skipped
    becomes a paragraph break, so two far-apart pieces do not read as one sentence."""
    parts: list[str] = []
    previous = None
    for c in chunks:
        if previous is not None and c.index != previous + 1:
            parts.append("\n\n")
        parts.append(c.text)
        previous = c.index
    return "".join(parts)


@dataclass(frozen=True)
class ChunkedDocument:
    chunks: tuple[Chunk, ...]  # the kept ones (the head that fits the budget), in document order
    num_tokens: int  # of the whole text
    token_budget: int
    all_chunks: tuple[Chunk, ...] = ()  # the whole text, in document order

    @property
    def num_kept_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def is_truncated(self) -> bool:
        return self.num_tokens > self.num_kept_tokens

    @property
    def text(self) -> str:
        """What the model sees: the kept chunks joined back together."""
        return "".join(c.text for c in self.chunks)


def chunk_document(doc: ExtractedDocument, tokenizer: Tokenizer, *, chunk_tokens: int,
                   token_budget: int) -> ChunkedDocument:
    if chunk_tokens < 1 or token_budget < 1:
        raise ValueError("chunk_tokens and token_budget must be >= 1")
    ids = tokenizer.encode(doc.text, allow_special=False)
    char_offset = _CharOffsets(doc.text.encode("utf-8", "surrogatepass"))
    bounds = [(s, min(s + chunk_tokens, len(ids))) for s in range(0, len(ids), chunk_tokens)]
    all_chunks = _cut(doc, tokenizer, ids, char_offset, bounds)
    # The head that fits the budget: whole chunks, the last one cut at the budget.
    num_whole = min(token_budget // chunk_tokens, len(all_chunks))
    kept = list(all_chunks[:num_whole])
    if num_whole < len(all_chunks) and token_budget % chunk_tokens:
        start = num_whole * chunk_tokens
        kept += _cut(doc, tokenizer, ids, char_offset, [(start, min(token_budget, bounds[num_whole][1]))],
                     first_index=num_whole)
    return ChunkedDocument(chunks=tuple(kept), num_tokens=len(ids), token_budget=token_budget,
                           all_chunks=tuple(all_chunks))


def _cut(doc: ExtractedDocument, tokenizer: Tokenizer, ids: list[int], char_offset: _CharOffsets,
         bounds: list[tuple[int, int]], first_index: int = 0) -> list[Chunk]:
    """Chunks for consecutive token ranges; the first range starts on a chunk boundary."""
    chunks = []
    byte_offset = len(tokenizer.decode_bytes(ids[:bounds[0][0]])) if bounds and bounds[0][0] else 0
    for i, (start, stop) in enumerate(bounds):
        raw = tokenizer.decode_bytes(ids[start:stop])
        # A token boundary may fall inside a multi-byte character: the bytes of
        # a split character go with the chunk where the character ends.
        end = byte_offset + len(raw)
        text_start = char_offset(byte_offset)
        text_end = char_offset(end)
        section = doc.section_at(text_start)
        chunks.append(Chunk(text=doc.text[text_start:text_end] if text_end > text_start else "",
                            label=section.label if section is not None else "document",
                            num_tokens=stop - start, index=first_index + i))
        byte_offset = end
    return chunks


class _CharOffsets:
    """Characters wholly inside the first n bytes of UTF-8 text (a character cut
    in half is not counted, so it lands in the next chunk). One pass over the
    bytes, so a long document costs O(size), not O(size x chunks)."""

    def __init__(self, encoded: bytes) -> None:
        is_start = (np.frombuffer(encoded, dtype=np.uint8) & 0xC0) != 0x80
        self._is_start = is_start
        self._num_starts = np.concatenate(([0], np.cumsum(is_start)))  # starts before byte i

    def __call__(self, byte_offset: int) -> int:
        n = int(self._num_starts[byte_offset])
        if byte_offset < len(self._is_start) and not self._is_start[byte_offset]:
            n -= 1  # the character that starts before byte_offset ends after it
        return n
