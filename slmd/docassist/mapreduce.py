"""Planning a map-reduce summary of a document longer than its token budget.

Level 0 items are the document's chunks. Consecutive items are grouped into
parts that fit the budget; each part is summarized on its own (the map);
the part summaries become the items of the next level, grouped at most
`REDUCE_FAN_IN` to a part. When a level has at most that many items and
they fit the budget, they are the text of the final summary (the reduce).
A 10,800-token document with a 1,000-token budget is 11 parts of 5 chunks,
then 3 parts of 4 or 3 part summaries, then the final summary of those 3.

Why so narrow a final reduce: a 135M model paraphrases its document from the
top and runs out of tokens; given eleven part summaries, its summary named
only the first third of the document, given three, all of it.

Pure planning: no model calls here (see slmd/server/summaries.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from slmd.docassist.chunking import Chunk

# A part's summary: short enough that a dozen of them fit one budget, long
# enough to keep the part's names and numbers.
PART_MAX_TOKENS = 48
PART_INSTRUCTION = "Summarize the document in one sentence."
REDUCE_FAN_IN = 4


@dataclass(frozen=True)
class Item:
    """A piece of text at some level: a chunk (level 0) or a part summary."""

    text: str
    num_tokens: int
    first_label: str  # the section the item starts in ("page 3")
    last_label: str  # the section it ends in


@dataclass(frozen=True)
class Part:
    level: int
    first: int  # index of its first item at its level
    items: tuple[Item, ...]

    @property
    def key(self) -> tuple:
        """Names the part in the document's cache of part summaries."""
        return (self.level, self.first, len(self.items), PART_MAX_TOKENS)

    @property
    def text(self) -> str:
        sep = "" if self.level == 0 else "\n\n"  # chunks are contiguous text; summaries are paragraphs
        return sep.join(i.text for i in self.items)

    @property
    def label(self) -> str:
        return span_label(self.items[0].first_label, self.items[-1].last_label)


def chunk_items(chunks: Sequence[Chunk]) -> list[Item]:
    # Labels are where chunks start: a part "pages 3-5" may run a little into page 6.
    return [Item(c.text, c.num_tokens, c.label, c.label) for c in chunks]


def span_label(first: str, last: str) -> str:
    """"page 3" + "page 5" -> "pages 3-5"; one section keeps its own label."""
    if first == last:
        return first
    kind_a, _, num_a = first.partition(" ")
    kind_b, _, num_b = last.partition(" ")
    if kind_a == kind_b and num_a and num_b:
        return f"{kind_a}s {num_a}-{num_b}"
    return f"{first} to {last}"


def total_tokens(items: Sequence[Item]) -> int:
    return sum(i.num_tokens for i in items)


def is_reduced(items: Sequence[Item], token_budget: int) -> bool:
    """Whether `items` can be the final summary's document."""
    return len(items) <= REDUCE_FAN_IN and total_tokens(items) <= token_budget


def plan_level(items: Sequence[Item], level: int, token_budget: int) -> list[Part]:
    """Consecutive items grouped greedily into parts of at most `token_budget`
    tokens (an item larger than the budget is a part of its own; chunks never
    are); above level 0, at most REDUCE_FAN_IN items, in groups of even size."""
    max_items = len(items)
    if level > 0:
        num_groups = -(-len(items) // REDUCE_FAN_IN)
        max_items = -(-len(items) // num_groups)
    parts: list[Part] = []
    group: list[Item] = []
    first = used = 0
    for i, item in enumerate(items):
        if group and (used + item.num_tokens > token_budget or len(group) >= max_items):
            parts.append(Part(level, first, tuple(group)))
            group, used, first = [], 0, i
        group.append(item)
        used += item.num_tokens
    if group:
        parts.append(Part(level, first, tuple(group)))
    return parts


def reduce_text(items: Sequence[Item]) -> str:
    """The final summary's document: the part summaries, one paragraph each."""
    return "\n\n".join(i.text.strip() for i in items)
