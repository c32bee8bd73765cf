"""Log records as plain text (the default) or as one JSON object per line.

Every driftloop process logs through the standard :mod:`logging` module; this module
decides how the records leave it. Two formats:

``text`` (the default, for a terminal)
    ``2026-01-02 10:00:00,123 INFO driftloop.rollout.base: message [run_id=r1 model=m]``.
``json`` (for ELK-style collection: Filebeat / Fluent Bit read one object per line)
    ``{"time": "2026-01-02T10:00:00.123Z", "level": "INFO", "logger": "...",
    "message": "...", "run_id": "r1", "model": "m", "version": "v3"}``: ``time`` is
    ISO-8601 in UTC with milliseconds; ``run_id``, ``model``, ``version`` (and ``step``)
    appear when they are known; fields given with ``extra=`` are added as they are (one
    that would shadow a core key is renamed ``extra_<key>``); uvicorn's access lines add
    ``client``, ``method``, ``path`` and ``status``; an exception becomes a
    one-line ``error`` (``Type: message``) and its ``traceback``, so a record is always
    exactly one line.

The format is chosen explicitly, never guessed from the terminal: the ``--log-format``
flag of ``driftloop`` and of the two services, else the environment variable
``DRIFTLOOP_LOG_FORMAT`` (set to ``json`` in the pipeline image,
``components/Dockerfile``), else ``text``. The variable is read by the entry points
(:func:`resolve_format` in their ``main``) and by the steps when one runs
(:func:`configure_from_env`), never when a module is imported.

What is known about the work in progress (the run, the model, its version) is the *log
context*: :func:`log_context` sets fields for a block of code (a :class:`contextvars`
variable, so concurrent asyncio tasks and nested steps keep their own), and
:func:`set_process_context` sets fields for the whole process (a server's model and
version: its request handlers run in threads and tasks that do not all inherit a
context variable).

Other libraries' loggers
    KServe v0.20.0 (``python/kserve/kserve/logging.py``, ``configure_logging``) gives
    the loggers ``kserve``, ``kserve.trace``, ``uvicorn`` and ``uvicorn.access`` their
    own text handlers with ``propagate: False`` when its ``ModelServer`` starts with
    ``--configure_logging`` (its default, ``python/kserve/kserve/model_server.py``), and
    skips that when ``logging.getLogger("kserve").hasHandlers()`` is already true.
    :func:`configure_logging` therefore sends those loggers to the root handler (handlers
    removed, ``propagate`` on) and installs its handler on the root logger, so KServe's
    own set-up, run later, leaves it alone. KFP 2.17.0's ``kfp/dsl/executor_main.py``
    (``_setup_logging``) calls ``logging.basicConfig`` on stdout before the component
    body runs: the root logger's handlers are replaced, not added to, so no record is
    printed twice. uvicorn 0.54 with ``log_config=None`` (how
    :mod:`driftloop.serving.server` runs it) adds no handler and only sets levels.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import IO, Any

from driftloop.errors import ConfigError

__all__ = [
    "CONTEXT_KEYS", "ENV_VAR", "FORMATS", "JsonFormatter", "LoggingSetup", "TextFormatter",
    "configure_from_env", "configure_logging", "current_context", "json_active",
    "log_context", "parse_format", "report_error", "resolve_format", "set_process_context",
]

#: The formats a flag or the environment may name.
FORMATS = ("text", "json")
#: The environment variable an entry point reads when no flag is given.
ENV_VAR = "DRIFTLOOP_LOG_FORMAT"
#: Context fields in the order a JSON record shows them (after the core keys).
CONTEXT_KEYS = ("run_id", "model", "version", "step")
_CORE_KEYS = ("time", "level", "logger", "message")

#: The loggers KServe v0.20.0's KSERVE_LOG_CONFIG gives their own handlers.
_FOREIGN_LOGGERS = ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access")

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("driftloop_log_context", default=_EMPTY)
_process_context: dict[str, Any] = {}

# The attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}


# -- the context ------------------------------------------------------------------------


def current_context() -> dict[str, Any]:
    """The known context fields: the process's, overlaid by the current block's."""
    merged = {**_process_context, **_context.get()}
    return {k: v for k, v in merged.items() if v is not None and v != ""}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (e.g. ``run_id=``, ``model=``) to every record logged in the block.

    Nested blocks overlay their fields; a field given as None or ``""`` is left as the
    outer block had it. The fields are gone after the block, also when it raises.
    """
    given = {k: v for k, v in fields.items() if v is not None and v != ""}
    token = _context.set(MappingProxyType({**_context.get(), **given}))
    try:
        yield
    finally:
        _context.reset(token)


def set_process_context(**fields: Any) -> None:
    """Set fields for every record of this process (None removes one); for servers."""
    for key, value in fields.items():
        if value is None or value == "":
            _process_context.pop(key, None)
        else:
            _process_context[key] = value


# -- formatters -------------------------------------------------------------------------


# uvicorn adds the message again with ANSI colours: the plain one is enough.
_DROPPED = frozenset({"color_message"})


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items()
            if k not in _RECORD_ATTRS and k not in _DROPPED and not k.startswith("_")}


def _access_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The access line of uvicorn as fields: its args are (client, method, path, http, status).

    The order is uvicorn 0.54's (``protocols/http/h11_impl.py``, ``access_logger.info``).
    """
    args = record.args
    if record.name != "uvicorn.access" or not isinstance(args, tuple) or len(args) != 5:
        return {}
    client, method, path, _, status = args
    return {"client": client, "method": method, "path": path, "status": status}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _utc_time(created: float) -> str:
    stamp = dt.datetime.fromtimestamp(created, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        obj: dict[str, Any] = {
            "time": _utc_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = current_context()
        extras = {**_access_fields(record), **_extras(record)}
        for key in CONTEXT_KEYS:  # an extra= run_id/model/... is more specific
            value = extras.pop(key, context.pop(key, None))
            if value is not None and value != "":
                obj[key] = value
        obj.update(context)
        for key, value in extras.items():
            obj[f"extra_{key}" if key in obj else key] = value
        if record.exc_info and record.exc_info[0] is not None:
            obj.update(_exception_fields(record.exc_info))
        elif record.exc_text:  # formatted by another handler already
            obj["traceback"] = record.exc_text
        if record.stack_info:
            obj["stack"] = record.stack_info
        # default=str: a value json cannot encode (a Path, a datetime) is shown, not lost.
        return json.dumps(obj, default=str, ensure_ascii=False, separators=(",", ":"))


def _exception_fields(exc_info: tuple[Any, ...]) -> dict[str, str]:
    kind, exc, tb = exc_info
    shown = f"{kind.__name__}: {exc}" if str(exc) else kind.__name__
    return {"error": _one_line(shown),
            "traceback": "".join(traceback.format_exception(kind, exc, tb)).rstrip("\n")}


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, then the context as ``[key=value ...]`` if any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as text; a traceback follows on its own lines, as logging shows it."""
        text = super().format(record)
        fields = {**current_context(),
                  **{k: v for k, v in _extras(record).items() if k in CONTEXT_KEYS}}
        if not fields:
            return text
        order = [*(k for k in CONTEXT_KEYS if k in fields),
                 *sorted(k for k in fields if k not in CONTEXT_KEYS)]
        shown = " ".join(f"{k}={fields[k]}" for k in order)
        first, sep, rest = text.partition("\n")  # the context belongs to the message line
        return f"{first} [{shown}]{sep}{rest}"


# -- choosing and installing a format ---------------------------------------------------


def parse_format(value: str, *, source: str = "--log-format") -> str:
    """``value`` as one of :data:`FORMATS` (case and spaces ignored).

    Raises:
        ConfigError: Not a format; the one-line message names ``source`` (the flag or
            the environment variable it came from).
    """
    fmt = value.strip().lower()
    if fmt not in FORMATS:
        raise ConfigError(f"{source}: {value!r} is not a log format (choose text or json)")
    return fmt


def resolve_format(flag: str | None, *, flag_name: str = "--log-format",
                   environ: Mapping[str, str] | None = None) -> str:
    """The format an entry point uses: its flag, else :data:`ENV_VAR`, else ``text``.

    Raises:
        ConfigError: The flag or the variable names no format.
    """
    if flag is not None:
        return parse_format(flag, source=flag_name)
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "")
    return parse_format(value, source=ENV_VAR) if value.strip() else "text"


class LoggingSetup:
    """What :func:`configure_logging` changed; :meth:`restore` (or ``with``) undoes it."""

    def __init__(self, fmt: str, handler: logging.Handler,
                 saved: list[tuple[logging.Logger, list[logging.Handler], bool, int, bool]],
                 captured_warnings: bool = False) -> None:
        self.format = fmt
        self.handler = handler
        self._saved = saved
        self._captured_warnings = captured_warnings

    def restore(self) -> None:
        """Put back the handlers, propagation and levels found before; idempotent."""
        global _active
        for logger, handlers, propagate, level, disabled in reversed(self._saved):
            logger.handlers = handlers
            logger.propagate = propagate
            logger.setLevel(level)
            logger.disabled = disabled
        self._saved = []
        if self._captured_warnings:
            logging.captureWarnings(False)
            self._captured_warnings = False
        if _active is self:
            _active = None

    def __enter__(self) -> LoggingSetup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


_active: LoggingSetup | None = None


def json_active() -> bool:
    """Whether driftloop's JSON handler is installed (entry points report errors through it)."""
    return _active is not None and _active.format == "json"


def report_error(line: str, *, logger: str = "driftloop") -> None:
    """Write an entry point's one-line error to stderr, as a JSON record in JSON mode.

    With JSON on, every line on stderr is JSON (a collector must not meet a stray text
    line); the record's ``message`` is the same line the text mode prints.
    """
    if json_active():
        logging.getLogger(logger).error(line)
    else:
        print(line, file=sys.stderr)


def configure_logging(format: str = "text", level: int | str = "INFO", *,
                      stream: IO[str] | None = None) -> LoggingSetup:
    """Send every record of the process through one handler in ``format``.

    The root logger gets a single stream handler (its previous handlers are set aside,
    e.g. KFP's ``basicConfig``) at ``level``; KServe's and uvicorn's loggers lose any
    handler of their own and propagate to it (module docstring). In JSON mode Python's
    warnings are logged too (``logging.captureWarnings``), so no text line slips out.
    Call it once from an entry point's ``main``; a second call replaces the first.

    Args:
        format: ``text`` or ``json``.
        level: The root logger's level (a name such as ``"info"`` or a number).
        stream: Where the lines go (default: ``sys.stderr``).

    Raises:
        ConfigError: Not a format or not a level.
    """
    global _active
    fmt = parse_format(format, source="format")
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(number, int):
        raise ConfigError(f"log level {level!r}: not a level (debug, info, warning, error)")
    if _active is not None:
        _active.restore()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    saved = [(root, list(root.handlers), root.propagate, root.level, root.disabled)]
    root.handlers = [handler]
    root.setLevel(number)
    for name in _FOREIGN_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate, logger.level,
                      logger.disabled))
        logger.handlers = []
        logger.propagate = True
        # a dictConfig before (uvicorn's, kserve's) may have disabled it or set its level
        logger.disabled = False
        logger.setLevel(logging.NOTSET)
    # A Python warning (a library's DeprecationWarning) is printed on stderr by
    # warnings.showwarning, bypassing logging: in JSON mode it becomes a py.warnings record.
    capture = fmt == "json" and warnings.showwarning is not getattr(logging, "_showwarning", None)
    if capture:
        logging.captureWarnings(True)
    _active = LoggingSetup(fmt, handler, saved, capture)
    return _active


def configure_from_env(level: int | str = "INFO") -> LoggingSetup | None:
    """Install :data:`ENV_VAR`'s format once, for a step running in a KFP container.

    Does nothing when an entry point already configured logging (the ``driftloop`` CLI,
    a server) or when the variable is unset or empty. A value that names no format is
    reported as a warning and ignored: a log setting must not fail a pipeline run.
    """
    if _active is not None:
        return None
    value = os.environ.get(ENV_VAR, "")
    if not value.strip():
        return None
    try:
        fmt = parse_format(value, source=ENV_VAR)
    except ConfigError as exc:
        logging.getLogger(__name__).warning("%s; logging left as it is", exc)
        return None
    return configure_logging(fmt, level)
