"""Ingest by shards: every split of the files merges into what one reading gives."""

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from driftloop.data.ingest import (
    IngestError,
    IngestPart,
    ingest,
    merge_parts,
    read_part,
    shard_owns,
)
from driftloop.data.schema import load_schema
from driftloop.data.storage import LocalStore
from driftloop.demo.sample import write_sample_store
from driftloop.errors import DriftloopError

UNTIL = dt.datetime(2026, 1, 4, 12, tzinfo=dt.UTC)


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture()
def lookback(tmp_path: Path):
    """Four days of the sample store plus what makes order matter: ids repeated across
    days and files, labels for one id in two files with the same time, an orphan after a
    rejected label, and rows after the logical time."""
    info = write_sample_store(tmp_path / "s", days=4, rows_per_day=150, seed=3)
    store = LocalStore(info.root)
    rec = {"timestamp": "2026-01-02T09:00:00+00:00", "x0": 0.5, "x1": 0.1, "segment": "north"}
    for day, name, x0 in (("2026-01-02", "z.jsonl", 1.0), ("2026-01-03", "a.jsonl", 2.0),
                          ("2026-01-03", "b.jsonl", 3.0)):
        store.write_text(f"requests/dt={day}/{name}", _jsonl([
            {**rec, "id": "dup-1", "x0": x0}, {**rec, "id": f"only-{name}-{day}"},
            {**rec, "id": "late", "timestamp": "2026-01-04T13:00:00+00:00"}]))
    same = "2026-01-03T10:00:00+00:00"
    store.write_text("feedback/dt=2026-01-03/c.jsonl", _jsonl([
        {"id": "dup-1", "label": "yes", "timestamp": same},
        {"id": "dup-1", "label": "bogus", "timestamp": same},
        {"id": "nobody", "label": "no", "timestamp": same}]))
    store.write_text("feedback/dt=2026-01-03/d.jsonl", _jsonl([
        {"id": "dup-1", "label": "no", "timestamp": same}]))
    return store, load_schema(info.schema_path), info.first_day


def _sorted_quarantine(q: pd.DataFrame) -> pd.DataFrame:
    q = q.astype(str)
    return q.sort_values(list(q.columns)).reset_index(drop=True)


@pytest.mark.parametrize("n_shards", [2, 3, 7])
def test_any_split_merges_into_what_one_reading_gives(lookback, tmp_path: Path, n_shards):
    store, schema, first = lookback
    last = first + dt.timedelta(days=3)
    whole = ingest(store, schema, first, last, until=UNTIL)
    parts = []
    for k in range(n_shards):  # through the files a task would hand on
        read_part(store, schema, first, last, shard=k, n_shards=n_shards).save(tmp_path / f"p{k}")
        parts.append(IngestPart.load(tmp_path / f"p{k}"))
    assert sorted(f for p in parts for f in p.request_files) == sorted(
        k for k in store.list("requests") if k.endswith(".jsonl"))  # each file once
    merged = merge_parts(store, schema, parts[::-1], until=UNTIL)
    pd.testing.assert_frame_equal(merged.records, whole.records, check_dtype=False)
    assert merged.report == whole.report
    pd.testing.assert_frame_equal(_sorted_quarantine(merged.quarantine),
                                  _sorted_quarantine(whole.quarantine))
    row = merged.records.set_index("id").loc["dup-1"]
    assert (row["x0"], row["label"]) == (1.0, "no")  # first read; the later-read label
    assert "late" not in set(merged.records["id"]) and merged.report.counts.balanced()


def test_a_file_belongs_to_one_shard_whatever_the_listing(tmp_path: Path):
    keys = [f"requests/dt=2026-01-0{d}/{n}.jsonl" for d in range(1, 4) for n in "abcdef"]
    owners = [[k for k in range(4) if shard_owns(key, k, 4)] for key in keys]
    assert all(len(o) == 1 for o in owners)
    assert len({o[0] for o in owners}) > 1  # the files spread over the shards
    with pytest.raises(DriftloopError, match="shard 4 of 4"):
        shard_owns(keys[0], 4, 4)


def test_merge_refuses_a_missing_or_mismatched_shard(lookback):
    store, schema, first = lookback
    last = first + dt.timedelta(days=3)
    parts = [read_part(store, schema, first, last, shard=k, n_shards=3) for k in range(3)]
    with pytest.raises(IngestError, match=r"got shards \[0, 2\] of 3"):
        merge_parts(store, schema, [parts[0], parts[2]])
    other = read_part(store, schema, first, last - dt.timedelta(days=1), shard=1, n_shards=3)
    with pytest.raises(IngestError, match="run again"):
        merge_parts(store, schema, [parts[0], other, parts[2]])
    with pytest.raises(IngestError, match="not an ingest shard's part"):
        IngestPart.load(store.root / "nowhere")
