"""A long PDF made by the tests: 20 pages (over 10,000 tokens) of varied
filler about a few places, with distinct facts planted on given pages, for
retrieval and map-reduce tests and the long-documents benchmark.

Each fact has a question whose answer copies one distinctive token (a code
or a name) that appears nowhere else in the document."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

NUM_PAGES = 20


@dataclass(frozen=True)
class Fact:
    page: int  # 1-based
    sentence: str
    question: str
    answer: str  # the token the answer must contain


FACTS = (
    Fact(3, "The vault code of the harbor office is 7391.", "What is the vault code of the harbor office?",
         "7391"),
    Fact(8, "The chief astronomer of the observatory is named Pellawick.",
         "What is the name of the chief astronomer of the observatory?", "Pellawick"),
    Fact(11, "The observatory telescope mirror was cast in the year 1847.",
         "In which year was the observatory telescope mirror cast?", "1847"),
    Fact(14, "The password for the archive door is Brindlemoss.", "What is the password for the archive door?",
         "Brindlemoss"),
    Fact(17, "The glacier research station has exactly 62 bunk beds.",
         "How many bunk beds does the glacier research station have?", "62"),
    Fact(19, "The emergency radio frequency of the glacier station is 4625 kilohertz.",
         "What is the emergency radio frequency of the glacier station?", "4625"),
)

# The document's three parts: beginning, middle, end. A summary of the whole
# document should name each part's place.
TOPICS = ((range(1, 7), "Zorblat harbor"), (range(7, 14), "Quindle observatory"),
          (range(14, NUM_PAGES + 1), "Vexmoor glacier"))

_SUBJECTS = ("The old pier", "A local guide", "The town council", "Most visitors", "The spring market",
             "A narrow road", "The museum", "Fishermen", "The night shift", "A small ferry", "The weather",
             "Every winter", "The library", "A stone bridge", "The workers")
_VERBS = ("describes", "changes", "protects", "surrounds", "welcomes", "remembers", "follows", "crosses",
          "improves", "supports", "watches", "connects")
_OBJECTS = ("the quiet streets", "the northern coast", "a long history of trade", "the seasonal tourists",
            "the wooden houses", "the rocky hills", "the annual festival", "the cold wind", "the green valley",
            "the school children", "the painted boats", "the evening lights", "the mountain path")
_TAILS = ("near {topic}", "around {topic}", "at {topic}", "beside {topic}", "in the area of {topic}",
          "not far from {topic}", "for the people of {topic}")


def topic_of(page: int) -> str:
    return next(name for pages, name in TOPICS if page in pages)


def page_text(page: int, rng: random.Random, num_sentences: int = 34) -> str:
    topic = topic_of(page)
    sentences = [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
                 f"{rng.choice(_TAILS).format(topic=topic)}." for _ in range(num_sentences)]
    sentences.insert(0, f"Page {page} of the {topic} report.")
    for fact in FACTS:
        if fact.page == page:
            sentences.insert(len(sentences) // 2, fact.sentence)
    return " ".join(sentences)


def pages(seed: int = 13) -> list[str]:
    rng = random.Random(seed)
    return [page_text(p, rng) for p in range(1, NUM_PAGES + 1)]


def make_pdf(seed: int = 13) -> bytes:
    """The pages as a PDF, text wrapped to the page width."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=A4, invariant=True)
    for text in pages(seed):
        lines, line = [], ""
        for word in text.split():
            if len(line) + len(word) + 1 > 95:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        y = 800
        for one in lines:
            pdf.drawString(40, y, one)
            y -= 12
        pdf.showPage()
    pdf.save()
    return out.getvalue()
