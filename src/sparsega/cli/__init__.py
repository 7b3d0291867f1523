"""The ``sparsega`` command line: a thin layer that parses, calls the library and prints.

Commands, one module each: ``demo`` (:mod:`.demo`: synthetic scene, no weights), ``reconstruct``
(:mod:`.reconstruct`: photos + checkpoint), ``align-cache`` (:mod:`.align_cache`: a naver MASt3R cache folder),
and on a saved output ``export``, ``eval`` and ``view`` (:mod:`.files`). Shared option groups: :mod:`.options`.

Exit codes: 0 success; 2 bad input or option (one line ``sparsega: error: ...`` on stderr); 1 unexpected internal
error (short message; ``--debug`` shows the traceback); 130 interrupted. Logs go to stderr; ``--json`` prints one
summary object on stdout; ``--quiet`` silences progress bars and info logs.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..errors import SparsegaError, one_line
from . import align_cache, demo, files, options, reconstruct

PROG = "sparsega"


def build_parser() -> argparse.ArgumentParser:
    """The ``sparsega`` argument parser (subcommands, shared flags)."""
    parser = options.Parser(prog=PROG, description="MASt3R sparse global alignment: photos -> cameras, depth, points.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=options.Parser)
    sub.required = True
    demo.add_parser(sub)
    reconstruct.add_parser(sub)
    align_cache.add_parser(sub)
    files.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsega`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
    except options.UsageError as e:
        sys.stderr.write(f"{PROG}: error: {one_line(e)}\n")
        return 2
    except SystemExit as e:  # --help / --version
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else 2
    args._argv = argv
    restore_logging = options.setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except SparsegaError as e:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{PROG}: error: {one_line(e)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if debug:
            traceback.print_exc()
        sys.stderr.write(
            f"{PROG}: internal error: {type(e).__name__}: {one_line(e)}"
            f"{'' if debug else ' (run again with --debug for the traceback)'}\n"
        )
        return 1
    finally:
        restore_logging()


__all__ = ["main", "build_parser", "PROG"]
