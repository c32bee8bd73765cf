"""The payload sink's state: pairing, deduplication, the pending journal and recovery.

:class:`PayloadSink` is what the HTTP app (:mod:`driftloop.serving.sink`) calls for each
body. It pairs a logged request with its response, writes them (or a lone side after
``pending_ttl``) as records, journals the first event of a pair under ``sink/pending/``,
remembers which events it has written so a retry is stored once, quarantines the raw
events whose V2 binary bodies cannot be decoded, and rebuilds all of that from the store
when it starts (the rules are in :mod:`driftloop.serving.sink`, "Pairing", "Unpaired
events" and "Idempotence"). It is its own module because it is the one place holding
mutable state and a lock; the bodies it checks (:mod:`driftloop.serving.sink_events`,
:mod:`driftloop.serving.sink_bodies`) and the files it writes
(:mod:`driftloop.serving.sink_log`) are stateless beside it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from driftloop.data.storage import LocalStore, Store
from driftloop.errors import DriftloopError
from driftloop.serving.metrics import Children
from driftloop.serving.sink_bodies import SinkError, parse_feedback
from driftloop.serving.sink_commit import GroupCommit, Receipt
from driftloop.serving.sink_events import (
    REQUEST,
    RESPONSE,
    Event,
    build_records,
    choose_partner,
    parse_cloudevent,
)
from driftloop.serving.sink_log import (
    AppendWriter,
    ObjectWriter,
    Writer,
    compact_journal,
    encode_lines,
    event_name,
    read_journal,
)
from driftloop.serving.sink_quality import (
    DEFAULT_MAX_PREDICTIONS,
    DEFAULT_MAX_VERSIONS,
    DEFAULT_TTL,
    LiveQuality,
    response_model_name,
)
from driftloop.serving.sink_seen import (
    QUARANTINE_PREFIX,
    SeenEvents,
    SnapshotSchedule,
    covered_files,
    day_ordinal,
    list_objects,
    partition_day,
    recover_seen,
    utc_now,
    write_snapshot,
)

log = logging.getLogger(__name__)
PENDING_PREFIX = "sink/pending"
#: Hex digits of an event key that tag the row ids of a reused ``Ce-Id``.
TAG_HEX = 12
#: Group commit (:mod:`driftloop.serving.sink_commit`): most lines per fsync round, and
#: the longest wait for more; the defaults of :class:`driftloop.config.SinkConfig`.
DEFAULT_COMMIT_MAX_BATCH = 512
DEFAULT_COMMIT_MAX_WAIT = 0.002


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
    quarantined: int = 0
    reused_ids: int = 0
    feedback: int = 0
    recovered_pending: int = 0
    recovered_ids: int = 0
    unreadable_lines: int = 0
    #: Record/quarantine files (objects) and local bytes read on start, past the snapshot.
    recovery_files_read: int = 0
    recovery_bytes_read: int = 0
    snapshots: int = 0


class PayloadSink:
    """Pairs logged requests and responses and writes them, with feedback, into a store.

    Thread-safe: one lock serialises the state. In append mode the writes are group
    committed (:mod:`driftloop.serving.sink_commit`): under the lock an event's lines are
    only queued, a committer thread fsyncs each batch, and the answer waits for it
    (:meth:`finish` / :meth:`finish_async`). ``commit_max_batch=1`` writes and fsyncs
    each event under the lock instead (one fsync per event, the old behaviour).

    Args:
        store: The store (``requests/``, ``feedback/`` and ``sink/pending/`` go here).
        mode: ``append`` (local folders), ``object`` (any store) or ``auto``.
        pending_ttl: Seconds an unpaired event waits for its partner.
        max_pending: Most unpaired events kept; beyond, the oldest is written alone.
        dedup_days: Partitions (days back from today, plus today and tomorrow) scanned on
            start to rebuild the seen event keys; keys older than that are forgotten.
        max_seen: Most events remembered for deduplication (oldest forgotten first; about
            180 bytes each, see :mod:`driftloop.serving.sink`).
        labels: When given, feedback labels must be one of these.
        clock: Time source (epoch seconds), for tests.
        feedback_max_predictions: Most logged predictions remembered to join live feedback
            labels to (:mod:`driftloop.serving.sink_quality`: oldest forgotten first).
        feedback_ttl: Seconds a logged prediction is remembered for that join.
        max_versions: Most ``(model_name, model_version)`` pairs with series of their own
            in the live-quality metrics.
        commit_max_batch: Most lines one group-commit fsync round takes; 1: no group
            commit (append mode only; object mode writes one object per event anyway).
        commit_max_wait: Seconds the committer may wait for more lines while other
            events are being handled.
        snapshot_interval: Seconds between snapshots of the seen events
            (:mod:`driftloop.serving.sink_seen`), taken when something was written since
            the last; one is also taken at :meth:`close`. 0: at close only.
    """

    def __init__(self, store: Store, *, mode: str = "auto", pending_ttl: float = 60.0,
                 max_pending: int = 10_000, dedup_days: int = 2, max_seen: int = 1_000_000,
                 labels: Sequence[str] | None = None,
                 clock: Callable[[], float] = time.time,
                 feedback_max_predictions: int = DEFAULT_MAX_PREDICTIONS,
                 feedback_ttl: float = DEFAULT_TTL,
                 max_versions: int = DEFAULT_MAX_VERSIONS,
                 commit_max_batch: int = DEFAULT_COMMIT_MAX_BATCH,
                 commit_max_wait: float = DEFAULT_COMMIT_MAX_WAIT,
                 snapshot_interval: float = 300.0) -> None:
        if mode == "auto":
            mode = "append" if isinstance(store, LocalStore) else "object"
        if mode == "append" and not isinstance(store, LocalStore):
            raise ValueError("mode 'append' needs a local folder store; use 'object'")
        if mode not in ("append", "object"):
            raise ValueError(f"mode {mode!r}: must be auto, append or object")
        if pending_ttl <= 0 or max_pending < 1 or dedup_days < 0 or max_seen < 1:
            raise ValueError("pending_ttl > 0, max_pending >= 1, dedup_days >= 0 and "
                             "max_seen >= 1 required")
        if commit_max_batch < 1 or not 0 <= commit_max_wait <= 1:
            raise ValueError("commit_max_batch >= 1 and 0 <= commit_max_wait <= 1 s required")
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
        # Unpaired events by key, oldest arrival first; and the same events by what pairs
        # them, (Ce-Id, Ce-Source, side), in arrival order.
        self._pending: dict[str, Event] = {}
        self._waiting: dict[tuple[str, str, str], list[Event]] = {}
        # Event keys written (or quarantined), and Ce-Ids given to records (a reused id
        # tags its row ids), each -> day ordinal: the dedup set.
        self._seen = SeenEvents(max_seen)
        self._snapshots = SnapshotSchedule(snapshot_interval)
        self._last_prune = 0.0
        self._journal_day = ""
        self.registry = CollectorRegistry()
        self._count = Children(Counter("driftloop_sink_events", "CloudEvents by side and "
                                       "outcome.", ("side", "outcome"), registry=self.registry))
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
        self._m_batch = Histogram("driftloop_sink_commit_batch_size",
                                  "Lines written per group-commit fsync round.",
                                  registry=self.registry,
                                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        #: Live accuracy, label lag and feedback volume per version (sink_quality).
        self.quality = LiveQuality(self.registry, max_predictions=feedback_max_predictions,
                                   ttl=feedback_ttl, max_versions=max_versions)
        self._after: list[Callable[[], None]] = []
        self._recover()
        self._commit: GroupCommit | None = None
        if mode == "append" and commit_max_batch > 1:
            self._commit = GroupCommit(self.writer,  # type: ignore[arg-type]
                                       max_batch=commit_max_batch, max_wait=commit_max_wait,
                                       on_flush=self._flushed)

    # -- start-up -----------------------------------------------------------------------

    def _window(self) -> list[dt.date]:
        today = utc_now(self.clock).date()
        return [today + dt.timedelta(days=d) for d in range(-self.dedup_days, 2)]

    def _torn_line(self) -> None:
        self.stats.unreadable_lines += 1

    def _recover(self) -> None:
        found = recover_seen(self.store, self._seen, self._window(), self._torn_line)
        self.stats.recovery_files_read = found.files_read
        self.stats.recovery_bytes_read = found.bytes_read
        self._snapshots.recovered(self.clock(), self._writes(), read=found.files_read)
        skip = self._seen if self.mode == "append" else ()  # stored: no parse, no drop
        for event in read_journal(self.store, PENDING_PREFIX, self._torn_line, skip):
            if event.key in self._seen:
                with contextlib.suppress(OSError, DriftloopError):
                    self.writer.drop(event.journal_key)  # object mode: resolved, tidy up
            elif event.key not in self._pending:  # (a compaction crash repeats lines)
                self._add_pending(event)
        self.stats.recovered_ids = len(self._seen)
        self.stats.recovered_pending = len(self._pending)
        self._m_pending.set(len(self._pending))
        self._compact()

    def _compact(self) -> None:
        """Append mode: the pending events into today's journal, older journals deleted."""
        if self.mode == "append":
            self._journal_day = day = utc_now(self.clock).date().isoformat()
            compact_journal(self.writer, self.store, f"{PENDING_PREFIX}/dt={day}",  # type: ignore[arg-type]
                            self._pending.values(), self._write_now)

    # -- events -------------------------------------------------------------------------

    def _flushed(self, lines: int, seconds: float) -> None:
        self._m_write.observe(seconds)
        self._m_batch.observe(lines)

    def _write(self, folder: str, data: bytes, name: str) -> str:
        """Write ``data`` durably: queued for the group commit, else now (lock held)."""
        if self._commit is not None:
            return self._commit.append(folder, data)
        return self._write_now(folder, data, name)

    def _write_now(self, folder: str, data: bytes, name: str) -> str:
        started = time.perf_counter()
        try:
            key = self.writer.write(folder, data, name)
        except OSError as exc:
            raise SinkError(503, f"store write failed ({exc}); nothing was recorded") from exc
        except DriftloopError as exc:
            raise SinkError(503, f"store write failed ({exc}); nothing was recorded") from exc
        self._m_write.observe(time.perf_counter() - started)
        return key

    def _store_records(self, request: Event | None, response: Event | None) -> int:
        base = request or response
        assert base is not None
        ce_id = base.ce_id
        # A Ce-Id already given to records (a client reusing it, or the late partner of a
        # side written alone) tags the new rows' fallback ids, so they stay unique.
        tag = base.key[:TAG_HEX] if self._seen.has_id(ce_id) else None
        records = build_records(ce_id, request, response, tag)
        received = min(e.received for e in (request, response) if e is not None)
        logged = records[0]["logged"] if records else "pair"
        if records:
            keys = " ".join(e.key for e in (request, response) if e is not None)
            self._write(f"requests/dt={partition_day(received)}", encode_lines(records),
                        event_name(keys, logged))
        self._seen.remember_id(ce_id, day_ordinal(received))
        # after the write is durable: only a durable prediction can be joined to a label
        model = response_model_name(response.data if response is not None else None,
                                    base.ext)
        self._after.append(lambda: self.quality.logged(records, model, self.clock()))
        if tag is not None:
            self.stats.reused_ids += 1
        self._m_records.labels(logged).inc(len(records))
        self.stats.records += len(records)
        if logged == "request_only":
            self.stats.lone_requests += 1
        elif logged == "response_only":
            self.stats.lone_responses += 1
        return len(records)

    def _mark(self, event: Event) -> None:
        self._seen.remember(event.key, day_ordinal(event.received))

    def _add_pending(self, event: Event) -> None:
        self._pending[event.key] = event
        self._waiting.setdefault((event.ce_id, event.source, event.side), []).append(event)

    def _remove_pending(self, event: Event) -> None:
        del self._pending[event.key]
        index = (event.ce_id, event.source, event.side)
        left = [e for e in self._waiting[index] if e is not event]
        if left:
            self._waiting[index] = left
        else:
            del self._waiting[index]

    def _partner(self, event: Event) -> Event | None:
        other = RESPONSE if event.side == REQUEST else REQUEST
        return choose_partner(event, self._waiting.get((event.ce_id, event.source, other)))

    def handle_event(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """Check, pair and store one CloudEvent.

        Returns:
            ``{"status": "stored" | "pending" | "duplicate" | "quarantined", "records": n}``
            (``reason`` too when quarantined); returned only once everything the status
            promises is durable.

        Raises:
            SinkError: The event is refused (4xx) or the store failed (503).
        """
        with self.busy():
            receipt = self.submit_event(headers, body)
        return self.finish(receipt)

    def submit_event(self, headers: Mapping[str, str], body: bytes) -> Receipt:
        """:meth:`handle_event` without the durable wait (then :meth:`finish`).

        In group-commit mode it never waits for a disk: an event loop may call it.
        """
        try:
            event = parse_cloudevent(headers, body, self.clock)
        except SinkError as exc:
            self._reject(exc)
            raise
        with self._locked():
            return self._receipt(self._accept(event))

    def busy(self) -> contextlib.AbstractContextManager[None]:
        """Mark a body as being handled: the group commit may wait for it (bounded)."""
        return self._commit.busy() if self._commit is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The state lock; first rebuilds the state when a group commit round failed."""
        with self._lock:
            if self._commit is not None and self._commit.broken is not None:
                self._heal(self._commit.broken)
            self._after = []
            try:
                yield
            finally:
                self._after = []  # the receipt took its list; a refused body's is dropped

    def _receipt(self, result: dict[str, Any]) -> Receipt:  # lock held: seq covers it all
        return Receipt(result, self._commit.seq if self._commit is not None else 0,
                       self._after)

    def _heal(self, reason: str) -> None:
        """Rebuild the state from the store (cut back to what is durable) after a round failed.

        The seen keys, pending events and ids in memory counted the failed lines.
        """
        assert self._commit is not None
        log.warning("sink: group commit failed (%s); rebuilding the state from the store", reason)
        self._pending.clear()
        self._waiting.clear()
        self._seen.clear()
        try:
            self._recover()
        except (OSError, DriftloopError) as exc:
            raise SinkError(503, f"store unreadable after a failed write ({exc}); "
                                 "nothing was recorded") from exc
        self._commit.healed()

    def finish(self, receipt: Receipt) -> dict[str, Any]:
        """Wait until the receipt's writes are durable, then return its answer.

        Raises:
            SinkError: 503, the batch holding them failed (none of its events is stored).
        """
        if self._commit is not None and receipt.ticket:
            self._commit.wait(receipt.ticket)
        self._run_after(receipt)
        return receipt.result

    async def finish_async(self, receipt: Receipt) -> dict[str, Any]:
        """:meth:`finish` for an asyncio task."""
        if self._commit is not None and receipt.ticket:
            await self._commit.wait_async(receipt.ticket)
        self._run_after(receipt)
        return receipt.result

    def _run_after(self, receipt: Receipt) -> None:
        if receipt.after:
            with self._lock:
                for action in receipt.after:
                    action()

    @property
    def group_commit(self) -> bool:
        """Whether writes are group committed (answers wait for a committer round)."""
        return self._commit is not None

    def _reject(self, exc: SinkError) -> None:
        self.stats.rejected += 1
        self._m_rejected.labels(str(exc.status)).inc()

    def reject_feedback(self, exc: SinkError) -> None:
        """Count a refused feedback body (also in ``driftloop_feedback_received_total``)."""
        self._reject(exc)
        with self._lock:
            self.quality.rejected()

    def _accept(self, event: Event) -> dict[str, Any]:
        if event.key in self._seen or event.key in self._pending:
            self.stats.duplicates += 1
            self._count(event.side, "duplicate").inc()
            return {"status": "duplicate", "records": 0}
        if event.problem is not None:
            return self._quarantine(event)
        partner = self._partner(event)
        if partner is not None:
            request, response = (event, partner) if event.side == REQUEST else (partner, event)
            n = self._store_records(request, response)
            self._remove_pending(partner)
            self._mark(request)
            self._mark(response)
            with contextlib.suppress(OSError, DriftloopError):
                self.writer.drop(partner.journal_key)
            self._m_pending.set(len(self._pending))
            return self._stored(event, n)
        event.journal_key = self._write(f"{PENDING_PREFIX}/dt={partition_day(event.received)}",
                                        event.to_line(), event_name(event.key, event.side))
        self._add_pending(event)
        self.stats.pending += 1
        self._count(event.side, "pending").inc()
        while len(self._pending) > self.max_pending:
            self._write_alone(next(iter(self._pending.values())))
        self._m_pending.set(len(self._pending))
        return {"status": "pending", "records": 0}

    def _quarantine(self, event: Event) -> dict[str, Any]:
        """Store an event the sink cannot read, raw (base64) with its headers and why."""
        self._write(f"{QUARANTINE_PREFIX}/dt={partition_day(event.received)}",
                    event.quarantine_line(), event_name(event.key, "quarantine"))
        self._mark(event)
        self.stats.quarantined += 1
        self._count(event.side, "quarantined").inc()
        log.warning("sink: event %r (%s) quarantined: %s", event.ce_id, event.side,
                    event.problem)
        return {"status": "quarantined", "records": 0, "reason": event.problem}

    def _stored(self, event: Event, n: int) -> dict[str, Any]:
        self.stats.stored += 1
        self._count(event.side, "stored").inc()
        return {"status": "stored", "records": n}

    def _write_alone(self, event: Event) -> None:
        self._store_records(event if event.side == REQUEST else None,
                            event if event.side == RESPONSE else None)
        self._remove_pending(event)
        self._mark(event)
        with contextlib.suppress(OSError, DriftloopError):
            self.writer.drop(event.journal_key)

    def expire(self) -> int:
        """Write alone every pending event older than ``pending_ttl``; return how many.

        Returns once those records are durable.
        """
        now = self.clock()
        written = 0
        due = self._snapshots.due(now)
        listed = self._listed() if due else None
        with self._locked():
            for event in list(self._pending.values()):
                if now - event.received < self.pending_ttl:
                    break  # oldest first: the rest are younger
                self._write_alone(event)
                written += 1
            self._m_pending.set(len(self._pending))
            if self.mode == "append" and (
                utc_now(self.clock).date().isoformat() != self._journal_day
            ):
                if self._commit is not None:  # old journals go: their events' records first
                    self._commit.flush_all()
                self._compact()
            if now - self._last_prune > 3600:
                self._last_prune = now
                self._seen.prune(self._window()[0].toordinal())
            snapshot = self._take_snapshot(flush=True, listed=listed) if due else None
            receipt = self._receipt({"written": written})
        self.finish(receipt)
        if snapshot is not None:
            self._write_snapshot(*snapshot)
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
        with self.busy():
            receipt = self.submit_feedback(body)
        return self.finish(receipt)

    def submit_feedback(self, body: bytes) -> Receipt:
        """:meth:`handle_feedback` up to the durable wait (see :meth:`submit_event`)."""
        try:
            rows = parse_feedback(body, labels=self.labels, now=utc_now(self.clock))
        except SinkError as exc:
            self.reject_feedback(exc)
            raise
        day = partition_day(self.clock())
        with self._locked():
            self._write(f"feedback/dt={day}", encode_lines(rows), f"fb-{uuid.uuid4().hex}")
            self._after.append(lambda: self._fed(rows))  # only rows that are durable
            return self._receipt({"stored": len(rows)})

    def _fed(self, rows: list[dict[str, Any]]) -> None:
        self.stats.feedback += len(rows)
        self.quality.feedback(rows, self.clock())
        self._m_feedback.inc(len(rows))

    # -- snapshot of the seen events (sink_seen) -----------------------------------------

    def _writes(self) -> tuple[int, int]:
        return self.stats.records, self.stats.quarantined

    def _listed(self) -> dict[str, int] | None:
        """Object mode: :func:`list_objects`, before the lock (None: append, or unchanged)."""
        if self.mode == "append" or not self._snapshots.changed(self._writes()):
            return None
        return list_objects(self.store, self._window())

    def _take_snapshot(self, *, flush: bool, listed: dict[str, int] | None
                       ) -> tuple[SeenEvents, dict[str, int]] | None:
        """Copy the seen events and the files they cover (lock held), or None.

        None when nothing changed, when the queued lines could not be made durable (then
        memory is ahead of disk), or in object mode without a listing.
        """
        if not self._snapshots.changed(self._writes()) or (
                self.mode != "append" and listed is None):
            return None
        if flush and self._commit is not None:
            try:
                self._commit.flush_all()
            except SinkError:
                return None
        if self._commit is not None and self._commit.broken is not None:
            return None
        self._snapshots.taken(self.clock(), self._writes())
        return self._seen.copy(), (covered_files(self.store, self._window())
                                   if listed is None else listed)

    def _write_snapshot(self, seen: SeenEvents, files: dict[str, int]) -> None:
        if write_snapshot(self.store, seen, files, utc_now(self.clock)):
            self.stats.snapshots += 1
        else:  # the next start reads more, no harm; retried at the next interval
            self._snapshots.failed()

    def close(self) -> None:
        """Commit what is queued, snapshot the seen events, close open files.

        Pending events stay journaled.
        """
        if self._commit is not None:
            self._commit.close()
        listed = self._listed()
        with self._lock:
            snapshot = self._take_snapshot(flush=False, listed=listed)
            self.writer.close()
        if snapshot is not None:
            self._write_snapshot(*snapshot)


__all__ = [
    "DEFAULT_COMMIT_MAX_BATCH",
    "DEFAULT_COMMIT_MAX_WAIT",
    "PENDING_PREFIX",
    "QUARANTINE_PREFIX",
    "PayloadSink",
    "Receipt",
    "SinkStats",
]
