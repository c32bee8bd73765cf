"""Read a window of records and feedback from the store, validate, join and account for rows.

Layout (see DESIGN.md): ``requests/dt=YYYY-MM-DD/*`` and ``feedback/dt=YYYY-MM-DD/*`` with
JSONL, CSV or Parquet files. Every row read is accounted for:
``rows_in == accepted + quarantined + duplicates`` (and the same for labels).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from driftloop.errors import SchemaError, StoreError
from driftloop.schema import Schema
from driftloop.serde import JsonResult
from driftloop.storage import Store
from driftloop.validate import LINE, RAW, REASON, SOURCE, validate_labels, validate_records

REQUESTS, FEEDBACK = "requests", "feedback"
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
QUARANTINE_COLUMNS = ["_kind", SOURCE, LINE, REASON, RAW]
_VALUE = re.compile(r"'[^']*'|(?<![\w.-])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


@dataclass
class IngestCounts:
    """Row accounting of one ingest.

    ``rows_in == accepted + quarantined + duplicates + after_cutoff`` and
    ``labels_in == labels_joined + labels_quarantined + labels_superseded + labels_orphaned
    + labels_after_cutoff``. ``after_cutoff`` counts valid rows stamped at or after the run's
    logical time (and labels stamped after it): a replay or backfill at time T must see only
    what a live run at T could have seen, so they are set aside, not accepted.
    """

    files: int = 0
    rows_in: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    labelled: int = 0
    labels_in: int = 0
    labels_joined: int = 0
    labels_quarantined: int = 0
    labels_superseded: int = 0
    labels_orphaned: int = 0
    after_cutoff: int = 0
    labels_after_cutoff: int = 0

    def balanced(self) -> bool:
        """Return whether both accounting identities hold."""
        rows = self.rows_in == (self.accepted + self.quarantined + self.duplicates
                                + self.after_cutoff)
        labels = self.labels_in == (
            self.labels_joined + self.labels_quarantined + self.labels_superseded
            + self.labels_orphaned + self.labels_after_cutoff
        )
        return rows and labels


@dataclass
class IngestReport(JsonResult):
    """What one ingest read and what it did with each row."""

    status: str  # "ok" or "no_data"
    start: str
    end: str
    counts: IngestCounts
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and timelines."""
        c = self.counts
        return (
            f"{self.status}: {c.rows_in} rows in = {c.accepted} accepted + {c.quarantined} "
            f"quarantined + {c.duplicates} duplicates"
            + (f" + {c.after_cutoff} after the run's logical time" if c.after_cutoff else "")
            + f"; {c.labelled} labelled "
            f"({c.labels_in} labels in, {c.labels_orphaned} without a record)"
        )


@dataclass
class IngestResult:
    """Accepted records (labels joined), quarantined rows and the report."""

    records: pd.DataFrame
    quarantine: pd.DataFrame
    report: IngestReport


def _utc(when: dt.datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(when)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _days(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise StoreError(f"ingest window: end {end} is before start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def _partition_keys(store: Store, kind: str, days: list[dt.date]) -> list[str]:
    keys: list[str] = []
    for day in days:
        keys += [
            k for k in store.list(f"{kind}/dt={day.isoformat()}") if k.endswith(SUFFIXES)
        ]
    return keys


def _parse_jsonl(data: bytes, url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, bad = [], []
    # JSON Lines are separated by "\n" only: str.splitlines() also splits on U+2028,
    # U+2029 and U+0085, which may stand unescaped inside a JSON string (a tweet).
    text = data.decode("utf-8", errors="replace")
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            reason = f"not valid JSON ({exc.msg})"
            bad.append({SOURCE: url, LINE: lineno, RAW: line, REASON: reason})
            continue
        if not isinstance(obj, dict):
            bad.append({SOURCE: url, LINE: lineno, RAW: line, REASON: "not a JSON object"})
            continue
        obj[SOURCE], obj[LINE], obj[RAW] = url, lineno, line
        rows.append(obj)
    return rows, bad


def read_file(store: Store, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read one JSONL, CSV or Parquet object into object-typed raw rows.

    Returns:
        ``(rows, unparsable)``: rows carry ``_source``, ``_line`` and ``_raw``; unparsable
        lines (JSONL only) come back with a ``_reason``.

    Raises:
        StoreError: The file cannot be read or parsed at all (naming the file).
    """
    url = store.url(key)
    data = store.read_bytes(key)
    unparsable: list[dict[str, Any]] = []
    try:
        if key.endswith((".jsonl", ".json")):
            rows, unparsable = _parse_jsonl(data, url)
            frame = pd.DataFrame(rows, dtype=object)
        elif key.endswith(".csv"):
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
            frame = frame.astype(object)
        else:
            frame = pd.read_parquet(io.BytesIO(data)).astype(object)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise StoreError(f"{url}: unreadable ({first})") from exc
    if not key.endswith((".jsonl", ".json")) and len(frame):
        frame[SOURCE] = url
        first_line = 2 if key.endswith(".csv") else 1  # CSV line 1 is the header
        frame[LINE] = range(first_line, first_line + len(frame))
        payload = frame.drop(columns=[SOURCE, LINE])
        frame[RAW] = [
            json.dumps(r, default=str) for r in payload.to_dict(orient="records")
        ]
    return frame, pd.DataFrame(unparsable, columns=[SOURCE, LINE, RAW, REASON])


def _check_columns(frame: pd.DataFrame, schema: Schema, url: str, kind: str) -> None:
    # A file missing a whole required column is a schema mismatch, not a few bad rows.
    if frame.empty:
        return
    if kind == REQUESTS:
        needed = [schema.id_column, schema.timestamp_column] + [
            c.name for c in schema.columns if c.required
        ]
    else:
        needed = [schema.id_column, schema.label_column, schema.timestamp_column]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise SchemaError(
            f"{url}: missing required column(s) {missing} declared by {schema.source}"
        )


def _read_kind(
    store: Store, schema: Schema, kind: str, keys: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    frames, bad = [], []
    for key in keys:
        frame, unparsable = read_file(store, key)
        _check_columns(frame, schema, store.url(key), kind)
        if len(frame):
            frames.append(frame)
        if len(unparsable):
            bad.append(unparsable)
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    unparsable = (
        pd.concat(bad, ignore_index=True) if bad else pd.DataFrame(columns=[SOURCE, LINE, RAW])
    )
    return raw, unparsable


def _quarantine_frame(kind: str, *frames: pd.DataFrame) -> pd.DataFrame:
    parts = [f.assign(_kind=kind)[QUARANTINE_COLUMNS] for f in frames if len(f)]
    if not parts:
        return pd.DataFrame(columns=QUARANTINE_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def _empty_records(schema: Schema) -> pd.DataFrame:
    cols = ["id", "timestamp", *schema.feature_names, "label", "label_timestamp"]
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    frame["timestamp"] = pd.Series(dtype="datetime64[ns, UTC]")
    frame["label_timestamp"] = pd.Series(dtype="datetime64[ns, UTC]")
    return frame


def ingest(
    store: Store, schema: Schema, start: dt.date, end: dt.date, *,
    until: dt.datetime | None = None,
) -> IngestResult:
    """Read, validate and join the records and feedback of the days ``start``..``end``.

    Labels join their record by ``id``; the latest feedback (by its timestamp) wins and
    overrides a label carried by the record itself. Exact duplicates by ``id`` keep the
    first row read (partitions in date order, files in name order).

    Args:
        store: The store holding ``requests/`` and ``feedback/``.
        schema: The declared schema.
        start: First partition day (inclusive).
        end: Last partition day (inclusive).
        until: The run's logical time: records stamped at or after it and labels stamped
            after it are set aside (counted as ``after_cutoff``), since a run at that time
            could not have seen them (``None``: keep everything read).

    Returns:
        The accepted records (typed, one per ``id``, with ``label``/``label_timestamp``),
        the quarantine (one row per rejected record or label with ``_reason``) and the
        report. An empty window gives status ``no_data``, not an error.

    Raises:
        StoreError: The store is missing or a file is unreadable.
        SchemaError: A file lacks a column the schema requires.
    """
    days = _days(start, end)
    req_keys = _partition_keys(store, REQUESTS, days)
    fb_keys = _partition_keys(store, FEEDBACK, days)
    counts = IngestCounts(files=len(req_keys) + len(fb_keys))

    raw, unparsable = _read_kind(store, schema, REQUESTS, req_keys)
    counts.rows_in = len(raw) + len(unparsable)
    if len(raw):
        valid, rejected = validate_records(raw, schema)
    else:
        valid, rejected = _empty_records(schema), pd.DataFrame(columns=[SOURCE, LINE, RAW, REASON])
    if until is not None and len(valid):
        later = (pd.to_datetime(valid["timestamp"], utc=True) >= _utc(until)).to_numpy()
        counts.after_cutoff = int(later.sum())
        valid = valid.loc[~later]
    dup = valid["id"].duplicated(keep="first")
    counts.duplicates = int(dup.sum())
    records = valid.loc[~dup].reset_index(drop=True)
    if "label" not in records:
        records["label"] = pd.Series(None, index=records.index, dtype=object)
        records["label_timestamp"] = pd.Series(pd.NaT, index=records.index,
                                               dtype="datetime64[ns, UTC]")

    fb_raw, fb_unparsable = _read_kind(store, schema, FEEDBACK, fb_keys)
    counts.labels_in = len(fb_raw) + len(fb_unparsable)
    if len(fb_raw):
        labels, fb_rejected = validate_labels(fb_raw, schema)
    else:
        labels = pd.DataFrame(columns=["id", "label", "label_timestamp"])
        fb_rejected = pd.DataFrame(columns=[SOURCE, LINE, RAW, REASON])
    if until is not None and len(labels):
        later = (pd.to_datetime(labels["label_timestamp"], utc=True) > _utc(until)).to_numpy()
        counts.labels_after_cutoff = int(later.sum())
        labels = labels.loc[~later]
    labels = labels.sort_values("label_timestamp", kind="stable")
    latest = ~labels["id"].duplicated(keep="last")
    counts.labels_superseded = int((~latest).sum())
    labels = labels.loc[latest]
    known = labels["id"].isin(set(records["id"]))
    orphans = fb_raw.loc[labels.index[~known], [SOURCE, LINE, RAW]] if len(fb_raw) else None
    counts.labels_orphaned = int((~known).sum())
    labels = labels.loc[known].set_index("id")
    counts.labels_joined = len(labels)
    if len(labels):
        hit = records["id"].isin(labels.index)
        ids = records.loc[hit, "id"]
        records.loc[hit, "label"] = labels.loc[ids, "label"].to_numpy()
        records.loc[hit, "label_timestamp"] = labels.loc[ids, "label_timestamp"].to_numpy()

    counts.accepted = len(records)
    counts.quarantined = len(rejected) + len(unparsable)
    counts.labels_quarantined = len(fb_rejected) + len(fb_unparsable)
    counts.labelled = int(records["label"].notna().sum())
    orphan_frame = (
        orphans.assign(**{REASON: f"{schema.id_column}: no record with this id in the window"})
        if orphans is not None and len(orphans)
        else pd.DataFrame(columns=[SOURCE, LINE, RAW, REASON])
    )
    quarantine = pd.concat(
        [
            _quarantine_frame("record", rejected, unparsable),
            _quarantine_frame("label", fb_rejected, fb_unparsable, orphan_frame),
        ],
        ignore_index=True,
    )
    reasons: dict[str, int] = {}
    for text in quarantine[REASON]:
        for part in str(text).split("; "):
            # Count by field and rule, not by the offending value.
            field_name, _, rule = part.partition(": ")
            key = f"{field_name}: {_VALUE.sub('<value>', rule)}"
            reasons[key] = reasons.get(key, 0) + 1
    status = "ok" if counts.accepted else "no_data"
    report = IngestReport(
        status=status,
        start=start.isoformat(),
        end=end.isoformat(),
        counts=counts,
        quarantine_reasons=reasons,
        files=[store.url(k) for k in req_keys + fb_keys],
    )
    records = records.sort_values(["timestamp", "id"], kind="stable").reset_index(drop=True)
    return IngestResult(records=records, quarantine=quarantine, report=report)
