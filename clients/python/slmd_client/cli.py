"""`slm`: talk to the slmd daemon from a shell.

    slm generate "Once upon a time" --max-tokens 32
    slm chat --system "You are terse."
    slm count "How many tokens is this?"
    slm status
    slm health

Subcommands live in a registry: a module registers a `Command` (name, help,
argument setup, run function) with `register`, and `main` builds one argparse
subparser per registered command. Modules listed in `EXTENSION_MODULES` are
imported when present, so the document commands (`slm summarize FILE`,
`slm suggest FILE`, `slm ask FILE "q"`, `slm assist FILE "request"`) plug in
from their own module without touching this one. Such a module can reuse
`add_sampling_arguments`, `sampling_kwargs`, `read_input` and `stream_chunks`.

Errors print one line, `slm: error: <CODE>: <details>`, and exit with 2 for
INVALID_ARGUMENT, 3 for UNAVAILABLE, 4 for RESOURCE_EXHAUSTED, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import grpc

from slmd_client._common import __version__
from slmd_client.datatypes import GenerateChunk, Priority, Usage
from slmd_client.errors import SlmdError
from slmd_client.sync import Client

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID_ARGUMENT = 2
EXIT_UNAVAILABLE = 3
EXIT_RESOURCE_EXHAUSTED = 4
EXIT_INTERRUPTED = 130

_EXIT_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INVALID_ARGUMENT,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_RESOURCE_EXHAUSTED,
}

# Modules that register more commands when they are installed.
EXTENSION_MODULES: tuple[str, ...] = ("slmd_client.cli_docs", "slmd_client.cli_memory")


@dataclass(frozen=True)
class Command:
    """One `slm` subcommand. `run` gets the parsed arguments and a connected
    client and returns the exit code; it may raise `SlmdError`."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Client], int]


_COMMANDS: dict[str, Command] = {}


def register(command: Command) -> Command:
    if command.name in _COMMANDS:
        raise ValueError(f"slm command {command.name!r} is already registered")
    _COMMANDS[command.name] = command
    return command


def commands() -> dict[str, Command]:
    """The registered commands, extensions included."""
    _load_extensions()
    return dict(_COMMANDS)


_extensions_loaded = False


def _load_extensions() -> None:
    global _extensions_loaded
    if _extensions_loaded:
        return
    _extensions_loaded = True
    for name in EXTENSION_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


# ---------------------------------------------------------------- helpers


class UsageError(Exception):
    """A bad command line that argparse could not catch; exits with 2."""


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling and scheduling flags shared by the generating commands."""
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, metavar="N", help="most tokens to generate")
    g.add_argument("--temperature", type=float, metavar="T", help="0 = greedy")
    g.add_argument("--top-p", type=float, metavar="P")
    g.add_argument("--top-k", type=int, metavar="K")
    g.add_argument("--min-p", type=float, metavar="P")
    g.add_argument("--repetition-penalty", type=float, metavar="R")
    g.add_argument("--seed", type=int, metavar="S")
    g.add_argument("--stop", action="append", metavar="S", help="stop string (repeatable)")
    g.add_argument("--json-schema", metavar="FILE", help="constrain the output to the JSON schema in FILE")
    g.add_argument("--grammar", metavar="FILE", help="constrain the output to the GBNF grammar in FILE")
    g.add_argument("--priority", choices=[p.value for p in Priority], help="scheduling class")
    g.add_argument("--deterministic", action="store_true", help="decode alone: output equals a solo run")
    g.add_argument("--usage", action="store_true", help="print token counts and timings to stderr")


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for `Client.generate` from `add_sampling_arguments` flags."""
    return {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
        "stop": args.stop,
        "json_schema": _read_file(args.json_schema, "--json-schema") if args.json_schema else None,
        "grammar": _read_file(args.grammar, "--grammar") if args.grammar else None,
        "priority": args.priority,
        "deterministic": args.deterministic,
    }


def read_input(text: str | None, stdin: TextIO | None = None) -> str:
    """The text argument, or standard input when it is missing or "-"."""
    if text is not None and text != "-":
        return text
    stream = stdin or sys.stdin
    if stream.isatty():
        print("slm: reading from stdin (end with Ctrl-D)", file=sys.stderr)
    return stream.read()


def stream_chunks(chunks: Iterable[GenerateChunk], out: TextIO | None = None) -> tuple[str, Usage | None]:
    """Write each chunk's text as it arrives; return the whole text and usage."""
    out = out or sys.stdout
    parts: list[str] = []
    usage = None
    for chunk in chunks:
        if chunk.text:
            out.write(chunk.text)
            out.flush()
            parts.append(chunk.text)
        if chunk.usage is not None:
            usage = chunk.usage
    text = "".join(parts)
    if text and not text.endswith("\n") and out.isatty():
        out.write("\n")
        out.flush()
    return text, usage


def print_usage(usage: Usage | None) -> None:
    if usage is None:
        return
    print(
        f"slm: {usage.prompt_tokens} prompt tokens ({usage.cached_prompt_tokens} cached), "
        f"{usage.completion_tokens} completion tokens; queued {usage.queue_seconds:.3f}s, "
        f"first token {usage.time_to_first_token_seconds:.3f}s, total {usage.total_seconds:.3f}s",
        file=sys.stderr,
    )


def _read_file(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"{flag}: cannot read {path}: {e.strerror}") from e


# --------------------------------------------------------------- commands


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", help='prompt text; "-" or nothing reads stdin')
    parser.add_argument("--chat", action="store_true", help="send as a user message, with the chat template")
    parser.add_argument("--system", metavar="TEXT", help="system message (implies --chat)")
    parser.add_argument("--request-id", metavar="ID", help="correlation id echoed by the daemon")
    add_sampling_arguments(parser)


def _generate(args: argparse.Namespace, client: Client) -> int:
    text = read_input(args.prompt)
    if args.chat or args.system:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": text})
        chunks = client.generate(messages=messages, request_id=args.request_id, **sampling_kwargs(args))
    else:
        chunks = client.generate(text, request_id=args.request_id, **sampling_kwargs(args))
    _, usage = stream_chunks(chunks)
    if args.usage:
        print_usage(usage)
    return EXIT_OK


def _chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", metavar="TEXT", help="system message that starts the conversation")
    add_sampling_arguments(parser)


def _chat(args: argparse.Namespace, client: Client) -> int:
    interactive = sys.stdin.isatty()
    initial = [{"role": "system", "content": args.system}] if args.system else []
    history = list(initial)
    if interactive:
        print("slm chat: /reset clears the conversation, /exit or Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = list(initial)
            continue
        history.append({"role": "user", "content": line})
        try:
            reply, usage = stream_chunks(client.generate(messages=history, **sampling_kwargs(args)))
        except KeyboardInterrupt:
            if not interactive:
                raise
            history.pop()  # the turn was abandoned
            print("\nslm: interrupted", file=sys.stderr)
            continue
        except SlmdError as e:
            if not interactive:
                raise
            history.pop()
            print(f"slm: error: {e}", file=sys.stderr)
            continue
        if not reply.endswith("\n"):
            print()
        if args.usage:
            print_usage(usage)
        history.append({"role": "assistant", "content": reply})
    return EXIT_OK


def _count_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", help='text to count; "-" or nothing reads stdin')
    parser.add_argument("--chat", action="store_true", help="count as a user message, after the chat template")
    parser.add_argument("--json", action="store_true", help="print all fields as JSON")


def _count(args: argparse.Namespace, client: Client) -> int:
    text = read_input(args.text)
    if args.chat:
        count = client.count_tokens(messages=[{"role": "user", "content": text}])
    else:
        count = client.count_tokens(text)
    if args.json:
        print(json.dumps(count.__dict__))
    else:
        print(count.num_tokens)
    return EXIT_OK


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print as JSON")


def _status(args: argparse.Namespace, client: Client) -> int:
    from slmd_client.status_types import render

    status = client.status()
    print(json.dumps(status.to_dict(), indent=2) if args.json else "\n".join(render(status)))
    return EXIT_OK


def _health_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", default="", help='health service name (default "": the whole daemon)')


def _health(args: argparse.Namespace, client: Client) -> int:
    serving = client.health(args.service)
    print("SERVING" if serving else "NOT_SERVING")
    return EXIT_OK if serving else EXIT_ERROR


register(Command("generate", "stream a completion of a prompt to stdout", _generate_arguments, _generate))
register(Command("chat", "interactive chat over stdin, keeping the history", _chat_arguments, _chat))
register(Command("count", "count the tokens of a text", _count_arguments, _count))
register(Command("status", "show the daemon's status", _status_arguments, _status))
register(Command("health", "check that the daemon is serving (exit 0) or not (exit 1)", _health_arguments, _health))


# ------------------------------------------------------------------- main


def _connection_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    g = parser.add_argument_group("connection")
    g.add_argument(
        "--socket",
        metavar="PATH",
        help="daemon socket path or host:port (default: $SLMD_SOCKET or the per-user socket)",
    )
    g.add_argument("--token", help="bearer token for TCP (default: $SLMD_TOKEN)")
    g.add_argument("--app-name", metavar="NAME", help="label for this caller's requests")
    g.add_argument("--timeout", type=float, metavar="SECONDS", help="deadline for the whole call")
    g.add_argument("--wait", action="store_true", help="wait for the daemon to come up instead of failing")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm", description="Talk to the slmd daemon.")
    parser.add_argument("--version", action="version", version=f"slm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    connection = _connection_parser()
    for command in commands().values():
        p = sub.add_parser(command.name, help=command.help, description=command.help, parents=[connection])
        command.add_arguments(p)
        p.set_defaults(_command=command)
    return parser


def exit_code_for(error: SlmdError) -> int:
    return _EXIT_BY_CODE.get(error.code, EXIT_ERROR) if error.code is not None else EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = args._command
    try:
        with Client(
            args.socket,
            token=args.token,
            app_name=args.app_name,
            timeout=args.timeout,
            wait_for_ready=args.wait,
        ) as client:
            return command.run(args, client)
    except SlmdError as e:
        print(f"slm: error: {e}", file=sys.stderr)
        return exit_code_for(e)
    except (UsageError, ValueError) as e:
        print(f"slm: error: {e}", file=sys.stderr)
        return EXIT_INVALID_ARGUMENT
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`slm generate ... | head`): stop quietly, and
        # keep the interpreter's final flush of stdout from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
