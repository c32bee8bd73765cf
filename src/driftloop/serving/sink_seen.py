"""What the sink has written, remembered for deduplication, and its snapshot for restarts.

:class:`SeenEvents` holds the event keys the sink has written or quarantined (the dedup
set) and the ``Ce-Id`` s it has given to records (a reused one tags new row ids), each
with the day ordinal of its partition, oldest first and bounded by ``max_seen``.

On start the sink rebuilds them from the records of the dedup window
(:func:`recover_seen`). Read in full, that costs ~0.6 s per 100,000 record lines on these
VMs and grows with the day's volume, and while the sink is down KServe's logger drops
events (it never retries, ``pkg/logger/worker.go``). So the sink writes a snapshot,
``sink/seen/snapshot.json``: the remembered keys and ids with their ordinals, and every
record and quarantine file of the window it covers (a local file up to its size). A
restart loads the snapshot and reads only what the files gained after it (new files
whole), so its time is bounded by ``max_seen``, not by the window's volume
(``benchmarks/sink_restart.py`` measures both).

Why this is exact: a snapshot is taken with the lock held and every queued line fsync'd,
so the memory it copies is what those bytes hold. Files are only ever appended to; a
failed group commit cuts a file back to its size before that batch, never below a
snapshot's size. Where that does not hold -- a covered file of the window is gone or
shorter (removed or rewritten by hand), or the snapshot cannot be read -- the sink says
so in its log and reads the window in full, as without a snapshot. Keys older than the
window are dropped on load, as a full read would never see them.

Object stores (``gs://``, the cluster's store) hold one object per event, written once
under a name from the event's key (a retried write replaces it with the same records):
there a covered object is not read at all, where a full read GETs every object of the
window, one request each. The window is still listed on start (to find the new ones)
and before each snapshot, outside the lock.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from driftloop.data.storage import LocalStore, Store
from driftloop.errors import DriftloopError
from driftloop.serving.sink_events import REQUEST, RESPONSE, legacy_key
from driftloop.serving.sink_log import read_docs, read_event_ids

log = logging.getLogger("driftloop.serving.sink")

SNAPSHOT_KEY = "sink/seen/snapshot.json"
SNAPSHOT_VERSION = 1
QUARANTINE_PREFIX = "sink/quarantine"
_LEGACY = {"pair": (REQUEST, RESPONSE), "request_only": (REQUEST,), "response_only": (RESPONSE,)}
_ORDINALS: dict[int, int] = {}


def utc_now(clock: Callable[[], float]) -> dt.datetime:
    """``clock()`` (epoch seconds) as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(clock(), dt.UTC)


def partition_day(epoch: float) -> str:
    """The partition day (UTC) of a receive time."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).date().isoformat()


def _interned(ordinal: int) -> int:
    return _ORDINALS.setdefault(ordinal, ordinal)


def day_ordinal(epoch: float) -> int:
    """The UTC day ordinal of ``epoch``, one int object per day (the dedup maps hold many)."""
    return _interned(dt.datetime.fromtimestamp(epoch, dt.UTC).date().toordinal())


class SeenEvents:
    """Event keys written and ``Ce-Id`` s used, each -> day ordinal, oldest first, bounded.

    ``key in seen`` asks for an event key, so the object can be passed where a container
    of keys is wanted (the journal's skip set).

    Forgetting the oldest must be O(1): ``del d[next(iter(d))]`` on a plain dict walks
    over every entry deleted since the dict's last resize, so a sink past ``max_seen``
    slowed down with each event, and so did a start whose window held more keys than the
    bound (measured: 400,000 keys into a bound of 200,000 took 11.2 s that way, 0.3 s
    here). So each dict has a deque of its keys in insertion order (8 bytes per key) and
    the oldest is popped from it. Not an ``OrderedDict``: copying or walking one is 15-40x
    slower than a dict (0.3-0.7 s per million keys), and a snapshot copies under the lock.

    Args:
        max_seen: Most keys, and most ids, kept; beyond, the oldest are forgotten.
    """

    def __init__(self, max_seen: int) -> None:
        self.max_seen = max_seen
        self.keys: dict[str, int] = {}
        self.ids: dict[str, int] = {}
        self._key_order: deque[str] = deque()
        self._id_order: deque[str] = deque()

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def remember(self, key: str, ordinal: int) -> None:
        """Remember an event key as written, forgetting the oldest beyond the bound."""
        _put(self.keys, self._key_order, key, ordinal, self.max_seen)

    def remember_id(self, ce_id: str, ordinal: int) -> None:
        """Remember a ``Ce-Id`` as given to records, forgetting the oldest beyond the bound."""
        _put(self.ids, self._id_order, ce_id, ordinal, self.max_seen)

    def has_id(self, ce_id: str) -> bool:
        """Whether records already carry this ``Ce-Id``."""
        return ce_id in self.ids

    def prune(self, oldest: int) -> None:
        """Forget what is older than the day ordinal ``oldest`` (left the window)."""
        self.keys = {k: v for k, v in self.keys.items() if v >= oldest}
        self.ids = {k: v for k, v in self.ids.items() if v >= oldest}
        self._reorder()

    def clear(self) -> None:
        """Forget everything (before the state is rebuilt from the store)."""
        self.keys.clear()
        self.ids.clear()
        self._reorder()

    def copy(self) -> SeenEvents:
        """A copy to encode outside the lock."""
        other = SeenEvents(self.max_seen)  # no order deques: a copy is only read
        other.keys = dict(self.keys)
        other.ids = dict(self.ids)
        return other

    def encode(self, files: dict[str, int], written: dt.datetime) -> bytes:
        """The snapshot document of this state, covering ``files`` up to their sizes.

        Keys and ids go in runs of one ordinal, in order, so that order (which the bound
        forgets by) and ordinals survive; event keys are hex, so a run is one string.
        """
        doc = {"version": SNAPSHOT_VERSION, "written": written.isoformat(), "files": files,
               "keys": [[o, " ".join(run)] for o, run in _runs(self.keys)],
               "ids": [[o, run] for o, run in _runs(self.ids)]}
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    def load(self, doc: Snapshot, oldest: int) -> None:
        """Take the snapshot's keys and ids of ordinal ``oldest`` or later, in order."""
        for ordinal, run in doc.keys:
            if ordinal >= oldest:
                self.keys.update(dict.fromkeys(run.split(), _interned(ordinal)))
        for ordinal, ids in doc.ids:
            if ordinal >= oldest:
                self.ids.update(dict.fromkeys(ids, _interned(ordinal)))
        self._trim()

    def _trim(self) -> None:
        for kept in (self.keys, self.ids):
            extra = len(kept) - self.max_seen
            if extra > 0:
                for key in list(itertools.islice(kept, extra)):
                    del kept[key]
        self._reorder()

    def _reorder(self) -> None:
        """Rebuild the order deques from the dicts (their order is insertion order)."""
        self._key_order = deque(self.keys)
        self._id_order = deque(self.ids)


def _put(kept: dict[str, int], order: deque[str], key: str, ordinal: int,
         bound: int) -> None:
    """``kept[key] = ordinal``; a new key goes last in ``order``, the first beyond ``bound``."""
    if key not in kept:
        order.append(key)
        if len(order) > bound:
            del kept[order.popleft()]
    kept[key] = ordinal


def _runs(kept: dict[str, int]) -> Iterator[tuple[int, list[str]]]:
    run: list[str] = []
    current: int | None = None
    for key, ordinal in kept.items():
        if ordinal != current and run:
            yield current, run  # type: ignore[misc]
            run = []
        current = ordinal
        run.append(key)
    if run:
        yield current, run  # type: ignore[misc]


@dataclass(frozen=True)
class Snapshot:
    """A decoded snapshot: the bytes of each file it covers, the runs of keys and ids."""

    files: dict[str, int]
    keys: list[tuple[int, str]]
    ids: list[tuple[int, list[str]]]


def decode_snapshot(data: bytes) -> Snapshot:
    """Parse a snapshot document.

    Raises:
        ValueError: Not a snapshot of this version; the message says what is wrong.
    """
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"version must be {SNAPSHOT_VERSION}")
    files, keys, ids = doc.get("files"), doc.get("keys"), doc.get("ids")
    if not (isinstance(files, dict) and all(isinstance(v, int) for v in files.values())
            and isinstance(keys, list) and isinstance(ids, list)
            and all(isinstance(o, int) and isinstance(r, str) for o, r in keys)
            and all(isinstance(o, int) and isinstance(r, list) for o, r in ids)):
        raise ValueError("files, keys or ids of the wrong shape")
    return Snapshot(files, [(o, r) for o, r in keys], [(o, r) for o, r in ids])


def _day_of(key: str) -> str:
    return key.split("/dt=", 1)[1][:10] if "/dt=" in key else ""


def _size(store: LocalStore, key: str) -> int | None:
    try:
        return os.stat(store.path(key)).st_size
    except FileNotFoundError:
        return None


def window_files(store: Store, days: Iterable[dt.date]) -> list[tuple[int, str, str]]:
    """``(day ordinal, key, kind)`` of every record and quarantine file of the window."""
    out: list[tuple[int, str, str]] = []
    for day in days:
        for prefix, kind in (("requests", "records"), (QUARANTINE_PREFIX, "quarantine")):
            out.extend((_interned(day.toordinal()), key, kind)
                       for key in store.list(f"{prefix}/dt={day.isoformat()}"))
    return out


def covered_files(store: Store, days: Iterable[dt.date]) -> dict[str, int]:
    """What a snapshot taken now covers: every record and quarantine file of the window.

    With its size for a local file (appended to, so a start reads on from there); 0 for
    an object (one per event, written once under a name from the event's key: a retried
    write replaces it with the same records), which a start then does not read at all.
    """
    out = {}
    for _, key, _ in window_files(store, days):
        if not isinstance(store, LocalStore):
            out[key] = 0
        elif (size := _size(store, key)) is not None:
            out[key] = size
    return out


def list_objects(store: Store, days: Iterable[dt.date]) -> dict[str, int] | None:
    """:func:`covered_files` of an object store, or None (logged) when listing fails.

    Taken before the sink's lock: a listing under it would hold every event up. An object
    written after the listing is only read again at the next start.
    """
    try:
        return covered_files(store, days)
    except (OSError, DriftloopError) as exc:
        log.warning("sink: listing the window for a snapshot failed: %s", exc)
        return None


def _usable(store: Store, doc: Snapshot, days: set[str], listed: set[str]) -> str | None:
    """Why the snapshot cannot be used (a covered file of the window changed), or None."""
    for key, covered in doc.files.items():
        if _day_of(key) not in days:
            continue  # out of the window: its keys are dropped on load anyway
        if key not in listed:
            return f"{key} is gone"
        size = _size(store, key) if isinstance(store, LocalStore) else covered
        if size is None or size < covered:
            return f"{key} is shorter ({size} bytes) than the snapshot covers ({covered})"
    return None


class SnapshotSchedule:
    """When the sink takes a snapshot: every ``interval`` seconds, if anything was written.

    ``writes`` is any value that changes with every record or quarantine write (the
    sink's counts of both).

    Args:
        interval: Seconds between snapshots; 0: only at close.
    """

    def __init__(self, interval: float) -> None:
        if interval < 0:
            raise ValueError("snapshot_interval >= 0 required")
        self.interval = interval
        self.at = -math.inf
        self.mark: object = None

    def recovered(self, now: float, writes: object, *, read: int) -> None:
        """After a start: a state read (partly) from the files is due at the next sweep."""
        self.at, self.mark = (-math.inf, None) if read else (now, writes)

    def due(self, now: float) -> bool:
        """Whether a periodic snapshot is due (:meth:`changed` decides if it is needed)."""
        return bool(self.interval) and now - self.at >= self.interval

    def changed(self, writes: object) -> bool:
        """Whether something was written since the last snapshot."""
        return writes != self.mark

    def taken(self, now: float, writes: object) -> None:
        """A snapshot of this state was taken."""
        self.at, self.mark = now, writes

    def failed(self) -> None:
        """Its write failed: the next due one is taken whatever was written."""
        self.mark = None


def write_snapshot(store: Store, seen: SeenEvents, files: dict[str, int],
                   now: dt.datetime) -> bool:
    """Write ``seen`` as the snapshot covering ``files`` (atomically); False on failure.

    A failure is logged and harmless: the next start reads more of the files.
    """
    try:
        store.write_bytes(SNAPSHOT_KEY, seen.encode(files, now))
    except (OSError, DriftloopError) as exc:
        log.warning("sink: writing the snapshot %s failed: %s", SNAPSHOT_KEY, exc)
        return False
    return True


@dataclass(frozen=True)
class SeenRecovery:
    """How the seen state was rebuilt on start.

    Attributes:
        snapshot: Whether a snapshot was loaded.
        ignored: Why a snapshot present was not used (None when used or absent).
        files_read: Record and quarantine files (or objects) read, at least partly: those
            a snapshot did not cover whole.
        bytes_read: Bytes of local files read after the snapshot (all without one).
    """

    snapshot: bool
    ignored: str | None
    files_read: int
    bytes_read: int


def _load(store: Store, seen: SeenEvents, days: list[dt.date],
          listed: set[str]) -> tuple[dict[str, int] | None, str | None]:
    """Load a usable snapshot into ``seen``: (the files it covers, why it was not used)."""
    try:
        if not store.exists(SNAPSHOT_KEY):
            return None, None
        doc = decode_snapshot(store.read_bytes(SNAPSHOT_KEY))
        ignored = _usable(store, doc, {d.isoformat() for d in days}, listed)
    except (ValueError, DriftloopError, OSError) as exc:
        ignored = f"unreadable: {exc}"
    if ignored is not None:
        log.warning("sink: snapshot %s not used (%s); reading the whole dedup window",
                    SNAPSHOT_KEY, ignored)
        return None, ignored
    seen.load(doc, days[0].toordinal())
    return doc.files, None


def recover_seen(store: Store, seen: SeenEvents, days: list[dt.date],
                 on_torn: Callable[[], None]) -> SeenRecovery:
    """Rebuild ``seen`` from the window's records and quarantine, after a snapshot.

    Args:
        store: The sink's store (a local folder or objects).
        seen: Filled in place (expected empty).
        days: The dedup window, oldest first.
        on_torn: Called once per line that does not parse.
    """
    files = window_files(store, days)
    covered, ignored = _load(store, seen, days, {key for _, key, _ in files})
    local = isinstance(store, LocalStore)
    read = read_bytes = 0
    for ordinal, key, kind in files:
        offset = (covered or {}).get(key)
        if offset is not None and not local:
            continue  # an object covered: never changed since
        offset = offset or 0
        if local:
            size = _size(store, key) or 0  # type: ignore[arg-type]
            if size <= offset:
                continue
            read_bytes += size - offset
        read += 1
        if kind == "quarantine":
            for doc in read_docs(store, key, on_torn, offset=offset):
                if isinstance(doc.get("event_key"), str):
                    seen.remember(doc["event_key"], ordinal)
            continue
        for ce_id, logged, keys in read_event_ids(store, key, on_torn, offset=offset):
            seen.remember_id(ce_id, ordinal)
            # Records written before events had keys: the keys that version's journal
            # lines are given (Event.from_doc), so those resolve too.
            for key_ in keys or [legacy_key(ce_id, side) for side in _LEGACY.get(logged, ())]:
                seen.remember(key_, ordinal)
    return SeenRecovery(covered is not None, ignored, read, read_bytes)


__all__ = [
    "QUARANTINE_PREFIX",
    "SNAPSHOT_KEY",
    "SeenEvents",
    "SeenRecovery",
    "Snapshot",
    "SnapshotSchedule",
    "covered_files",
    "day_ordinal",
    "decode_snapshot",
    "list_objects",
    "partition_day",
    "recover_seen",
    "utc_now",
    "window_files",
    "write_snapshot",
]
