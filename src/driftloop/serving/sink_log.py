"""The payload sink's durable log: JSON-line files written before a 2xx, read back on start.

A :class:`Writer` puts whole JSON lines under a store folder and returns only once they are
durable (see "Durability" in :mod:`driftloop.serving.sink`):

* :class:`AppendWriter` (local folders, ``mode="append"``) appends with ``O_APPEND`` to one
  file per folder and process and fsyncs it, and a new file's folders, before returning;
  :meth:`AppendWriter.write_batch` does that for a whole group commit
  (:mod:`driftloop.serving.sink_commit`), all or nothing.
* :class:`ObjectWriter` (any store, ``mode="object"``) writes one atomic object per write,
  named after it, so a retried write replaces the same object.

:func:`read_docs` and :func:`read_event_ids` read those files back when the sink starts,
skipping the torn last line a crash may leave. The files are their own module because they
know nothing of CloudEvents or pairing: they move bytes to disk and back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import socket
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from driftloop.data.storage import LocalStore, Store
from driftloop.errors import StoreError
from driftloop.serving.sink_events import KEY_HEX, Event

log = logging.getLogger(__name__)
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
    """Append to one file per folder and process, fsync'd before returning (local stores).

    Thread-safe: one I/O lock serialises :meth:`write`, :meth:`write_batch` and
    :meth:`close`, so a group commit's flush (:mod:`driftloop.serving.sink_commit`) and a
    compaction never share a descriptor being closed. A failed write or fsync cuts the
    file back to what it held before (``ftruncate`` + fsync): a half-written line would
    otherwise glue itself to the next acknowledged one and make both unreadable.

    Attributes:
        fsync: The fsync of data files (``os.fsync``); tests replace it to count, slow or
            fail the durable step. New folders are fsync'd with ``os.fsync`` directly.
        fsyncs: Data-file fsyncs done so far.
    """

    MAX_OPEN = 16

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.file_name = self._new_name()
        self._fds: dict[str, int] = {}
        self._sizes: dict[str, int] = {}  # bytes each open file holds (we are its writer)
        self._io = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.fsync: Callable[[int], None] = os.fsync
        self.fsyncs = 0

    @staticmethod
    def _new_name() -> str:
        host = _SAFE.sub("-", socket.gethostname())[:40] or "host"
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        return f"sink-{host}-{os.getpid()}-{stamp}-{uuid.uuid4().hex[:6]}.jsonl"

    def _open(self, folder: str) -> int:
        fd = self._fds.pop(folder, None)
        if fd is None:
            path = self.store.path(f"{folder}/{self.file_name}")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._sizes[folder] = os.fstat(fd).st_size
            for parent in (path.parent, path.parent.parent):  # the new entries are durable
                dir_fd = os.open(parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            while len(self._fds) >= self.MAX_OPEN:
                evicted = next(iter(self._fds))
                os.close(self._fds.pop(evicted))
                self._sizes.pop(evicted, None)
        self._fds[folder] = fd  # most recently used last
        return fd

    def _append(self, folder: str, data: bytes) -> tuple[int, int]:
        """Append ``data`` to ``folder``'s file (no fsync); return ``(fd, size before)``."""
        fd = self._open(folder)
        before = self._sizes[folder]
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        self._sizes[folder] = before + len(data)
        return fd, before

    def _sync(self, fds: list[int]) -> None:
        """Make every descriptor durable, several at once (each fsync releases the GIL)."""
        if len(fds) == 1:
            self.fsync(fds[0])
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fsync")
            for future in [self._pool.submit(self.fsync, fd) for fd in fds]:
                future.result()
        self.fsyncs += len(fds)

    def _cut_back(self, sizes: dict[str, int]) -> None:
        """Truncate each folder's file to ``sizes[folder]`` bytes (best effort, logged).

        When even that fails the file is left as it is and this writer moves to new file
        names, so nothing more is appended after a tail that may be torn.
        """
        for folder, size in sizes.items():
            fd = self._fds.get(folder)
            try:
                if fd is None:
                    raise OSError(f"{folder}: not open")
                os.ftruncate(fd, size)
                os.fsync(fd)
                self._sizes[folder] = size
            except OSError as exc:
                log.error("sink: cannot cut %s/%s back to %d bytes after a failed write "
                          "(%s); writing to new files from now on", folder, self.file_name,
                          size, exc)
                self._close_all()
                self.file_name = self._new_name()
                return

    def write(self, folder: str, data: bytes, name: str) -> str:  # noqa: D102
        self.write_batch({folder: data})
        return f"{folder}/{self.file_name}"

    def write_batch(self, parts: dict[str, bytes]) -> None:
        """Append each folder's bytes to its file, then fsync the files (in parallel).

        All or nothing: when a write or an fsync fails, every file of the batch is cut
        back to its size before it, and the error is raised (the whole batch is refused).
        """
        with self._io:
            before: dict[str, int] = {}
            items = list(parts.items())
            step = self.MAX_OPEN // 2  # a chunk's descriptors stay open until fsync'd
            try:
                for start in range(0, len(items), step):
                    fds = []
                    for folder, data in items[start:start + step]:
                        before.setdefault(folder, self._size_of(folder))
                        fds.append(self._append(folder, data)[0])
                    self._sync(fds)
            except Exception:  # whatever failed, nothing of the batch stays
                self._cut_back(before)
                raise

    def _size_of(self, folder: str) -> int:
        self._open(folder)
        return self._sizes[folder]

    def key(self, folder: str) -> str:
        """The key :meth:`write` or :meth:`write_batch` writes under ``folder``."""
        return f"{folder}/{self.file_name}"

    def _close_all(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._sizes.clear()

    def close(self) -> None:  # noqa: D102
        with self._io:
            self._close_all()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None


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


#: How a pending-journal line (``Event.to_line``) carries its event key: after ``data``
#: and before ``source``. Inside a JSON string the quotes would be escaped, so this cannot
#: match within ``data``'s or ``source``'s text.
_JOURNAL_KEY = b'"key":"'
_AFTER_KEY = b'","source":"'


#: Bytes read at a time from a local file on start (the lines are parsed chunk by chunk,
#: so a start's memory does not grow with the largest file: 166 MB per 500,000 records).
READ_CHUNK = 8 << 20


def _lines(store: Store, key: str, offset: int) -> Iterator[bytes]:
    """The lines of ``key`` from byte ``offset`` on; a local file is read in chunks."""
    if not isinstance(store, LocalStore):
        yield from store.read_bytes(key)[offset:].splitlines()
        return
    path = store.path(key)
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            rest = b""
            while chunk := fh.read(READ_CHUNK):
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                yield from data[:cut].splitlines()
            if rest:
                yield from rest.splitlines()
    except FileNotFoundError:
        raise StoreError(f"{path}: object does not exist") from None
    except OSError as exc:
        raise StoreError(f"{path}: cannot read ({exc.strerror})") from exc


def read_docs(store: Store, key: str, on_torn: Callable[[], None],
              skip: Container[str] = (), *, offset: int = 0) -> list[dict[str, Any]]:
    """Return the JSON objects of the lines of ``key``; call ``on_torn`` per unreadable line.

    Args:
        store: The store.
        key: The file to read.
        on_torn: Called once per line that does not parse.
        skip: Event keys whose journal lines are passed over unparsed (recovery: the
            events already stored, most of a day's journal; parsing them was half of a
            restart's time).
        offset: Read from this byte on (a line's start: what a snapshot covers is skipped).
    """
    out = []
    for line in _lines(store, key, offset):
        if not line.strip():
            continue
        if skip:
            at = line.rfind(_JOURNAL_KEY) + len(_JOURNAL_KEY)
            end = at + KEY_HEX
            if (at >= len(_JOURNAL_KEY) and line[end:end + len(_AFTER_KEY)] == _AFTER_KEY
                    and line[at:end].decode("ascii", "replace") in skip):
                continue
        try:
            doc = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            on_torn()  # a torn last line after a crash
            continue
        if isinstance(doc, dict):
            out.append(doc)
    return out


def compact_journal(writer: AppendWriter, store: Store, folder: str, pending: Iterable[Event],
                    write: Callable[[str, bytes, str], str]) -> None:
    """Rewrite the pending events into the writer's file in ``folder``; delete older files.

    Journal lines are never removed from an append file, so without this the journal
    would grow with every request ever logged. New journal first (``write`` fsyncs it),
    deletions after: a crash in between leaves duplicate journal lines, which recovery
    merges. ``folder`` is a day's folder of the journal; every other file under the
    journal's root goes.
    """
    current = f"{folder}/{writer.file_name}"
    moved = [e for e in pending if e.journal_key != current]
    if moved:
        write(folder, b"".join(e.to_line() for e in moved), "compact")
        for event in moved:
            event.journal_key = current
    writer.close()  # no descriptor may point at a file deleted below
    for key in store.list(folder.rsplit("/dt=", 1)[0]):
        if key != current:
            store.delete(key)


def read_journal(store: Store, prefix: str, on_torn: Callable[[], None],
                 skip: Container[str] = ()) -> list[Event]:
    """The events journaled under ``prefix`` (all days), oldest arrival first.

    Lines that do not parse or are not events are passed over (``on_torn`` counts the
    first kind); ``skip`` as in :func:`read_docs`.
    """
    restored = []
    for key in store.list(prefix):
        for doc in read_docs(store, key, on_torn, skip):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                restored.append(Event.from_doc(doc, key))
    return sorted(restored, key=lambda e: e.received)


def read_event_ids(store: Store, key: str, on_torn: Callable[[], None], *,
                   offset: int = 0) -> Iterator[tuple[str, str, list[str]]]:
    """Yield ``(event_id, logged, event keys)`` of each record line of ``key``.

    The sink writes ``"event_id":...,"logged":...,"event_keys":...`` next to each other;
    a regex reads them ~4x faster than parsing whole lines. Records written before events
    had keys have none (an empty list). Other lines (batch drops, hand-written files)
    fall back to JSON; ``on_torn`` is called for each of them that does not parse. Reading
    starts at byte ``offset`` (a line's start).
    """
    for line in _lines(store, key, offset):
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
    "compact_journal",
    "encode_lines",
    "event_name",
    "read_docs",
    "read_event_ids",
    "read_journal",
]
