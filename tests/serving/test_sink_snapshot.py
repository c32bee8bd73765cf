"""The sink's snapshot of its seen events: a restart reads only what came after it.

Without it a restart read every record line of the dedup window (~0.6 s per 100,000
lines here, growing with the day's volume; issue 16's "noticed" list). These tests run
PayloadSink alone on a local folder, in append mode with group commit.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from driftloop.data.storage import LocalStore
from driftloop.serving.sink_events import REQUEST_TYPE, RESPONSE_TYPE
from driftloop.serving.sink_pairing import PayloadSink
from driftloop.serving.sink_seen import (
    SNAPSHOT_KEY,
    SeenEvents,
    SnapshotSchedule,
    decode_snapshot,
)

REQUEST = json.dumps({"instances": [{"x0": 0.5, "x1": -1.0, "segment": "north"}]}).encode()
RESPONSE = json.dumps({"predictions": [
    {"class": "yes", "probabilities": {"no": 0.3, "yes": 0.7}}]}).encode()
DAY = 86_400.0


class Clock:
    """A settable clock (epoch seconds) for the sink."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _headers(ce_id: str, ce_type: str, ce_time: str = "2026-01-01T10:00:00Z") -> dict[str, str]:
    return {"ce-id": ce_id, "ce-type": ce_type, "ce-source": "pod-a",
            "ce-specversion": "1.0", "ce-time": ce_time, "content-type": "application/json"}


def _send(sink: PayloadSink, ce_id: str, ce_type: str,
          ce_time: str = "2026-01-01T10:00:00Z") -> str:
    body = REQUEST if ce_type == REQUEST_TYPE else RESPONSE
    answer: dict[str, Any] = sink.finish(sink.submit_event(_headers(ce_id, ce_type, ce_time),
                                                           body))
    return str(answer["status"])


def _pairs(sink: PayloadSink, ids: range, prefix: str = "e") -> None:
    for i in ids:
        assert _send(sink, f"{prefix}{i}", REQUEST_TYPE) == "pending"
        assert _send(sink, f"{prefix}{i}", RESPONSE_TYPE) == "stored"


def _open(root: Path, clock: Clock, **kwargs: Any) -> PayloadSink:
    return PayloadSink(LocalStore(root, create=True), mode="append", clock=clock, **kwargs)


def _record_files(root: Path) -> list[Path]:
    return sorted((root / "requests").rglob("*.jsonl"))


def test_a_restart_after_close_reads_no_record_line_and_remembers_the_same(tmp_path: Path):
    root, clock = tmp_path / "store", Clock()
    sink = _open(root, clock)
    _pairs(sink, range(30))
    sink.close()
    assert sink.stats.snapshots == 1 and (root / SNAPSHOT_KEY).is_file()

    again = _open(root, clock)
    try:
        assert again.stats.recovery_bytes_read == 0  # the snapshot covered every byte
        assert again.stats.recovered_ids == 60
        (root / SNAPSHOT_KEY).rename(tmp_path / "kept.json")
        full = _open(root, clock)  # no snapshot: the whole window read, as before
        full.close()
        assert full.stats.recovery_bytes_read == sum(p.stat().st_size
                                                     for p in _record_files(root))
        assert again._seen.keys == full._seen.keys and again._seen.ids == full._seen.ids
        # and it deduplicates and tags as a full read would
        assert _send(again, "e7", REQUEST_TYPE) == "duplicate"
        assert _send(again, "e7", RESPONSE_TYPE) == "duplicate"
        later = "2026-01-01T11:00:00Z"  # a new inference under a reused Ce-Id
        assert _send(again, "e7", REQUEST_TYPE, later) == "pending"
        assert _send(again, "e7", RESPONSE_TYPE, later) == "stored"
        assert again.stats.reused_ids == 1
    finally:
        again.close()


def test_records_written_after_the_snapshot_are_read_after_a_crash(tmp_path: Path):
    root, clock = tmp_path / "store", Clock()
    sink = _open(root, clock, snapshot_interval=300)
    try:
        _pairs(sink, range(10))
        sink.expire()
        assert sink.stats.snapshots == 0  # not due yet
        clock.now += 301
        sink.expire()
        assert sink.stats.snapshots == 1
        covered = sum(decode_snapshot((root / SNAPSHOT_KEY).read_bytes()).files.values())
        _pairs(sink, range(10, 15))  # durable, then the process dies (no close)
        total = sum(p.stat().st_size for p in _record_files(root))
        assert total > covered

        again = _open(root, clock)
        try:
            assert again.stats.recovery_bytes_read == total - covered
            assert again.stats.recovered_ids == 30
            for ce_id in ("e3", "e12"):  # before and after the snapshot
                assert _send(again, ce_id, RESPONSE_TYPE) == "duplicate"
            assert _send(again, "e99", REQUEST_TYPE) == "pending"
        finally:
            again.close()
    finally:
        sink.close()


def test_nothing_written_means_no_new_snapshot(tmp_path: Path):
    root, clock = tmp_path / "store", Clock()
    sink = _open(root, clock, snapshot_interval=300)
    clock.now += 301
    sink.expire()
    sink.close()
    assert sink.stats.snapshots == 0 and not (root / SNAPSHOT_KEY).exists()
    first = _open(root, clock)
    _pairs(first, range(3))
    first.close()
    again = _open(root, clock)
    clock.now += 301
    again.expire()
    again.close()  # the snapshot of the first is still this state
    assert (first.stats.snapshots, again.stats.snapshots) == (1, 0)


@pytest.mark.parametrize("change", ["cut", "gone"])
def test_a_covered_file_cut_or_gone_means_a_full_read(tmp_path: Path, change: str,
                                                      caplog: pytest.LogCaptureFixture):
    root, clock = tmp_path / "store", Clock()
    sink = _open(root, clock)
    _pairs(sink, range(6))
    sink.close()
    (records,) = _record_files(root)
    if change == "cut":  # the lines of e3..e5 removed by hand
        lines = records.read_bytes().splitlines(keepends=True)
        records.write_bytes(b"".join(lines[:3]))
    else:
        records.unlink()
    with caplog.at_level(logging.WARNING, logger="driftloop.serving.sink"):
        again = _open(root, clock)
    try:
        assert any("not used" in r.getMessage() for r in caplog.records)
        # e4's records are no longer in the store: its journaled request waits again and
        # a redelivered response is stored, as a full read decides (a snapshot used
        # anyway would call it a duplicate)
        assert _send(again, "e4", RESPONSE_TYPE) == "stored"
        assert _send(again, "e0", RESPONSE_TYPE) == ("duplicate" if change == "cut"
                                                     else "stored")
    finally:
        again.close()


def test_an_unreadable_snapshot_is_passed_over_and_replaced(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture):
    root, clock = tmp_path / "store", Clock()
    sink = _open(root, clock)
    _pairs(sink, range(4))
    sink.close()
    (root / SNAPSHOT_KEY).write_bytes(b'{"version": 1, "files": {"a": "b"')
    with caplog.at_level(logging.WARNING, logger="driftloop.serving.sink"):
        again = _open(root, clock)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert again.stats.recovery_bytes_read > 0
    assert _send(again, "e2", RESPONSE_TYPE) == "duplicate"
    again.close()  # read from the files: not any snapshot's state, so one is written
    assert again.stats.snapshots == 1
    assert decode_snapshot((root / SNAPSHOT_KEY).read_bytes()).files


def test_keys_older_than_the_window_are_not_loaded(tmp_path: Path):
    root, clock = tmp_path / "store", Clock()
    sink = _open(root, clock, dedup_days=1)
    _pairs(sink, range(5))
    sink.close()
    clock.now += 3 * DAY  # the partition left the window
    again = _open(root, clock, dedup_days=1)
    try:
        assert again.stats.recovered_ids == 0
        # forgotten: its journaled request waits again, a redelivered response pairs
        assert _send(again, "e1", RESPONSE_TYPE) == "stored"
    finally:
        again.close()


def test_the_seen_bound_holds_on_load_and_keeps_the_newest(tmp_path: Path):
    root, clock = tmp_path / "store", Clock()
    sink = _open(root, clock)
    _pairs(sink, range(20))
    sink.close()
    again = _open(root, clock, max_seen=10)
    try:
        assert again.stats.recovery_bytes_read == 0
        assert len(again._seen.keys) == 10 and len(again._seen.ids) == 10
        assert _send(again, "e19", REQUEST_TYPE) == "duplicate"  # the newest kept
        assert _send(again, "e0", RESPONSE_TYPE) == "stored"  # the oldest forgotten
    finally:
        again.close()


def test_the_schedule_takes_one_when_due_and_changed():
    schedule = SnapshotSchedule(300)
    schedule.recovered(1000.0, (0, 0), read=0)
    assert not schedule.due(1299.0) and schedule.due(1300.0)
    assert not schedule.changed((0, 0)) and schedule.changed((1, 0))
    schedule.taken(1300.0, (1, 0))
    assert not schedule.due(1599.0) and not schedule.changed((1, 0))
    schedule.failed()
    assert schedule.changed((1, 0))
    schedule.recovered(2000.0, (0, 0), read=10)  # a state read from the files
    assert schedule.due(2000.0) and schedule.changed((0, 0))
    assert not SnapshotSchedule(0).due(1e12)  # 0: at close only
    with pytest.raises(ValueError, match="snapshot_interval"):
        SnapshotSchedule(-1)


def _remember_seconds(bound: int, count: int) -> float:
    seen = SeenEvents(bound)
    keys = [f"{i:032x}" for i in range(count)]
    started = time.perf_counter()
    for key in keys:
        seen.remember(key, 1)
    took = time.perf_counter() - started
    assert list(seen.keys)[:1] == keys[-min(bound, count):][:1]  # the newest kept
    return took


def test_forgetting_the_oldest_costs_the_same_past_the_bound():
    # A regression: the eviction was ``del d[next(iter(d))]``, which walks every entry
    # deleted since the dict's last resize, so each event past max_seen cost more than
    # the last (300,000 keys into a bound of 150,000: ~35x the time of no eviction).
    # A ratio of two runs in the same process, so a slow machine does not matter.
    unbounded = min(_remember_seconds(10**9, 300_000) for _ in range(2))
    bounded = min(_remember_seconds(150_000, 300_000) for _ in range(2))
    assert bounded < 6 * unbounded, (bounded, unbounded)


def test_object_mode_on_gcs_reads_only_the_objects_after_the_snapshot(gcs_store, caplog):
    # one object per event on gs:// (the cluster's store): without a snapshot a start
    # GETs every object of the window, one request each
    clock = Clock()
    sink = PayloadSink(gcs_store, mode="object", clock=clock)
    _pairs(sink, range(4))
    sink.close()
    assert sink.stats.snapshots == 1 and gcs_store.exists(SNAPSHOT_KEY)

    again = PayloadSink(gcs_store, mode="object", clock=clock)
    assert again.stats.recovery_files_read == 0 and again.stats.recovered_ids == 8
    assert _send(again, "e1", RESPONSE_TYPE) == "duplicate"
    _pairs(again, range(4, 6))  # then the process dies: no close, no new snapshot

    third = PayloadSink(gcs_store, mode="object", clock=clock)
    assert third.stats.recovery_files_read == 2  # the two pairs written after it
    for ce_id in ("e0", "e5"):
        assert _send(third, ce_id, RESPONSE_TYPE) == "duplicate"
    third.close()

    (gone,) = [k for k in gcs_store.list("requests") if k in decode_snapshot(
        gcs_store.read_bytes(SNAPSHOT_KEY)).files][:1]
    gcs_store.delete(gone)
    with caplog.at_level(logging.WARNING, logger="driftloop.serving.sink"):
        fourth = PayloadSink(gcs_store, mode="object", clock=clock)
    assert any("is gone" in r.getMessage() for r in caplog.records)
    assert fourth.stats.recovery_files_read == 5  # every object left, read again
    fourth.close()
