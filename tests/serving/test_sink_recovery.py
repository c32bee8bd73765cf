"""Restart recovery of the sink's pending journal (append mode), with PayloadSink alone.

Recovery passes over the journal lines of events already stored without parsing them
(issue 16: parsing them was most of a restart: 1.76 s -> 0.51 s at 50,000 pairs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from driftloop.data.storage import LocalStore
from driftloop.serving.sink_events import REQUEST_TYPE, RESPONSE_TYPE
from driftloop.serving.sink_pairing import PENDING_PREFIX, PayloadSink

REQUEST = json.dumps({"instances": [{"x0": 0.5, "x1": -1.0, "segment": "north"}]}).encode()
RESPONSE = json.dumps({"predictions": [
    {"class": "yes", "probabilities": {"no": 0.3, "yes": 0.7}}]}).encode()


def _headers(ce_id: str, ce_type: str) -> dict[str, str]:
    return {"ce-id": ce_id, "ce-type": ce_type, "ce-source": "http://localhost:9081/",
            "ce-specversion": "1.0", "ce-time": "2026-01-01T10:00:00Z",
            "content-type": "application/json"}


def _log(sink: PayloadSink, ce_id: str, *, response: bool) -> Any:
    receipt = sink.submit_event(_headers(ce_id, REQUEST_TYPE), REQUEST)
    if response:
        receipt = sink.submit_event(_headers(ce_id, RESPONSE_TYPE), RESPONSE)
    return sink.finish(receipt)


def _journal(root: Path) -> list[Path]:
    return sorted((root / PENDING_PREFIX).rglob("*.jsonl"))


def _spoil_data(path: Path, ce_ids: set[str]) -> None:
    """Make the ``data`` of these events' journal lines unparseable, the key left whole."""
    lines = path.read_bytes().splitlines(keepends=True)
    out = []
    for line in lines:
        if json.loads(line)["ce_id"] in ce_ids:
            line = line.replace(b'"data":{', b'"data":{{not json', 1)
        out.append(line)
    path.write_bytes(b"".join(out))


def test_recovery_keeps_exactly_the_unpaired_events(tmp_path: Path):
    root = tmp_path / "store"
    sink = PayloadSink(LocalStore(root, create=True), mode="append")
    for i in range(20):
        _log(sink, f"e{i}", response=i % 4 != 0)  # every fourth stays unpaired
    sink.close()
    again = PayloadSink(LocalStore(root), mode="append")
    try:
        assert again.stats.recovered_pending == 5
        assert sorted(e.ce_id for e in again._pending.values()) == ["e0", "e12", "e16",
                                                                    "e4", "e8"]
        # the late response of a recovered request pairs; a stored one is a duplicate
        assert _log(again, "e4", response=False)["status"] == "duplicate"
        answer = again.finish(again.submit_event(_headers("e8", RESPONSE_TYPE), RESPONSE))
        assert answer["status"] == "stored"
    finally:
        again.close()


def test_journal_lines_of_stored_events_are_not_parsed(tmp_path: Path):
    root = tmp_path / "store"
    sink = PayloadSink(LocalStore(root, create=True), mode="append")
    _log(sink, "stored", response=True)
    _log(sink, "waiting", response=False)
    sink.close()
    (journal,) = _journal(root)
    _spoil_data(journal, {"stored"})
    again = PayloadSink(LocalStore(root), mode="append")
    try:  # a parse of the spoiled line would count it unreadable
        assert again.stats.unreadable_lines == 0
        assert [e.ce_id for e in again._pending.values()] == ["waiting"]
    finally:
        again.close()
    (journal,) = _journal(root)  # compacted: only the waiting event's line is left
    _spoil_data(journal, {"waiting"})
    third = PayloadSink(LocalStore(root), mode="append")
    try:  # an unpaired event's line is parsed, so its spoiled line is unreadable
        assert third.stats.unreadable_lines == 1
        assert third.stats.recovered_pending == 0
    finally:
        third.close()


def test_record_files_are_read_in_chunks_with_the_same_lines(tmp_path: Path, monkeypatch):
    # a start reads local files chunk by chunk (its memory no longer grows with the
    # largest file); lines across chunk boundaries, a torn last line and an offset into
    # the file must come out as a whole read gives them
    from driftloop.serving import sink_log

    root = tmp_path / "store"
    sink = PayloadSink(LocalStore(root, create=True), mode="append")
    for i in range(40):
        _log(sink, f"id-{i}-" + "x" * (i % 7), response=True)
    sink.close()
    (path,) = sorted((root / "requests").rglob("*.jsonl"))
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"event_id":"torn","log')  # a crash mid-line
    store = LocalStore(root)
    key = str(path.relative_to(root))
    offset = whole.index(b"\n", len(whole) // 2) + 1

    def read(chunk: int, at: int) -> tuple[list[Any], int]:
        monkeypatch.setattr(sink_log, "READ_CHUNK", chunk)
        torn: list[int] = []
        found = list(sink_log.read_event_ids(store, key, lambda: torn.append(1), offset=at))
        return found, len(torn)

    expected = read(1 << 30, 0)
    assert len(expected[0]) == 40 and expected[1] == 1
    for chunk in (1, 7, 64, 333):
        assert read(chunk, 0) == expected
        assert read(chunk, offset) == read(1 << 30, offset)
    assert read(64, offset)[0] == expected[0][-len(read(64, offset)[0]):]
