"""`slm memory-pressure LEVEL` (imported by cli.py's EXTENSION_MODULES):
forward a platform memory signal to the daemon, as an integrator would from
Android's onTrimMemory or a desktop's low-memory notification. Operators
only (root, the daemon's uid, or an app with `admin = true`).

    slm memory-pressure running_critical   # give memory back now
    slm memory-pressure none               # the pressure is over"""

from __future__ import annotations

import argparse

from slmd_client.cli import EXIT_OK, Command, register
from slmd_client.status_types import TRIM_LEVELS
from slmd_client.sync import Client


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("level", choices=TRIM_LEVELS, help="onTrimMemory-style level")


def _run(args: argparse.Namespace, client: Client) -> int:
    print(client.signal_memory_pressure(args.level))  # the daemon's level now
    return EXIT_OK


register(Command("memory-pressure", "forward a memory-pressure signal (operators only)", _arguments, _run))
