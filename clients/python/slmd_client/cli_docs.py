"""`slm` commands for document assistance (imported by cli.py's EXTENSION_MODULES):

    slm summarize report.pdf --style key-points --length short
    slm suggest deck.pptx -n 5
    slm ask contract.docx "When does it end?"
    slm assist budget.xlsx "what's the total?"

FILE is sent inline (the daemon detects its format); "-" reads text from stdin.
On documents longer than the budget, `ask` and `assist` print the pages the
answer came from, and `summarize` its progress, on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import Any

from slmd_client.cli import EXIT_OK, Command, UsageError, print_usage, register, stream_chunks
from slmd_client.datatypes import Priority
from slmd_client.doc_types import DETECTORS, LENGTHS, STYLES, DocChunk
from slmd_client.sync import Client


def _document(path: str) -> Any:
    if path == "-":
        return sys.stdin.read()
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"FILE: no such file: {path}")
    return file


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help='PDF, DOCX, PPTX, XLSX, HTML, Markdown or text; "-" = stdin')
    g = parser.add_argument_group("generation")
    g.add_argument("--budget", type=int, metavar="TOKENS", help="document tokens the model sees (default 1000)")
    g.add_argument("--max-tokens", type=int, metavar="N")
    g.add_argument("--temperature", type=float, metavar="T", help="0 = greedy (default)")
    g.add_argument("--seed", type=int, metavar="S")
    g.add_argument("--priority", choices=[p.value for p in Priority])
    g.add_argument("--usage", action="store_true", help="print token counts and timings to stderr")


def _kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"token_budget": args.budget, "max_tokens": args.max_tokens, "temperature": args.temperature,
            "seed": args.seed, "priority": args.priority}


def _summarize_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--style", choices=list(STYLES), default="tldr")
    parser.add_argument("--length", choices=list(LENGTHS), default="medium")


def _summarize(args: argparse.Namespace, client: Client) -> int:
    chunks = client.documents.summarize(_document(args.file), style=args.style, length=args.length, **_kwargs(args))
    _, usage = stream_chunks(_with_notes(chunks))
    _end_line()
    if args.usage:
        print_usage(usage)
    return EXIT_OK


def _suggest_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("-n", "--num-questions", type=int, default=3, metavar="N")
    parser.add_argument("--json", action="store_true", help="print the questions as a JSON list")


def _suggest(args: argparse.Namespace, client: Client) -> int:
    result = client.documents.suggest_questions(_document(args.file), args.num_questions, **_kwargs(args))
    if args.json:
        print(json.dumps(list(result.questions)))
    else:
        for i, question in enumerate(result.questions, 1):
            print(f"{i}. {question}")
    if args.usage:
        print_usage(result.usage)
    return EXIT_OK


def _ask_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("question")


def _ask(args: argparse.Namespace, client: Client) -> int:
    _, usage = stream_chunks(_with_notes(client.documents.ask(_document(args.file), args.question,
                                                              **_kwargs(args))))
    _end_line()
    if args.usage:
        print_usage(usage)
    return EXIT_OK


def _assist_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("request", help='free-form: "summarize it", "what should I ask?", "who signed it?"')
    parser.add_argument("--detector", choices=list(DETECTORS), help="how the intent is detected")
    parser.add_argument("--detect-only", action="store_true", help="print the intent and stop")


def _assist(args: argparse.Namespace, client: Client) -> int:
    chunks = client.documents.assist(_document(args.file), args.request, detector=args.detector,
                                     detect_only=args.detect_only, **_kwargs(args))
    usage, wrote = None, False
    for chunk in _with_notes(chunks):
        if chunk.intent is not None:
            print(f"[intent: {chunk.intent} ({chunk.intent_source})]", file=sys.stderr)
            if args.detect_only:
                print(chunk.intent)
        if chunk.text:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            wrote = True
        usage = chunk.usage or usage
    if wrote:
        _end_line()
    if args.usage:
        print_usage(usage)
    return EXIT_OK


def _with_notes(chunks: Iterable[DocChunk]) -> Iterator[DocChunk]:
    """Pass chunks through; summary progress and cited pages go to stderr."""
    for chunk in chunks:
        if chunk.progress is not None:
            p = chunk.progress
            if p.is_reducing:
                note = f"all {p.num_parts} parts summarized ({p.num_cached_parts} cached); final summary:"
            else:
                note = f"part {p.num_parts_done}/{p.num_parts}" + (f": {p.part_label}" if p.part_label else "")
            print(f"[{note}]", file=sys.stderr)
        yield chunk
        if chunk.citations:
            sources = ", ".join(f"{c.label} (chunk {c.chunk_index + 1})" for c in chunk.citations)
            newline = "\n" if sys.stdout.isatty() else ""  # the answer's line is still open on a terminal
            print(f"{newline}[sources: {sources}]", file=sys.stderr)


def _end_line() -> None:
    if not sys.stdout.isatty():
        sys.stdout.write("\n")
        sys.stdout.flush()


register(Command("summarize", "summarize a document (streamed)", _summarize_arguments, _summarize))
register(Command("suggest", "suggest questions about a document", _suggest_arguments, _suggest))
register(Command("ask", "answer a question about a document (streamed)", _ask_arguments, _ask))
register(Command("assist", "a free-form request about a document: detects the intent, then answers",
                 _assist_arguments, _assist))
