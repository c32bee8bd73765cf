"""Property tests: ingest never raises on row content, and every row read is accounted for.

Rows hold arbitrary JSON-ish values (random types, huge integers, NaN and infinities,
unicode with U+2028 / U+0085 / BOM, lone surrogates written as JSON escapes or as invalid
UTF-8 bytes, nested objects), in JSONL, JSON-array and CSV files, with some garbage lines.
Derandomized so every CI run tries the same examples.
"""

import datetime as dt
import itertools
import json
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftloop.data.ingest import IngestError, IngestResult, ingest
from driftloop.data.schema import schema_from_dict
from driftloop.data.storage import LocalStore

DAY = dt.date(2026, 3, 1)
SCHEMA = schema_from_dict({
    "name": "fuzz", "labels": ["a", "b"],
    "columns": [
        {"name": "x", "kind": "numeric", "min": -1000, "max": 1000},
        {"name": "n", "kind": "numeric", "dtype": "int", "required": False},
        {"name": "big", "kind": "numeric", "required": False, "allow_infinite": True},
        {"name": "c", "kind": "categorical", "required": False},
        {"name": "b", "kind": "categorical", "dtype": "bool", "allowed": [True, False]},
        {"name": "t", "kind": "text", "max_length": 20, "required": False},
    ],
})
PROPERTY = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
# The JSON array and CSV readers are smaller than the JSONL path: fewer examples keep the
# whole tests/faults run well under 30 s on two busy cores.
SMALLER = settings(PROPERTY, max_examples=50)
_folders = itertools.count()

chars = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),  # lone surrogates: JSON escapes or invalid bytes
    st.sampled_from(["\u2028", "\u2029", "\x85", "\ufeff", "\r", "\n", "\x00", '"', "\\"]),
)
texts = st.text(alphabet=chars, max_size=8)
scalars = st.one_of(
    st.none(), st.booleans(), texts,
    st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
times = st.one_of(
    st.sampled_from(["2026-03-01T10:00:00Z", "2026-03-01T23:59:59+05:30", "2026-03-01 12:00",
                     "2026-03-01T08:00:00"]),
    anything,
)


def _field(valid: st.SearchStrategy) -> st.SearchStrategy:
    # mostly plausible values, so accepted rows, duplicates and joins occur too
    return st.one_of(valid, valid, anything)


records = st.fixed_dictionaries(
    {
        "id": _field(st.sampled_from(["r1", "r2", "r3", 4, 5.0])),
        "timestamp": times,
        "x": _field(st.floats(-2000, 2000) | st.integers(-5, 5) | st.just("7")),
        "b": _field(st.sampled_from([True, False, "true", "FALSE", 1])),
    },
    optional={
        "n": _field(st.integers(-3, 3) | st.just(1.5)),
        "big": _field(st.sampled_from([float("inf"), -(10**400), 1e300])),
        "c": _field(texts),
        "t": _field(texts),
        "label": _field(st.sampled_from(["a", "b", "c"])),
        "extra": anything,
    },
)
labels = st.fixed_dictionaries({  # a file without a label column at all is a SchemaError
    "id": _field(st.sampled_from(["r1", "r2", "r3", "4", "r9"])), "timestamp": times,
    "label": _field(st.sampled_from(["a", "b", True])),
})
garbage = st.binary(max_size=12).filter(lambda b: b"\n" not in b)


def _line(row: dict, ascii_only: bool) -> bytes:
    # surrogatepass: a lone surrogate unescaped becomes bytes that are not valid UTF-8
    return json.dumps(row, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _rows_in_jsonl(data: bytes) -> int:
    """Rows a JSONL file holds: its lines that are not blank (after a leading BOM)."""
    n = 0
    for chunk in data.removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        try:
            blank = not chunk.decode("utf-8").strip()
        except UnicodeDecodeError:
            blank = False
        n += not blank
    return n


def _jsonl(rows: list[dict], junk: list[bytes], ascii_only: bool, bom: bool) -> bytes:
    lines = [_line(r, ascii_only) for r in rows] + junk
    return (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines) + b"\n"


def _check(result: IngestResult, n_records: int, n_labels: int, tmp: Path) -> None:
    c = result.report.counts
    assert c.balanced(), c
    assert c.rows_in == n_records and c.labels_in == n_labels
    q = result.quarantine
    assert (q["_kind"] == "record").sum() == c.quarantined
    assert (q["_kind"] == "label").sum() == c.labels_quarantined + c.labels_orphaned
    assert q["_reason"].map(lambda r: isinstance(r, str) and r != "").all()
    assert result.records["id"].is_unique
    # nothing accepted or quarantined may break the Parquet files the steps write
    result.records.to_parquet(tmp / "records.parquet")
    q.astype("string").to_parquet(tmp / "quarantine.parquet")


def _run(store: LocalStore, tmp: Path, n_records: int, n_labels: int, until) -> None:
    try:
        result = ingest(store, SCHEMA, DAY, DAY, until=until)
    except IngestError as err:  # every row of a kind quarantined: loud, with the result
        assert err.result is not None and "\n" not in str(err)
        result = err.result
        assert store.exists(f"quarantine/{DAY}_{DAY}.jsonl")
    _check(result, n_records, n_labels, tmp)


@PROPERTY
@given(
    rows=st.lists(records, max_size=6),
    junk=st.lists(garbage, max_size=2),
    fb=st.lists(labels, max_size=4),
    ascii_only=st.booleans(),
    bom=st.booleans(),
    until=st.sampled_from([None, dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)]),
)
def test_jsonl_rows_of_any_content_are_accounted_for(tmp_path, rows, junk, fb, ascii_only,
                                                     bom, until):
    tmp = tmp_path / str(next(_folders))
    store = LocalStore(tmp / "store", create=True)
    data = _jsonl(rows, junk, ascii_only, bom)
    store.write_bytes(f"requests/dt={DAY}/a.jsonl", data)
    fb_data = _jsonl(fb, [], ascii_only, False) if fb else b""
    store.write_bytes(f"feedback/dt={DAY}/a.jsonl", fb_data)
    _run(store, tmp, _rows_in_jsonl(data), _rows_in_jsonl(fb_data), until)


@SMALLER
@given(
    # no objects without the required keys: a file lacking a whole column is a SchemaError
    items=st.lists(records | scalars | st.lists(anything, max_size=2), max_size=6),
    ascii_only=st.booleans(),
    cut=st.integers(min_value=0, max_value=400),
)
def test_json_arrays_of_any_content_never_raise(tmp_path, items, ascii_only, cut):
    tmp = tmp_path / str(next(_folders))
    store = LocalStore(tmp / "store", create=True)
    data = json.dumps(items, ensure_ascii=ascii_only, indent=1).encode("utf-8", "surrogatepass")
    truncated = data[: max(cut, 1)] if cut < len(data) else data
    store.write_bytes(f"requests/dt={DAY}/a.json", truncated)
    try:
        result = ingest(store, SCHEMA, DAY, DAY)
    except IngestError as err:
        assert err.result is not None
        result = err.result
    c = result.report.counts
    assert c.balanced(), c
    if truncated is data and items:
        # whole and valid: one row per element, wherever it went
        assert c.rows_in == len(items)
    result.records.to_parquet(tmp / "records.parquet")
    result.quarantine.astype("string").to_parquet(tmp / "quarantine.parquet")


cells = st.one_of(texts, st.sampled_from(["1.5", "inf", "-Infinity", "nan", "1e400", "true",
                                           "2026-03-01T10:00:00Z", "", " "]))


@SMALLER
@given(rows=st.lists(st.fixed_dictionaries({
    "id": cells | st.sampled_from(["r1", "r2"]), "timestamp": cells, "x": cells, "b": cells,
    "c": cells}), min_size=1, max_size=5))
def test_csv_cells_of_any_content_are_accounted_for(tmp_path, rows):
    tmp = tmp_path / str(next(_folders))
    store = LocalStore(tmp / "store", create=True)
    text = pd.DataFrame(rows).to_csv(index=False)
    store.write_bytes(f"requests/dt={DAY}/a.csv", text.encode("utf-8", "surrogatepass"))
    expected = len(pd.read_csv(tmp / "store" / f"requests/dt={DAY}/a.csv", dtype=str,
                               keep_default_na=False, encoding_errors="surrogateescape"))
    _run(store, tmp, expected, 0, None)
