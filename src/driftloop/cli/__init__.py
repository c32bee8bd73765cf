"""The ``driftloop`` command: one subcommand per step over store paths/URIs.

Results go to stdout as JSON (or to ``--output FILE``); errors are one line on stderr
with a non-zero exit code.

:func:`main` (the ``driftloop`` console script, also ``python -m driftloop.cli``) parses
the arguments with :func:`driftloop.cli.parser.build_parser` and runs the subcommand's
function from :mod:`driftloop.cli.commands`, turning a :class:`DriftloopError` or an
``OSError`` into that one line and its exit code.

Logs: ``--log-format text|json`` (else ``$DRIFTLOOP_LOG_FORMAT``) sends every record of
INFO and up through :func:`driftloop.logs.configure_logging`, the in-process gateway and
sink of ``driftloop demo`` included, and passes the format on to the processes the
command starts (``kfp.local`` tasks) in ``DRIFTLOOP_LOG_FORMAT``. Without either, logging
is left as Python has it: warnings, as plain text. In JSON mode the error line is a JSON
record too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

from driftloop.cli.parser import build_parser
from driftloop.data.storage import describe_os_error
from driftloop.errors import DriftloopError, StoreError
from driftloop.logs import ENV_VAR, configure_logging, report_error, resolve_format

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one subcommand; a DriftloopError or OSError is one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        fmt = resolve_format(args.log_format)
    except DriftloopError as exc:
        print(f"driftloop: error: {exc}", file=sys.stderr)
        return exc.exit_code
    chosen = args.log_format is not None or bool(os.environ.get(ENV_VAR, "").strip())
    with _logging(fmt if chosen else None):
        return _run(args)


@contextlib.contextmanager
def _logging(fmt: str | None) -> Iterator[None]:
    """Install ``fmt`` for the command and its child processes; undo both afterwards."""
    if fmt is None:
        yield
        return
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = fmt  # kfp.local tasks inherit it: their steps log alike
    try:
        with configure_logging(fmt):
            yield
    finally:  # main() may be called in a process that goes on (tests, notebooks)
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except DriftloopError as exc:
        report_error(f"driftloop {args.command}: error: {exc}", logger="driftloop.cli")
        return exc.exit_code
    except OSError as exc:  # a store or output the OS refuses: read-only, no space, ...
        root = getattr(args, "store", None) or getattr(args, "out", None)
        report_error(f"driftloop {args.command}: error: {describe_os_error(exc, root)}",
                     logger="driftloop.cli")
        return StoreError.exit_code
