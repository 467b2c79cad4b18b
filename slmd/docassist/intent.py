"""What a free-form request about a document wants: a summary, suggested
questions, an answer, or something else (SlimLM's Table 13 setup).

Two detectors:
- `rule_intent`: a keyword pre-classifier, cheap and predictable; it answers
  only when a pattern matches and returns None otherwise;
- the model: a short few-shot classification prompt (`intent_prompt`) whose
  output is constrained by `INTENT_GRAMMAR` to one of the four labels.
`detect` in the servicer asks the rules first and the model only when the
rules have no opinion."""

from __future__ import annotations

import enum
import re

from slmd.docassist.prompts import PromptLayout


class Intent(enum.Enum):
    SUMMARIZE = "SUMMARIZE"
    SUGGEST = "SUGGEST"
    ANSWER = "ANSWER"
    OTHER = "OTHER"


class IntentSource(enum.Enum):
    RULES = "rules"
    MODEL = "model"


INTENT_GRAMMAR = 'root ::= "SUMMARIZE" | "SUGGEST" | "ANSWER" | "OTHER"'
INTENT_MAX_TOKENS = 4  # the longest label is 3 tokens

_INTENT_SYSTEM = (
    "Classify the user's request about a document. Reply with one word:\n"
    "SUMMARIZE if they want a summary,\n"
    "SUGGEST if they want questions suggested,\n"
    "ANSWER if they ask a question about the document,\n"
    "OTHER for anything else."
)
# Few-shot turns: tiny models copy the pattern far better than they follow rules.
_EXAMPLES = (
    ("Give me a summary of this.", Intent.SUMMARIZE),
    ("What questions could I ask about this file?", Intent.SUGGEST),
    ("Who wrote the report?", Intent.ANSWER),
    ("Translate the first paragraph into German.", Intent.OTHER),
    ("What are the main points?", Intent.SUMMARIZE),
    ("When does the contract end?", Intent.ANSWER),
)


def intent_prompt(layout: PromptLayout, request: str) -> list[int]:
    messages: list[tuple[str, str]] = [("system", _INTENT_SYSTEM)]
    for text, label in _EXAMPLES:
        messages += [("user", text), ("assistant", label.value)]
    messages.append(("user", " ".join(request.split())[:500]))
    return layout.encode_messages(messages)


def parse_intent(text: str) -> Intent:
    word = text.strip().upper()
    for intent in Intent:
        if word.startswith(intent.value):
            return intent
    return Intent.OTHER


# --- rules ---------------------------------------------------------------------

_FLAGS = re.IGNORECASE
_SUGGEST = re.compile(
    r"\bquestions?\b.{0,40}\b(ask|could|should|might|to explore|worth|for (?:a |the )?(?:quiz|discussion|review))"
    r"|\b(suggest|generate|propose|give me|list|write|come up with|brainstorm|draft|prepare|create|make)\b.{0,40}"
    r"\b(questions?|quiz|faqs?)\b"
    r"|\bwhat (?:should|could|can) (?:i|we) (?:be )?ask|\bquiz me\b|\bfaq\b", _FLAGS)
_SUMMARIZE = re.compile(
    r"\bsumm(?:ar|er)i[sz]e|\bsummary\b|\bsummari[sz]ation\b|\btl;? ?dr\b|\bgist\b|\boverview\b|\brecap\b"
    r"|\b(main|key|important|major) (points|ideas|takeaways|findings|messages)\b|\btakeaways\b"
    r"|\bin a nutshell\b|\bsum (?:it |this |that )?up\b|\bsynopsis\b|\bcondense\b|\bboil .{0,20} down\b"
    r"|\bshort version\b|\bbrief(?:ly)? (?:me|describe|explain)\b|\bwhat(?:'s| is) (?:this|the|that) "
    r"(?:document|doc|file|text|report|paper|article|deck|presentation|spreadsheet|pdf)\s+(?:about|saying)\b"
    r"|\bwhat (?:does|is) (?:this|the|that) (?:document|doc|file|text|report|paper|article|deck|pdf) "
    r"(?:say|cover|about)\b|\bhighlights\b|\babstract\b", _FLAGS)
_OTHER = re.compile(
    r"\b(translate|translation|rewrite|rephrase|paraphrase|proofread|spell-?check|reformat)\b"
    r"|\bformat (?:it|this|that) as\b"
    r"|\b(write|draft|compose)\b.{0,20}\b(email|e-mail|letter|poem|tweet|post|story|song|reply|response|memo)\b"
    r"|\b(joke|weather|hello|hi there|thank(?:s| you)|good morning)\b|\bconvert\b|\bturn (?:it|this) into\b"
    r"|\bmake (?:it|this) (?:sound )?(?:more )?(?:formal|casual|polite|funny|friendly)\b"
    r"|\bfix (?:the )?(?:typos|spelling|grammar)\b", _FLAGS)
_QUESTION_START = re.compile(
    r"^\s*(who|whom|whose|what|when|where|which|why|how|is|are|was|were|does|do|did|can|could|will|would|"
    r"should|has|have|had|according to|tell me|find|explain|describe|name|list)\b", _FLAGS)


def rule_intent(request: str) -> Intent | None:
    """The intent when a keyword pattern is sure, else None (ask the model)."""
    text = " ".join(request.split())
    if not text:
        return None
    if _SUGGEST.search(text):
        return Intent.SUGGEST
    if _SUMMARIZE.search(text):
        return Intent.SUMMARIZE
    if _OTHER.search(text):
        return Intent.OTHER
    if text.endswith("?") or _QUESTION_START.search(text):
        return Intent.ANSWER
    return None
