"""Cutting a document's text to the model's token budget, as SlimLM does: the
text is tokenized once, split on token boundaries into chunks of
`chunk_tokens` tokens, and the first chunks that fit the budget are kept.
Each chunk remembers the section it starts in ("page 2", "slide 1"), so
answers can point at where the text came from.

Document text is always tokenized with special tokens off: a document that
contains "<|im_end|>" gets the plain characters, never the control token, so
no document can close its own turn of the prompt."""

from __future__ import annotations

from dataclasses import dataclass

from slmd.docassist.ingest import ExtractedDocument
from slmd.tokenizer import Tokenizer


@dataclass(frozen=True)
class Chunk:
    text: str
    label: str  # the section the chunk starts in
    num_tokens: int


@dataclass(frozen=True)
class ChunkedDocument:
    chunks: tuple[Chunk, ...]  # the kept ones, in document order
    num_tokens: int  # of the whole text
    token_budget: int

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
    kept = ids[:token_budget]
    chunks = []
    byte_offset = 0  # of the chunk start, in the UTF-8 text of the kept tokens
    encoded = doc.text.encode("utf-8", "surrogatepass")
    for start in range(0, len(kept), chunk_tokens):
        piece = kept[start:start + chunk_tokens]
        raw = tokenizer.decode_bytes(piece)
        # A token boundary may fall inside a multi-byte character: the bytes of
        # a split character go with the chunk where the character ends.
        end = byte_offset + len(raw)
        text_start = _char_offset(encoded, byte_offset)
        text_end = _char_offset(encoded, end)
        section = doc.section_at(text_start)
        chunks.append(Chunk(text=doc.text[text_start:text_end] if text_end > text_start else "",
                            label=section.label if section is not None else "document",
                            num_tokens=len(piece)))
        byte_offset = end
    return ChunkedDocument(chunks=tuple(chunks), num_tokens=len(ids), token_budget=token_budget)


def _char_offset(encoded: bytes, byte_offset: int) -> int:
    """Characters wholly inside the first `byte_offset` bytes (a character cut
    in half is not counted, so it lands in the next chunk)."""
    return len(encoded[:byte_offset].decode("utf-8", "ignore"))
