import datetime as dt
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from driftloop.data.ingest import IngestError, ingest
from driftloop.data.schema import Schema, load_schema, schema_from_dict
from driftloop.data.storage import LocalStore, open_store
from driftloop.demo.sample import sample_schema, write_sample_store
from driftloop.errors import DriftloopError, SchemaError, StoreError

DAY = dt.date(2026, 3, 1)


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def _rec(i, x0=0.5, segment="north", ts="2026-03-01T10:00:00+00:00"):
    return {"id": f"r{i}", "timestamp": ts, "x0": x0, "x1": 0.1, "segment": segment}


@pytest.fixture()
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store", create=True)


def test_sample_store_accounts_for_every_row(tmp_path: Path):
    info = write_sample_store(tmp_path / "s", days=2, rows_per_day=300, seed=1)
    result = ingest(open_store(info.root), load_schema(info.schema_path), info.first_day,
                    info.first_day + dt.timedelta(days=1))
    c = result.report.counts
    assert c.rows_in == 2 * 300 + 4
    assert (c.accepted, c.quarantined, c.duplicates) == (600, 3, 1)
    assert c.balanced()
    assert len(result.records) == 600 and result.records["id"].is_unique
    assert len(result.quarantine) == 3
    reasons = " | ".join(result.quarantine["_reason"])
    assert "x0: not a number" in reasons
    assert "timestamp: not an ISO-8601 time" in reasons
    assert "x1: 999 above max 50" in reasons and "segment: 'mars' not in allowed values" in reasons
    assert result.report.quarantine_reasons["x1: <value> above max <value>"] == 1
    assert c.labelled == result.records["label"].notna().sum() > 0
    assert str(result.records["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_latest_feedback_wins_and_orphans_are_quarantined(store: LocalStore):
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl([_rec(1), _rec(2)]))
    # The later label sits in the earlier-sorted file: order of reading must not decide.
    store.write_text(f"feedback/dt={DAY}/a.jsonl", _jsonl([
        {"id": "r1", "label": "yes", "timestamp": "2026-03-01T12:00:00+00:00"},
        {"id": "r9", "label": "no", "timestamp": "2026-03-01T12:00:00+00:00"},
    ]))
    store.write_text(f"feedback/dt={DAY}/b.jsonl", _jsonl([
        {"id": "r1", "label": "no", "timestamp": "2026-03-01T11:00:00+00:00"},
        {"id": "r2", "label": "maybe", "timestamp": "2026-03-01T11:00:00+00:00"},
    ]))
    result = ingest(store, sample_schema(), DAY, DAY)
    labels = dict(zip(result.records["id"], result.records["label"], strict=True))
    assert labels["r1"] == "yes"
    assert pd.isna(labels["r2"])
    c = result.report.counts
    assert (c.labels_in, c.labels_joined, c.labels_superseded) == (4, 1, 1)
    assert (c.labels_orphaned, c.labels_quarantined) == (1, 1)
    assert c.balanced()
    q = result.quarantine.set_index("_kind")
    assert "no record with this id" in " ".join(q.loc[["label"], "_reason"])
    all_reasons = " ".join(result.quarantine["_reason"])
    assert "label: 'maybe' is not one of the schema labels" in all_reasons


def test_empty_window_is_no_data_not_an_error(store: LocalStore):
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl([_rec(1)]))
    result = ingest(store, sample_schema(), DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=3))
    assert result.report.status == "no_data"
    assert result.records.empty and "x0" in result.records.columns
    assert result.report.counts.rows_in == 0


def test_csv_parquet_and_jsonl_read_alike(store: LocalStore):
    rows = [_rec(i, x0=float(i)) for i in range(3)]
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl(rows[:1]))
    store.write_text(f"requests/dt={DAY}/b.csv", pd.DataFrame(rows[1:2]).to_csv(index=False))
    store.write_bytes(f"requests/dt={DAY}/c.parquet", pd.DataFrame(rows[2:]).to_parquet())
    result = ingest(store, sample_schema(), DAY, DAY)
    assert sorted(result.records["x0"]) == [0.0, 1.0, 2.0]
    assert result.records["x0"].dtype == "float64"


def test_malformed_json_line_is_quarantined_with_its_line(store: LocalStore):
    text = _jsonl([_rec(1)]) + "{not json\n" + _jsonl([_rec(2)])
    store.write_text(f"requests/dt={DAY}/a.jsonl", text)
    result = ingest(store, sample_schema(), DAY, DAY)
    assert result.report.counts.accepted == 2
    row = result.quarantine.iloc[0]
    assert row["_line"] == 2 and "not valid JSON" in row["_reason"] and row["_raw"] == "{not json"
    assert result.report.counts.balanced()


def test_file_missing_a_required_column_names_file_and_column(store: LocalStore):
    rows = [{"id": "r1", "timestamp": "2026-03-01T00:00:00Z", "x0": 1.0, "segment": "north"}]
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl(rows))
    with pytest.raises(SchemaError, match=r"a\.jsonl: missing required column\(s\) \['x1'\]"):
        ingest(store, sample_schema(), DAY, DAY)


def test_unreadable_file_is_one_line_error_naming_it(store: LocalStore):
    store.write_bytes(f"requests/dt={DAY}/broken.parquet", b"PAR1 not really")
    with pytest.raises(StoreError, match=r"broken\.parquet: unreadable") as err:
        ingest(store, sample_schema(), DAY, DAY)
    assert "\n" not in str(err.value)


def test_missing_store_is_an_error(tmp_path: Path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "nope")


def test_record_with_inline_label_keeps_it_unless_feedback_overrides(store: LocalStore):
    rows = [dict(_rec(1), label="no"), dict(_rec(2), label="no")]
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl(rows))
    store.write_text(f"feedback/dt={DAY}/a.jsonl", _jsonl(
        [{"id": "r2", "label": "yes", "timestamp": "2026-03-01T12:00:00Z"}]))
    result = ingest(store, sample_schema(), DAY, DAY)
    assert list(result.records.sort_values("id")["label"]) == ["no", "yes"]


def _day_of_records(store: LocalStore, day: dt.date, n: int, prefix: str) -> None:
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    rows = [_rec(f"{prefix}{i}", ts=(start + dt.timedelta(seconds=86400 * i / n)).isoformat())
            for i in range(n)]
    store.write_text(f"requests/dt={day}/a.jsonl", _jsonl(rows))


def test_a_daily_run_just_after_midnight_judges_yesterday_whole(store: LocalStore):
    # Regression: the window was "today so far" -- a run at 00:03 tested three minutes.
    from driftloop.steps.ingest import run_ingest

    _day_of_records(store, DAY, 1000, "y")
    _day_of_records(store, DAY + dt.timedelta(days=1), 1000, "t")
    run_at = dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(0, 3), tzinfo=dt.UTC)
    window = run_ingest(store, sample_schema(), now=run_at, window_days=1, lookback_days=3)
    assert len(window.current) == 1000
    assert window.current["id"].str.startswith("ry").all()
    # a late start (05:00) or a catch-up judges the same window
    late = run_ingest(store, sample_schema(), now=run_at.replace(hour=5), window_days=1,
                      lookback_days=3)
    assert sorted(late.current["id"]) == sorted(window.current["id"])


def test_a_replay_never_reads_records_or_labels_stamped_after_its_logical_time(
    store: LocalStore,
):
    # Regression: ingest read whole dt= partitions, so a replay at T saw the rest of T's
    # day and its future labels.
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl([
        _rec(1, ts="2026-03-01T08:00:00+00:00"), _rec(2, ts="2026-03-01T16:00:00+00:00")]))
    store.write_text(f"feedback/dt={DAY}/a.jsonl", _jsonl([
        {"id": "r1", "label": "yes", "timestamp": "2026-03-01T09:00:00+00:00"},
        {"id": "r1", "label": "no", "timestamp": "2026-03-01T13:00:00+00:00"},
        {"id": "r2", "label": "no", "timestamp": "2026-03-01T17:00:00+00:00"},
    ]))
    noon = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    result = ingest(store, sample_schema(), DAY, DAY, until=noon)
    c = result.report.counts
    assert list(result.records["id"]) == ["r1"]
    assert result.records["label"].tolist() == ["yes"]  # the 13:00 correction is future
    assert (c.after_cutoff, c.labels_after_cutoff) == (1, 2)
    assert c.balanced()
    assert "after the run's logical time" in result.report.summary()


def test_an_integer_too_large_for_a_float_is_quarantined_not_a_crash(store: LocalStore):
    # Regression: one JSON integer above ~1e308 raised OverflowError in validation, and
    # every run whose lookback held that day failed.
    big = "1" + "0" * 400
    store.write_text(f"requests/dt={DAY}/a.jsonl",
                     json.dumps(_rec(1)) + "\n" + json.dumps(_rec(2)).replace(
                         '"x0": 0.5', f'"x0": {big}') + "\n")
    result = ingest(store, sample_schema(), DAY, DAY)
    assert list(result.records["id"]) == ["r1"]
    assert result.report.counts.quarantined == 1 and result.report.counts.balanced()
    assert result.quarantine["_reason"].iloc[0] == (
        "x0: infinite or beyond the float range (allow_infinite is false)")


def test_line_separators_inside_a_string_do_not_split_a_record(store: LocalStore):
    # Regression: str.splitlines() split JSONL on U+2028 / U+2029 / U+0085 too, and a
    # record holding one was lost at ingest.
    rows = [dict(_rec(i), segment="north") for i in range(3)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    text = text.replace('"r1"', '"r1\u2028x"').replace('"r2"', '"r2\u0085y"')
    store.write_text(f"requests/dt={DAY}/a.jsonl", text)
    result = ingest(store, sample_schema(), DAY, DAY)
    assert len(result.records) == 3 and result.report.counts.quarantined == 0
    assert "r1\u2028x" in set(result.records["id"])


def test_a_naive_time_is_utc_whatever_offset_another_row_carries(store: LocalStore):
    # Regression: parsed together with a +05:30 row, a naive 10:00 became 04:30Z and the
    # "latest label wins" rule picked the wrong label.
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl([
        _rec(1, ts="2026-03-01T08:00:00+05:30"), _rec(2, ts="2026-03-01T10:00:00")]))
    store.write_text(f"feedback/dt={DAY}/a.jsonl", _jsonl([
        {"id": "r2", "label": "no", "timestamp": "2026-03-01T10:30:00"},
        {"id": "r2", "label": "yes", "timestamp": "2026-03-01T15:00:00+05:30"},  # 09:30Z
    ]))
    result = ingest(store, sample_schema(), DAY, DAY)
    by_id = result.records.set_index("id")
    assert by_id.loc["r2", "timestamp"] == pd.Timestamp("2026-03-01T10:00:00Z")
    assert by_id.loc["r1", "timestamp"] == pd.Timestamp("2026-03-01T02:30:00Z")
    assert by_id.loc["r2", "label"] == "no"  # 10:30Z is later than 09:30Z


# --- issue 18: robust under bad input ----------------------------------------------------


def _refuse_scandir(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    # Tests run as root here, where mode 000 refuses nothing: refuse as the OS would.
    real = os.scandir

    def scandir(path=".", *args, **kwargs):
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(folder))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_partition_folder_is_an_error_naming_it(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
):
    # Regression: rglob skipped a folder it could not read, and ingest exited 0 without
    # the folder's rows.
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl([_rec(1)]))
    store.write_text(f"requests/dt={DAY}/late/b.jsonl", _jsonl([_rec(2)]))
    _refuse_scandir(monkeypatch, store.path(f"requests/dt={DAY}/late"))
    with pytest.raises(StoreError, match=r"dt=2026-03-01/late: cannot read folder "
                                         r"\(Permission denied\)") as err:
        ingest(store, sample_schema(), DAY, DAY)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder with mode 000")
def test_a_partition_folder_with_mode_000_is_an_error(store: LocalStore):
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl([_rec(1)]))
    folder = store.path(f"requests/dt={DAY}")
    folder.chmod(0)
    try:
        with pytest.raises(StoreError, match="dt=2026-03-01"):
            ingest(store, sample_schema(), DAY, DAY)
    finally:
        folder.chmod(0o755)


def test_an_unreadable_file_is_an_error_naming_it(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
):
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl([_rec(1)]))
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self.name == "a.jsonl":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(StoreError, match=r"a\.jsonl: cannot read \(Permission denied\)"):
        ingest(store, sample_schema(), DAY, DAY)


def test_files_ingest_does_not_read_are_listed_with_the_reason(store: LocalStore):
    # Regression: files with another extension were ignored without a word.
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl([_rec(1)]))
    names = ["b.JSONL", "c.ndjson", "d.jsonl.gz", "e.txt", "README"]
    for name in names:
        store.write_text(f"requests/dt={DAY}/{name}", _jsonl([_rec(9)]))
    store.write_text(f"feedback/dt={DAY}/f.CSV", "id,label,timestamp\n")
    report = ingest(store, sample_schema(), DAY, DAY).report
    assert report.counts.files == 1 and report.counts.files_skipped == 6
    assert sorted(Path(f).name for f in report.skipped_files) == sorted([*names, "f.CSV"])
    assert set(report.skipped_files.values()) == {
        "not read: ingest reads only .jsonl, .json, .csv, .parquet files (lower case, "
        "uncompressed)"}
    assert "6 file(s) skipped" in report.summary()
    assert type(report).from_json(report.to_json()).skipped_files == report.skipped_files


def test_a_json_file_holding_an_array_is_read_as_its_records(store: LocalStore):
    # Regression: a .json file was read as JSON Lines, so an array lost every record.
    text = "[\n  " + ",\n  ".join(json.dumps(_rec(i)) for i in range(3)) + ",\n  5\n]\n"
    store.write_text(f"requests/dt={DAY}/a.json", text)
    result = ingest(store, sample_schema(), DAY, DAY)
    assert sorted(result.records["id"]) == ["r0", "r1", "r2"]
    bad = result.quarantine.iloc[0]
    assert (bad["_line"], bad["_raw"], bad["_reason"]) == (5, "5", "not a JSON object")
    assert result.report.counts.balanced()


def test_a_broken_json_array_keeps_the_elements_before_the_break(store: LocalStore):
    text = "[" + json.dumps(_rec(1)) + ",\n" + json.dumps(_rec(2)) + ",\n{broken\n]"
    store.write_text(f"requests/dt={DAY}/a.json", text)
    result = ingest(store, sample_schema(), DAY, DAY)
    assert sorted(result.records["id"]) == ["r1", "r2"]
    bad = result.quarantine.iloc[0]
    assert bad["_line"] == 3 and bad["_raw"] == "{broken\n]"
    assert bad["_reason"].startswith("not valid JSON")


def test_a_pretty_printed_json_object_is_one_record(store: LocalStore):
    store.write_text(f"requests/dt={DAY}/a.json", json.dumps(_rec(1), indent=2))
    result = ingest(store, sample_schema(), DAY, DAY)
    assert list(result.records["id"]) == ["r1"] and result.quarantine.empty


@pytest.mark.parametrize("name", ["a.jsonl", "a.json", "a.csv"])
def test_a_utf8_byte_order_mark_does_not_cost_the_first_row(store: LocalStore, name: str):
    # Regression: "\ufeff{...}" was not valid JSON, so the first record was quarantined.
    rows = [_rec(1), _rec(2)]
    text = pd.DataFrame(rows).to_csv(index=False) if name.endswith(".csv") else _jsonl(rows)
    store.write_bytes(f"requests/dt={DAY}/{name}", b"\xef\xbb\xbf" + text.encode())
    result = ingest(store, sample_schema(), DAY, DAY)
    assert sorted(result.records["id"]) == ["r1", "r2"] and result.quarantine.empty


def test_ids_that_are_objects_arrays_or_booleans_are_quarantined(store: LocalStore):
    # Regression: they were stringified ("{'a': 1}", "True") and accepted.
    rows = [dict(_rec(0), id={"a": 1}), dict(_rec(0), id=[1]), dict(_rec(0), id=True),
            dict(_rec(0), id=7), _rec(8)]
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl(rows))
    result = ingest(store, sample_schema(), DAY, DAY)
    assert sorted(result.records["id"]) == ["7", "r8"]
    assert list(result.quarantine["_reason"]) == [
        "id: not a string or number (got object)", "id: not a string or number (got array)",
        "id: not a string or number (got boolean)"]


def test_an_invalid_utf8_byte_quarantines_its_line_only(store: LocalStore):
    # Regression: the byte became U+FFFD and the row was accepted with altered text.
    good, bad = json.dumps(_rec(1)).encode(), json.dumps(_rec(2)).encode()
    bad = bad.replace(b'"north"', b'"nor\xffth"')
    store.write_bytes(f"requests/dt={DAY}/a.jsonl", good + b"\n" + bad + b"\n")
    csv = pd.DataFrame([_rec(3), _rec(4)]).to_csv(index=False).encode()
    store.write_bytes(f"requests/dt={DAY}/b.csv", csv.replace(b"r4", b"r\xfe4"))
    result = ingest(store, sample_schema(), DAY, DAY)
    assert sorted(result.records["id"]) == ["r1", "r3"]
    q = result.quarantine.sort_values("_source").reset_index(drop=True)
    assert [Path(s).name for s in q["_source"]] == ["a.jsonl", "b.csv"]
    assert list(q["_line"]) == [2, 3]
    offset = bad.index(b"\xff")
    assert q.loc[0, "_reason"] == f"not valid UTF-8 (byte 0xff at offset {offset})"
    assert "nor\\xffth" in q.loc[0, "_raw"]
    assert q.loc[1, "_reason"] == "not valid UTF-8 (in column(s) id)"
    assert "\ufffd" not in "".join(result.records["segment"])
    result.quarantine.astype("string").to_parquet(Path(store.root) / "q.parquet")


def test_a_lone_surrogate_escape_is_quarantined(store: LocalStore, tmp_path: Path):
    # "\ud800" is valid JSON but no Unicode text: accepted, it broke the Parquet write.
    text = _jsonl([_rec(1)]) + json.dumps(dict(_rec(2), segment="\ud800")) + "\n"
    store.write_text(f"requests/dt={DAY}/a.jsonl", text)
    result = ingest(store, sample_schema(), DAY, DAY)
    assert list(result.records["id"]) == ["r1"]
    assert "lone UTF-16 surrogate" in result.quarantine["_reason"].iloc[0]
    result.records.to_parquet(tmp_path / "records.parquet")


def _one_column_schema(column: dict, **extra) -> Schema:
    return schema_from_dict({"columns": [column], **extra})


def test_infinite_numbers_are_quarantined_unless_the_column_allows_them(store: LocalStore):
    lines = ['{"id": "a", "timestamp": "2026-03-01T01:00:00Z", "x": Infinity}',
             '{"id": "b", "timestamp": "2026-03-01T01:00:00Z", "x": -1e400}',
             '{"id": "c", "timestamp": "2026-03-01T01:00:00Z", "x": 1' + "0" * 400 + "}",
             '{"id": "d", "timestamp": "2026-03-01T01:00:00Z", "x": 1.5}']
    store.write_text(f"requests/dt={DAY}/a.jsonl", "\n".join(lines) + "\n")
    store.write_text(f"requests/dt={DAY}/b.csv", "id,timestamp,x\ne,2026-03-01T01:00:00Z,inf\n")
    strict = ingest(store, _one_column_schema({"name": "x", "kind": "numeric"}), DAY, DAY)
    assert list(strict.records["id"]) == ["d"]
    assert set(strict.quarantine["_reason"]) == {
        "x: infinite or beyond the float range (allow_infinite is false)"}
    lenient = ingest(store, _one_column_schema(
        {"name": "x", "kind": "numeric", "allow_infinite": True}), DAY, DAY)
    by_id = lenient.records.set_index("id")["x"]
    assert by_id.to_dict() == {"a": math.inf, "b": -math.inf, "c": math.inf, "d": 1.5,
                               "e": math.inf}


def test_a_bool_column_allowing_true_and_false_accepts_booleans(store: LocalStore):
    # Regression: allowed [true, false] became "True"/"False" while values read "true",
    # so every row was quarantined ('true' not in allowed values).
    schema = _one_column_schema(
        {"name": "flag", "kind": "categorical", "dtype": "bool", "allowed": [True, False]})
    rows = [{"id": f"r{i}", "timestamp": "2026-03-01T01:00:00Z", "flag": v}
            for i, v in enumerate([True, False, "true", "FALSE", 1, "yes"])]
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl(rows))
    result = ingest(store, schema, DAY, DAY)
    assert list(result.records.sort_values("id")["flag"]) == ["true", "false", "true", "false"]
    assert list(result.quarantine["_reason"]) == ["flag: 1 is not a boolean",
                                                  "flag: 'yes' is not a boolean"]


def test_boolean_labels_match_the_schema_labels(store: LocalStore):
    schema = _one_column_schema({"name": "x", "kind": "numeric"}, labels=[True, False])
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl(
        [{"id": "r1", "timestamp": "2026-03-01T01:00:00Z", "x": 1.0}]))
    store.write_text(f"feedback/dt={DAY}/a.jsonl", _jsonl(
        [{"id": "r1", "label": True, "timestamp": "2026-03-01T02:00:00Z"}]))
    result = ingest(store, schema, DAY, DAY)
    assert list(result.records["label"]) == ["true"] and result.quarantine.empty


def test_a_window_whose_every_record_was_quarantined_is_a_named_error(store: LocalStore):
    # Regression: every row quarantined gave status no_data and exit 0.
    rows = [_rec(i, segment="mars") for i in range(3)] + [_rec(3, x0="x")]
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl(rows[:2]))
    store.write_text(f"requests/dt={DAY}/b.jsonl", _jsonl(rows[2:]))
    with pytest.raises(IngestError) as err:
        ingest(store, sample_schema(), DAY, DAY)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("ingest 2026-03-01..2026-03-01: all 4 records read from 2 "
                              "file(s) (")
    assert "a.jsonl" in message and "b.jsonl" in message
    assert "most common reason 'segment: <value> not in allowed values' (3x)" in message
    key = "quarantine/2026-03-01_2026-03-01.jsonl"
    assert message.endswith(f"quarantine written to {store.url(key)}")
    written = [json.loads(line) for line in store.read_text(key).splitlines()]
    assert len(written) == 4 and {w["_kind"] for w in written} == {"record"}
    assert err.value.result is not None and err.value.result.report.counts.balanced()
    assert isinstance(err.value, DriftloopError)


def test_a_window_whose_every_label_was_quarantined_is_a_named_error(store: LocalStore):
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl([_rec(1)]))
    store.write_text(f"feedback/dt={DAY}/a.jsonl", _jsonl(
        [{"id": "r1", "label": "maybe", "timestamp": "2026-03-01T12:00:00Z"}]))
    with pytest.raises(IngestError, match=r"all 1 labels read from 1 file\(s\) .* most common "
                                          r"reason 'label: <value> is not one of the schema"):
        ingest(store, sample_schema(), DAY, DAY)


def test_a_window_with_one_accepted_record_is_no_error(store: LocalStore):
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl([_rec(1), _rec(2, segment="mars")]))
    result = ingest(store, sample_schema(), DAY, DAY)
    assert result.report.counts.accepted == 1 and not store.list("quarantine")


def test_an_orphan_label_is_quarantined_as_its_own_line(store: LocalStore):
    # Regression: valid labels lost their row's index in validation, so an orphan after a
    # rejected feedback line was quarantined with the rejected line's file, line and text.
    store.write_text(f"requests/dt={DAY}/a.jsonl", _jsonl([_rec(1)]))
    store.write_text(f"feedback/dt={DAY}/a.jsonl", _jsonl([
        {"id": "r1", "label": "maybe", "timestamp": "2026-03-01T12:00:00+00:00"},
        {"id": "r1", "label": "yes", "timestamp": "2026-03-01T12:00:00+00:00"},
        {"id": "r9", "label": "no", "timestamp": "2026-03-01T12:00:00+00:00"},
    ]))
    q = ingest(store, sample_schema(), DAY, DAY).quarantine.set_index("_line")
    assert "not one of the schema labels" in q.loc[1, "_reason"] and '"maybe"' in q.loc[1, "_raw"]
    assert "no record with this id" in q.loc[3, "_reason"] and '"r9"' in q.loc[3, "_raw"]
    assert sorted(q.index) == [1, 3]
