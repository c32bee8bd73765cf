"""Group commit for the payload sink's append files: one fsync per batch of events.

Without it every event costs its own ``fsync`` (~0.25-1 ms here, the sink's limit at about
1,300 events/s). With it the sink, holding its state lock only for the in-memory part,
*appends* an event's lines to a queue (:meth:`GroupCommit.append`) and takes a ticket (the
queue's sequence number); one committer thread writes everything queued with one
``write`` + ``fsync`` per file (:meth:`AppendWriter.write_batch`) and wakes every ticket
it covered. An event is answered only once its ticket is durable, so a 2xx still means
"on disk" -- a duplicate's answer too (its ticket covers the original's write).

The bounded wait
    The committer starts a batch as soon as something is queued. It waits first, until
    ``max_wait`` seconds after the batch's first line or until ``max_batch`` lines are
    queued, only when other events are being handled at that moment
    (:meth:`GroupCommit.busy`): waiting when nobody else is coming would only add latency.
    This is PostgreSQL's ``commit_delay`` / ``commit_siblings`` rule. Under load the
    batches form by themselves anyway: what arrives during one fsync is the next batch.

A failed write
    A batch is all or nothing: when a write or fsync fails the files are cut back to
    their size before the batch (``AppendWriter.write_batch``) and *every* ticket of the
    batch fails -- and so does every line queued behind it, because the sink's in-memory
    state (seen keys, pending events) already counted them. The commit is then ``broken``
    until the sink has rebuilt that state from the files (``PayloadSink._heal``, the same
    recovery as at start) and called :meth:`GroupCommit.healed`; until then
    :meth:`GroupCommit.append` refuses. Nothing is acknowledged that is not on disk.

``max_batch = 1`` is not handled here: the sink then writes and fsyncs each event in its
own call, as before group commit (the baseline of ``benchmarks/sink_throughput.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from driftloop.serving.sink_bodies import SinkError
from driftloop.serving.sink_log import AppendWriter


@dataclass
class Receipt:
    """What an accepted body will be answered once its ticket is durable.

    Attributes:
        result: The answer's JSON.
        ticket: The group commit's sequence number covering its writes (0: none pending).
        after: What to do once durable (the live-quality join: only durable predictions
            and labels count), run under the sink's lock.
    """

    result: dict[str, Any]
    ticket: int = 0
    after: list[Callable[[], None]] = field(default_factory=list)


log = logging.getLogger(__name__)
#: Failed ticket ranges remembered for late waiters (a waiter is answered within ms).
_FAILED_KEPT = 256


class GroupCommit:
    """The queue of lines waiting for their fsync, and the thread that commits them.

    Args:
        writer: The append writer of the sink's local store.
        max_batch: Most queued lines one fsync round takes (>= 2).
        max_wait: Seconds the committer may wait for more lines (see the module).
        on_flush: Called after each successful round with ``(lines, seconds)``.
    """

    def __init__(self, writer: AppendWriter, *, max_batch: int, max_wait: float,
                 on_flush: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 2 or max_wait < 0:
            raise ValueError("group commit needs max_batch >= 2 and max_wait >= 0")
        self.writer = writer
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_flush = on_flush
        self.rounds = 0
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, str, bytes]] = deque()
        self._first_at = 0.0  # monotonic time the oldest queued line arrived
        self._seq = 0  # the last line queued
        self._durable = 0  # every line up to here is on disk (or in a failed range)
        self._failed: deque[tuple[int, int, str]] = deque(maxlen=_FAILED_KEPT)
        self._broken: str | None = None
        self._busy = 0
        self._closed = False
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._io = threading.Lock()  # one round at a time, in sequence order
        self._thread = threading.Thread(target=self._run, name="sink-commit", daemon=True)
        self._thread.start()

    # -- the sink's side ----------------------------------------------------------------

    @property
    def broken(self) -> str | None:
        """Why the last round failed, until :meth:`healed`; else None."""
        return self._broken

    @property
    def queued(self) -> int:
        """Lines queued and not yet taken by a round."""
        return len(self._queue)

    @property
    def seq(self) -> int:
        """The ticket of everything queued so far."""
        return self._seq

    def append(self, folder: str, data: bytes) -> str:
        """Queue ``data`` (whole lines) for ``folder``; return the key it will be in.

        Raises:
            SinkError: 503, the commit is broken (a round failed and the sink has not
                rebuilt its state yet).
        """
        with self._cond:
            if self._broken is not None:
                raise SinkError(503, f"store write failed ({self._broken}); nothing was "
                                     "recorded")
            self._seq += 1
            if not self._queue:
                self._first_at = time.monotonic()
                self._cond.notify_all()
            self._queue.append((self._seq, folder, data))
            if len(self._queue) >= self.max_batch:
                self._cond.notify_all()
        return self.writer.key(folder)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Mark an event as being handled (the committer may wait for it, bounded)."""
        with self._cond:
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:  # no notify: waking the committer per event costs more
                self._busy -= 1

    def _outcome(self, ticket: int) -> str | Literal[False] | None:
        """False while ``ticket`` waits; None once durable; the error text if it failed."""
        for low, high, error in self._failed:
            if low < ticket <= high:
                return error
        return None if ticket <= self._durable else False

    def wait(self, ticket: int) -> None:
        """Block until every line up to ``ticket`` is durable.

        Raises:
            SinkError: 503, the round holding one of them failed.
        """
        with self._cond:
            while (outcome := self._outcome(ticket)) is False:
                self._cond.wait()
        if outcome is not None:
            raise SinkError(503, f"store write failed ({outcome}); nothing was recorded")

    async def wait_async(self, ticket: int) -> None:
        """:meth:`wait` for an asyncio task: the event loop keeps serving meanwhile."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            outcome = self._outcome(ticket)
            if outcome is False:
                self._waiters.append((ticket, loop, future))
        if outcome is False:
            await future
        elif outcome is not None:
            raise SinkError(503, f"store write failed ({outcome}); nothing was recorded")

    def flush_all(self) -> None:
        """Commit everything queued now, in the caller's thread (before a compaction).

        Raises:
            SinkError: 503, the round failed.
        """
        ticket = self._seq
        self._round(limit=None)
        self.wait(ticket)

    def healed(self) -> None:
        """The sink rebuilt its state from the files: accept lines again."""
        with self._cond:
            self._broken = None
            # a fresh durable point: a duplicate answered now waits for nothing that failed
            self._seq += 1
            self._durable = self._seq

    def close(self) -> None:
        """Commit what is queued and stop the committer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    # -- the committer ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and nothing left
                # others being handled now: their lines may join (bounded wait)
                if self._busy:
                    deadline = self._first_at + self.max_wait
                    while len(self._queue) < self.max_batch and not self._closed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
            self._round(limit=self.max_batch)

    def _round(self, limit: int | None) -> None:
        """Write and fsync up to ``limit`` queued lines (all when None); wake their tickets."""
        with self._io:
            with self._cond:
                taken: list[tuple[int, str, bytes]] = []
                while self._queue and (limit is None or len(taken) < limit):
                    taken.append(self._queue.popleft())
                if self._queue:
                    self._first_at = time.monotonic()
            if not taken:
                return
            parts: dict[str, list[bytes]] = {}
            for _, folder, data in taken:
                parts.setdefault(folder, []).append(data)
            started = time.perf_counter()
            try:
                self.writer.write_batch({f: b"".join(d) for f, d in parts.items()})
            except OSError as exc:
                self._fail(str(exc))
                return
            except Exception as exc:  # never a waiter left hanging on a dead round
                log.exception("sink: group commit round failed unexpectedly")
                self._fail(f"{type(exc).__name__}: {exc}")
                return
            seconds = time.perf_counter() - started
            with self._cond:
                self._durable = taken[-1][0]
                self.rounds += 1
                self._settle()
        if self.on_flush is not None:
            try:
                self.on_flush(len(taken), seconds)
            except Exception:  # metrics only: the committer keeps running
                log.exception("sink: group commit metrics failed")

    def _fail(self, error: str) -> None:
        """Fail the round and everything queued behind it; break until healed."""
        with self._cond:
            self._failed.append((self._durable, self._seq, error))
            self._durable = self._seq
            self._queue.clear()
            self._broken = error
            self._settle()

    def _settle(self) -> None:
        """Wake the threads and resolve the futures whose tickets are decided (lock held)."""
        self._cond.notify_all()
        decided: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], str | None]]]
        decided = {}
        waiting = []
        for ticket, loop, future in self._waiters:
            outcome = self._outcome(ticket)
            if outcome is False:
                waiting.append((ticket, loop, future))
                continue
            decided.setdefault(loop, []).append((future, outcome))
        self._waiters = waiting
        for loop, futures in decided.items():  # one wake-up per loop and round
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, futures)


def _resolve(futures: list[tuple[asyncio.Future[None], str | None]]) -> None:
    for future, error in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(
                SinkError(503, f"store write failed ({error}); nothing was recorded"))


__all__ = ["GroupCommit", "Receipt"]
