"""Prompts for the document tasks, in the layout of SlimLM's Table 13: system
prompt, document, user request, response.

The system prompt and the document form the prefix; the task instruction (or
the question) and the assistant header form the suffix. The two are encoded
separately, so the prefix ids of one document are the same for every task and
a prefix cache can serve them all from one prefill:

    ids = layout.prefix_ids(document_text) + layout.suffix_ids(instruction)

Message contents (document, question, request) are encoded with special tokens
off and only the chat template's own text with them on, so no content can
forge a turn boundary."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from slmd.chat import Prompter

SYSTEM_PROMPT = ("You are a helpful assistant. Read the document below and respond to the user's "
                 "request using only the document.")
DOCUMENT_HEADER = "\n\nDocument:\n"


class SummaryStyle(enum.Enum):
    TLDR = "tldr"
    KEY_POINTS = "key-points"
    TEASER = "teaser"
    HEADLINE = "headline"


class SummaryLength(enum.Enum):
    SHORT = "short"
    MEDIUM = "medium"
    LONG = "long"

    @property
    def max_tokens(self) -> int:
        return _SUMMARY_MAX_TOKENS[self]


_SUMMARY_MAX_TOKENS = {SummaryLength.SHORT: 48, SummaryLength.MEDIUM: 96, SummaryLength.LONG: 192}

# Simple wording: a 135M model follows short, concrete instructions best.
_SUMMARY_INSTRUCTIONS = {
    SummaryStyle.TLDR: {
        SummaryLength.SHORT: "Summarize the document in one sentence.",
        SummaryLength.MEDIUM: "Summarize the document in a few sentences.",
        SummaryLength.LONG: "Write a detailed summary of the document in one or two paragraphs.",
    },
    SummaryStyle.KEY_POINTS: {
        SummaryLength.SHORT: "List the 3 key points of the document as bullet points.",
        SummaryLength.MEDIUM: "List the 5 key points of the document as bullet points.",
        SummaryLength.LONG: "List the 7 key points of the document as bullet points.",
    },
    SummaryStyle.TEASER: {
        SummaryLength.SHORT: "Write a one-sentence teaser that makes people want to read the document.",
        SummaryLength.MEDIUM: "Write a short teaser that makes people want to read the document.",
        SummaryLength.LONG: "Write a teaser paragraph that makes people want to read the document.",
    },
    SummaryStyle.HEADLINE: {
        SummaryLength.SHORT: "Write a headline for the document in at most 8 words.",
        SummaryLength.MEDIUM: "Write a headline for the document in at most 12 words.",
        SummaryLength.LONG: "Write a headline for the document in at most 20 words.",
    },
}
_HEADLINE_MAX_TOKENS = 32


def summary_instruction(style: SummaryStyle, length: SummaryLength) -> str:
    return _SUMMARY_INSTRUCTIONS[style][length]


def summary_max_tokens(style: SummaryStyle, length: SummaryLength) -> int:
    if style is SummaryStyle.HEADLINE:
        return min(_HEADLINE_MAX_TOKENS, length.max_tokens)
    return length.max_tokens


def questions_instruction(num_questions: int) -> str:
    return (f"Write {num_questions} different questions that a reader could ask about the document. "
            f"Reply with a JSON list of {num_questions} questions.")


# Each question: a capital letter, 8 to 100 characters without quotes,
# backslashes or question marks, then one question mark. Bounded, so the
# whole list fits in `questions_max_tokens` when tokens are at least one
# character each (text in Latin script); text that takes several byte tokens
# per character may hit the cap, and then the complete questions are kept.
_QUESTION_PATTERN = r'^[A-Z][^"?\\\n]{8,100}\?$'
_TOKENS_PER_QUESTION = 106


def questions_schema(num_questions: int) -> dict:
    return {"type": "array", "minItems": num_questions, "maxItems": num_questions,
            "items": {"type": "string", "pattern": _QUESTION_PATTERN}}


def questions_max_tokens(num_questions: int) -> int:
    return 16 + _TOKENS_PER_QUESTION * num_questions


def answer_instruction(question: str) -> str:
    return f"Answer this question using the document: {question.strip()}"


ANSWER_MAX_TOKENS = 128
# Greedy decoding of a 135M model loops easily ("de la rue de la rue ..."); a
# mild penalty is the default for the free-text tasks (not under a grammar).
REPETITION_PENALTY = 1.1
OTHER_MAX_TOKENS = 192


@dataclass(frozen=True)
class _Frame:
    """A chat template's text around the contents of a fixed list of roles."""

    pieces: tuple[str, ...]  # len(roles) + 1 template pieces, contents go between them


class PromptLayout:
    """Encodes chat prompts with the model's template, contents as plain text."""

    def __init__(self, prompter: Prompter) -> None:
        self.prompter = prompter
        self.tokenizer = prompter.tokenizer
        self._frames: dict[tuple[str, ...], _Frame] = {}

    def _frame(self, roles: tuple[str, ...]) -> _Frame:
        frame = self._frames.get(roles)
        if frame is None:
            markers = [f"\x00SLMD{i}\x00" for i in range(len(roles))]
            text = self.prompter.render([{"role": r, "content": m} for r, m in zip(roles, markers)])
            pieces = []
            for marker in markers:
                before, found, text = text.partition(marker)
                if not found:
                    raise ValueError(f"the chat template does not render message content verbatim ({roles})")
                pieces.append(before)
            pieces.append(text)
            frame = self._frames[roles] = _Frame(tuple(pieces))
        return frame

    def _template(self, text: str, *, first: bool) -> list[int]:
        if first:
            return self.prompter.encode_chat_text(text) if text else []
        return self.tokenizer.encode(text, allow_special=True) if text else []

    def _content(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, allow_special=False)

    def encode_messages(self, messages: list[tuple[str, str]]) -> list[int]:
        """(role, content) pairs with the generation prompt at the end."""
        frame = self._frame(tuple(role for role, _ in messages))
        ids = self._template(frame.pieces[0], first=True)
        for (_, content), piece in zip(messages, frame.pieces[1:]):
            ids += self._content(content) + self._template(piece, first=False)
        return ids

    def prefix_ids(self, document_text: str, system_prompt: str = SYSTEM_PROMPT) -> list[int]:
        """System prompt + document, up to where the user's turn begins."""
        head, mid, _ = self._frame(("system", "user")).pieces
        return (self._template(head, first=True) + self._content(system_prompt + DOCUMENT_HEADER + document_text)
                + self._template(mid, first=False))

    def suffix_ids(self, instruction: str) -> list[int]:
        """The user's request and the assistant header, after `prefix_ids`."""
        tail = self._frame(("system", "user")).pieces[2]
        return self._content(instruction) + self._template(tail, first=False)
