"""The `transferlab` command: one thin sub-command per API function, sharing its option names.
The table of commands is commands.py; the parser is made from it (parser.py)."""

from __future__ import annotations

import logging
import os
import sys
import time

from ..errors import Interrupted, TransferlabError
from .commands import COMMANDS
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()  # a budget counts the whole command, importing PyTorch included
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(COMMANDS).parse_args(argv)
    args.started = started
    if int(os.environ.get("RANK", 0)) > 0:
        args.quiet = True  # under torchrun, rank 0 speaks for all
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        if getattr(args, "devices", None) not in (None, 1) and "WORLD_SIZE" not in os.environ:
            from ..training.distributed import launch

            return launch(args.devices, _without_devices(argv))
        args.handler(args, not args.quiet)
        return 0
    except TransferlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(str(err) if isinstance(err, Interrupted) else "interrupted: nothing half-written was kept",
              file=sys.stderr)
        return 130
    finally:
        if "transferlab.training.distributed" in sys.modules:
            sys.modules["transferlab.training.distributed"].shutdown()


def _without_devices(argv: list[str]) -> list[str]:
    """The command line again, for torchrun's processes (which must not launch once more)."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--devices":
            skip = True
        elif not word.startswith("--devices="):
            out.append(word)
    return out
