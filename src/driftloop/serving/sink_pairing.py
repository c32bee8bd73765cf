"""The payload sink's state: pairing, deduplication, the pending journal and recovery.

:class:`PayloadSink` is what the HTTP app (:mod:`driftloop.serving.sink`) calls for each
body. It pairs a logged request with its response, writes them (or a lone side after
``pending_ttl``) as records, journals the first event of a pair under ``sink/pending/``,
remembers which events it has written so a retry is stored once, and rebuilds all of that
from the store when it starts (the rules are in :mod:`driftloop.serving.sink`, "Unpaired
events" and "Idempotence"). It is its own module because it is the one place holding
mutable state and a lock; the bodies it checks (:mod:`driftloop.serving.sink_events`,
:mod:`driftloop.serving.sink_bodies`) and the files it writes
(:mod:`driftloop.serving.sink_log`) are stateless beside it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from driftloop.data.storage import LocalStore, Store
from driftloop.errors import DriftloopError
from driftloop.serving.sink_bodies import SinkError, parse_feedback
from driftloop.serving.sink_events import (
    REQUEST,
    RESPONSE,
    Event,
    build_records,
    parse_cloudevent,
)
from driftloop.serving.sink_log import (
    AppendWriter,
    ObjectWriter,
    Writer,
    encode_lines,
    event_name,
    read_docs,
    read_event_ids,
)

_BIT = {REQUEST: 1, RESPONSE: 2}
BOTH = 3
PENDING_PREFIX = "sink/pending"


def _utc_now(clock: Callable[[], float]) -> dt.datetime:
    return dt.datetime.fromtimestamp(clock(), dt.UTC)


def _day(epoch: float) -> str:
    """The partition day (UTC) of a receive time."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).date().isoformat()


@dataclass
class SinkStats:
    """What the sink did since it started (also exported as Prometheus metrics)."""

    stored: int = 0
    pending: int = 0
    duplicates: int = 0
    rejected: int = 0
    records: int = 0
    lone_requests: int = 0
    lone_responses: int = 0
    feedback: int = 0
    recovered_pending: int = 0
    recovered_ids: int = 0
    unreadable_lines: int = 0


class PayloadSink:
    """Pairs logged requests and responses and writes them, with feedback, into a store.

    Thread-safe: one lock serialises the state and the writes (one fsync per event).

    Args:
        store: The store (``requests/``, ``feedback/`` and ``sink/pending/`` go here).
        mode: ``append`` (local folders), ``object`` (any store) or ``auto``.
        pending_ttl: Seconds an unpaired event waits for its partner.
        max_pending: Most unpaired events kept; beyond, the oldest is written alone.
        dedup_days: Partitions (days back from today, plus today and tomorrow) scanned on
            start to rebuild the seen event ids; ids older than that are forgotten.
        max_seen: Most event ids remembered for deduplication (oldest forgotten first;
            about 125 bytes each).
        labels: When given, feedback labels must be one of these.
        clock: Time source (epoch seconds), for tests.
    """

    def __init__(self, store: Store, *, mode: str = "auto", pending_ttl: float = 60.0,
                 max_pending: int = 10_000, dedup_days: int = 2, max_seen: int = 1_000_000,
                 labels: Sequence[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if mode == "auto":
            mode = "append" if isinstance(store, LocalStore) else "object"
        if mode == "append" and not isinstance(store, LocalStore):
            raise ValueError("mode 'append' needs a local folder store; use 'object'")
        if mode not in ("append", "object"):
            raise ValueError(f"mode {mode!r}: must be auto, append or object")
        if pending_ttl <= 0 or max_pending < 1 or dedup_days < 0 or max_seen < 1:
            raise ValueError("pending_ttl > 0, max_pending >= 1, dedup_days >= 0 and "
                             "max_seen >= 1 required")
        self.store = store
        self.mode = mode
        self.pending_ttl = pending_ttl
        self.max_pending = max_pending
        self.dedup_days = dedup_days
        self.max_seen = max_seen
        self.labels = tuple(labels) if labels is not None else None
        self.clock = clock
        self.writer: Writer = (AppendWriter(store) if mode == "append"  # type: ignore[arg-type]
                               else ObjectWriter(store))
        self.stats = SinkStats()
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], Event] = {}
        # ce_id -> sides bitmask | day ordinal << 2, oldest first; at most max_seen entries.
        self._done: dict[str, int] = {}
        self._last_prune = 0.0
        self._journal_day = ""
        self.registry = CollectorRegistry()
        self._m_events = Counter("driftloop_sink_events", "CloudEvents by side and outcome.",
                                 ("side", "outcome"), registry=self.registry)
        self._m_records = Counter("driftloop_sink_records", "Records written, by how logged.",
                                  ("logged",), registry=self.registry)
        self._m_feedback = Counter("driftloop_sink_feedback", "Feedback rows written.",
                                   registry=self.registry)
        self._m_rejected = Counter("driftloop_sink_rejected", "Bodies refused, by status.",
                                   ("status",), registry=self.registry)
        self._m_pending = Gauge("driftloop_sink_pending", "Unpaired events waiting.",
                                registry=self.registry)
        self._m_write = Histogram("driftloop_sink_write_seconds", "Durable write latency.",
                                  registry=self.registry,
                                  buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                           0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self._recover()

    # -- start-up -----------------------------------------------------------------------

    def _window(self) -> list[dt.date]:
        today = _utc_now(self.clock).date()
        return [today + dt.timedelta(days=d) for d in range(-self.dedup_days, 2)]

    def _torn_line(self) -> None:
        self.stats.unreadable_lines += 1

    def _recover(self) -> None:
        codes = {"pair": BOTH, "request_only": _BIT[REQUEST], "response_only": _BIT[RESPONSE]}
        for day in self._window():
            for key in self.store.list(f"requests/dt={day.isoformat()}"):
                for ce_id, logged in read_event_ids(self.store, key, self._torn_line):
                    code = codes.get(logged)
                    if code is not None:
                        self._remember(ce_id, code, day.toordinal())
        # Every journal is read, whatever its day: a pending event is never left behind.
        restored: list[Event] = []
        for key in self.store.list(PENDING_PREFIX):
            for doc in read_docs(self.store, key, self._torn_line):
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    restored.append(Event.from_doc(doc, key))
        for event in sorted(restored, key=lambda e: e.received):
            if not self._seen(event.ce_id) & _BIT[event.side]:
                self._pending.setdefault((event.ce_id, event.side), event)
            else:
                with contextlib.suppress(OSError, DriftloopError):
                    self.writer.drop(event.journal_key)  # object mode: resolved, tidy up
        self.stats.recovered_ids = len(self._done)
        self.stats.recovered_pending = len(self._pending)
        self._m_pending.set(len(self._pending))
        self._compact()

    def _compact(self) -> None:
        """Append mode: rewrite the pending events into today's journal, drop older files.

        Journal lines are never removed from an append file, so without this the journal
        would grow with every request ever logged. New journal first (fsync'd), deletions
        after: a crash in between leaves duplicate journal lines, which recovery merges.
        """
        if self.mode != "append":
            return
        self._journal_day = _utc_now(self.clock).date().isoformat()
        folder = f"{PENDING_PREFIX}/dt={self._journal_day}"
        current = f"{folder}/{self.writer.file_name}"  # type: ignore[attr-defined]
        moved = [e for e in self._pending.values() if e.journal_key != current]
        if moved:
            self._write(folder, b"".join(e.to_line() for e in moved), "compact")
            for event in moved:
                event.journal_key = current
        self.writer.close()  # no descriptor may point at a file deleted below
        for key in self.store.list(PENDING_PREFIX):
            if key != current:
                self.store.delete(key)

    # -- events -------------------------------------------------------------------------

    def _write(self, folder: str, data: bytes, name: str) -> str:
        started = time.perf_counter()
        try:
            key = self.writer.write(folder, data, name)
        except OSError as exc:
            raise SinkError(503, f"store write failed ({exc}); nothing was recorded") from exc
        except DriftloopError as exc:
            raise SinkError(503, f"store write failed ({exc}); nothing was recorded") from exc
        self._m_write.observe(time.perf_counter() - started)
        return key

    def _store_records(self, ce_id: str, request: Event | None, response: Event | None) -> int:
        records = build_records(ce_id, request, response)
        day = _day(min(e.received for e in (request, response) if e is not None))
        logged = records[0]["logged"] if records else "pair"
        if records:
            self._write(f"requests/dt={day}", encode_lines(records), event_name(ce_id, logged))
        self._m_records.labels(logged).inc(len(records))
        self.stats.records += len(records)
        if logged == "request_only":
            self.stats.lone_requests += 1
        elif logged == "response_only":
            self.stats.lone_responses += 1
        return len(records)

    def _seen(self, ce_id: str) -> int:
        """The sides of ``ce_id`` already written (bitmask; 0 when none)."""
        return self._done.get(ce_id, 0) & BOTH

    def _remember(self, ce_id: str, mask: int, day_ordinal: int) -> None:
        self._done[ce_id] = self._seen(ce_id) | mask | (day_ordinal << 2)
        while len(self._done) > self.max_seen:
            del self._done[next(iter(self._done))]  # forget the oldest

    def _mark(self, ce_id: str, mask: int, received: float) -> None:
        day = dt.datetime.fromtimestamp(received, dt.UTC).date().toordinal()
        self._remember(ce_id, mask, day)

    def handle_event(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """Check, pair and store one CloudEvent.

        Returns:
            ``{"status": "stored" | "pending" | "duplicate", "records": n}``; returned only
            once everything the status promises is durable.

        Raises:
            SinkError: The event is refused (4xx) or the store failed (503).
        """
        try:
            event = parse_cloudevent(headers, body, self.clock)
        except SinkError as exc:
            self._reject(exc)
            raise
        with self._lock:
            return self._accept(event)

    def _reject(self, exc: SinkError) -> None:
        self.stats.rejected += 1
        self._m_rejected.labels(str(exc.status)).inc()

    def _accept(self, event: Event) -> dict[str, Any]:
        bit = _BIT[event.side]
        other_side = RESPONSE if event.side == REQUEST else REQUEST
        mask = self._seen(event.ce_id)
        if mask & bit or (event.ce_id, event.side) in self._pending:
            self.stats.duplicates += 1
            self._m_events.labels(event.side, "duplicate").inc()
            return {"status": "duplicate", "records": 0}
        if mask:  # the partner was already written alone: so is this one, at once
            n = self._store_records(event.ce_id, event if bit == 1 else None,
                                    event if bit == 2 else None)
            self._mark(event.ce_id, bit, event.received)
            return self._stored(event, n)
        partner = self._pending.get((event.ce_id, other_side))
        if partner is not None:
            request, response = (event, partner) if event.side == REQUEST else (partner, event)
            n = self._store_records(event.ce_id, request, response)
            del self._pending[(event.ce_id, other_side)]
            self._mark(event.ce_id, BOTH, min(request.received, response.received))
            with contextlib.suppress(OSError, DriftloopError):
                self.writer.drop(partner.journal_key)
            self._m_pending.set(len(self._pending))
            return self._stored(event, n)
        event.journal_key = self._write(f"{PENDING_PREFIX}/dt={_day(event.received)}",
                                        event.to_line(),
                                        event_name(event.ce_id, event.side))
        self._pending[(event.ce_id, event.side)] = event
        self.stats.pending += 1
        self._m_events.labels(event.side, "pending").inc()
        while len(self._pending) > self.max_pending:
            self._write_alone(next(iter(self._pending.values())))
        self._m_pending.set(len(self._pending))
        return {"status": "pending", "records": 0}

    def _stored(self, event: Event, n: int) -> dict[str, Any]:
        self.stats.stored += 1
        self._m_events.labels(event.side, "stored").inc()
        return {"status": "stored", "records": n}

    def _write_alone(self, event: Event) -> None:
        self._store_records(event.ce_id, event if event.side == REQUEST else None,
                            event if event.side == RESPONSE else None)
        del self._pending[(event.ce_id, event.side)]
        self._mark(event.ce_id, _BIT[event.side], event.received)
        with contextlib.suppress(OSError, DriftloopError):
            self.writer.drop(event.journal_key)

    def expire(self) -> int:
        """Write alone every pending event older than ``pending_ttl``; return how many."""
        now = self.clock()
        written = 0
        with self._lock:
            for event in list(self._pending.values()):
                if now - event.received < self.pending_ttl:
                    break  # oldest first: the rest are younger
                self._write_alone(event)
                written += 1
            self._m_pending.set(len(self._pending))
            if self.mode == "append" and (
                _utc_now(self.clock).date().isoformat() != self._journal_day
            ):
                self._compact()
            if now - self._last_prune > 3600:
                self._last_prune = now
                oldest = self._window()[0].toordinal()
                self._done = {k: v for k, v in self._done.items() if v >> 2 >= oldest}
        return written

    @property
    def pending_count(self) -> int:
        """Unpaired events waiting in memory."""
        return len(self._pending)

    # -- feedback -----------------------------------------------------------------------

    def handle_feedback(self, body: bytes) -> dict[str, Any]:
        """Check and store feedback rows; return ``{"stored": n}`` once they are durable.

        Raises:
            SinkError: The body is refused (4xx) or the store failed (503).
        """
        try:
            rows = parse_feedback(body, labels=self.labels, now=_utc_now(self.clock))
        except SinkError as exc:
            self._reject(exc)
            raise
        day = _day(self.clock())
        with self._lock:
            self._write(f"feedback/dt={day}", encode_lines(rows), f"fb-{uuid.uuid4().hex}")
            self.stats.feedback += len(rows)
        self._m_feedback.inc(len(rows))
        return {"stored": len(rows)}

    def close(self) -> None:
        """Close open files. Pending events stay journaled for the next start."""
        with self._lock:
            self.writer.close()


__all__ = ["PENDING_PREFIX", "PayloadSink", "SinkStats"]
