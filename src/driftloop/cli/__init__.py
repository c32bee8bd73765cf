"""The ``driftloop`` command: one subcommand per step over store paths/URIs.

Results go to stdout as JSON (or to ``--output FILE``); errors are one line on stderr
with a non-zero exit code.

:func:`main` (the ``driftloop`` console script, also ``python -m driftloop.cli``) parses
the arguments with :func:`driftloop.cli.parser.build_parser` and runs the subcommand's
function from :mod:`driftloop.cli.commands`, turning a :class:`DriftloopError` or an
``OSError`` into that one line and its exit code.
"""

from __future__ import annotations

import sys

from driftloop.cli.parser import build_parser
from driftloop.data.storage import describe_os_error
from driftloop.errors import DriftloopError, StoreError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one subcommand; a DriftloopError or OSError is one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DriftloopError as exc:
        print(f"driftloop {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a store or output the OS refuses: read-only, no space, ...
        root = getattr(args, "store", None) or getattr(args, "out", None)
        print(f"driftloop {args.command}: error: {describe_os_error(exc, root)}",
              file=sys.stderr)
        return StoreError.exit_code
