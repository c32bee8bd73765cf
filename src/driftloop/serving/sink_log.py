"""The payload sink's durable log: JSON-line files written before a 2xx, read back on start.

A :class:`Writer` puts whole JSON lines under a store folder and returns only once they are
durable (see "Durability" in :mod:`driftloop.serving.sink`):

* :class:`AppendWriter` (local folders, ``mode="append"``) appends with ``O_APPEND`` to one
  file per folder and process and fsyncs it, and a new file's folders, before returning.
* :class:`ObjectWriter` (any store, ``mode="object"``) writes one atomic object per write,
  named after it, so a retried write replaces the same object.

:func:`read_docs` and :func:`read_event_ids` read those files back when the sink starts,
skipping the torn last line a crash may leave. The files are their own module because they
know nothing of CloudEvents or pairing: they move bytes to disk and back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

from driftloop.data.storage import LocalStore, Store

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EVENT_KEYS = re.compile(
    rb'"event_id":"((?:[^"\\]|\\.)*)","logged":"(\w+)"(?:,"event_keys":"([0-9a-f ]*)")?'
)


class Writer(ABC):
    """Durable writes of JSON lines under a store folder."""

    @abstractmethod
    def write(self, folder: str, data: bytes, name: str) -> str:
        """Write ``data`` (whole lines) under ``folder``; return the key written.

        ``name`` identifies the write (used by object stores as the object name).
        Returns only after the data is durable.
        """

    def drop(self, key: str) -> None:  # noqa: B027 - optional hook
        """Forget a pending-journal entry written with :meth:`write` (optional)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release open files."""


class AppendWriter(Writer):
    """Append to one file per folder and process, fsync'd before returning (local stores)."""

    MAX_OPEN = 16

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        host = _SAFE.sub("-", socket.gethostname())[:40] or "host"
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        self.file_name = f"sink-{host}-{os.getpid()}-{stamp}-{uuid.uuid4().hex[:6]}.jsonl"
        self._fds: dict[str, int] = {}

    def _open(self, folder: str) -> int:
        fd = self._fds.pop(folder, None)
        if fd is None:
            path = self.store.path(f"{folder}/{self.file_name}")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            for parent in (path.parent, path.parent.parent):  # the new entries are durable
                dir_fd = os.open(parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            while len(self._fds) >= self.MAX_OPEN:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[folder] = fd  # most recently used last
        return fd

    def write(self, folder: str, data: bytes, name: str) -> str:  # noqa: D102
        fd = self._open(folder)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        return f"{folder}/{self.file_name}"

    def close(self) -> None:  # noqa: D102
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class ObjectWriter(Writer):
    """One atomic object per write, named after the write (any store, e.g. ``gs://``)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def write(self, folder: str, data: bytes, name: str) -> str:  # noqa: D102
        key = f"{folder}/{name}.jsonl"
        self.store.write_bytes(key, data)
        return key

    def drop(self, key: str) -> None:  # noqa: D102
        self.store.delete(key)


def encode_lines(rows: list[dict[str, Any]]) -> bytes:
    """Encode rows as JSON lines (UTF-8, compact, one object a line)."""
    return "".join(
        json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in rows
    ).encode()


def event_name(ce_id: str, tag: str) -> str:
    """The name of an event's write: its id hashed (any text is a safe name), then ``tag``."""
    return f"ev-{hashlib.sha256(ce_id.encode()).hexdigest()[:24]}-{tag}"


def read_docs(store: Store, key: str, on_torn: Callable[[], None]) -> list[dict[str, Any]]:
    """Return the JSON objects of the lines of ``key``; call ``on_torn`` per unreadable line."""
    out = []
    for line in store.read_bytes(key).splitlines():
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            on_torn()  # a torn last line after a crash
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def read_event_ids(store: Store, key: str,
                   on_torn: Callable[[], None]) -> Iterator[tuple[str, str, list[str]]]:
    """Yield ``(event_id, logged, event keys)`` of each record line of ``key``.

    The sink writes ``"event_id":...,"logged":...,"event_keys":...`` next to each other;
    a regex reads them ~4x faster than parsing whole lines. Records written before events
    had keys have none (an empty list). Other lines (batch drops, hand-written files)
    fall back to JSON; ``on_torn`` is called for each of them that does not parse.
    """
    for line in store.read_bytes(key).splitlines():
        found = _EVENT_KEYS.search(line)
        if found is not None:
            raw = found.group(1).decode("utf-8", errors="replace")
            ce_id = json.loads(f'"{raw}"') if "\\" in raw else raw
            keys = found.group(3)
            yield ce_id, found.group(2).decode(), keys.decode().split() if keys else []
            continue
        if b'"event_id"' not in line:
            continue
        try:
            doc = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            on_torn()  # a torn last line after a crash
            continue
        if isinstance(doc, dict) and doc.get("event_id") is not None:
            keys = doc.get("event_keys")
            yield (str(doc["event_id"]), str(doc.get("logged")),
                   keys.split() if isinstance(keys, str) else [])


__all__ = [
    "AppendWriter",
    "ObjectWriter",
    "Writer",
    "encode_lines",
    "event_name",
    "read_docs",
    "read_event_ids",
]
