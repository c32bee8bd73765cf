"""Read a window of records and feedback from the store, validate, join and account for rows.

Layout (see DESIGN.md): ``requests/dt=YYYY-MM-DD/*`` and ``feedback/dt=YYYY-MM-DD/*`` with
JSONL, CSV or Parquet files. Every row read is accounted for:
``rows_in == accepted + quarantined + duplicates`` (and the same for labels).

Bad input never costs a row silently: a line that is not valid UTF-8, JSON or a JSON object
is quarantined with a reason (its ``_source`` and ``_line`` name the file and line); files
with another extension are listed in the report as skipped; an unreadable file or folder
is a :class:`~driftloop.errors.StoreError` naming it; and a window whose every row was
quarantined is an :class:`IngestError` (after the quarantine is written to the store).
A ``.json`` file may hold JSON Lines, one object, or an array of objects (``_line`` is
then the line where each element starts).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from driftloop.data.schema import Schema
from driftloop.data.storage import LocalStore, Store
from driftloop.data.validate import LINE, RAW, REASON, SOURCE, validate_labels, validate_records
from driftloop.errors import DriftloopError, SchemaError, StoreError
from driftloop.serde import JsonResult

REQUESTS, FEEDBACK = "requests", "feedback"
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
QUARANTINE_COLUMNS = ["_kind", SOURCE, LINE, REASON, RAW]
_VALUE = re.compile(r"'[^']*'|(?<![\w.-])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")
SKIPPED_REASON = f"not read: ingest reads only {', '.join(SUFFIXES)} files (lower case, " \
    "uncompressed)"
_BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON text of a UTF-16 surrogate
_SURROGATE = re.compile("[\udc80-\udcff]")  # an invalid byte after surrogateescape


@dataclass
class IngestCounts:
    """Row accounting of one ingest.

    ``rows_in == accepted + quarantined + duplicates + after_cutoff`` and
    ``labels_in == labels_joined + labels_quarantined + labels_superseded + labels_orphaned
    + labels_after_cutoff``. ``after_cutoff`` counts valid rows stamped at or after the run's
    logical time (and labels stamped after it): a replay or backfill at time T must see only
    what a live run at T could have seen, so they are set aside, not accepted. ``files``
    counts the files read, ``files_skipped`` the other files of the window's partitions
    (named in :attr:`IngestReport.skipped_files`).
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
    files_skipped: int = 0

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
    #: Files under the window's partitions that were not read, with the reason.
    skipped_files: dict[str, str] = field(default_factory=dict)
    #: When the run's ingest step started (ISO-8601 UTC; "" when not run as a step): the
    #: start of the run, for its duration.
    started_at: str = ""

    def summary(self) -> str:
        """One line for logs and timelines."""
        c = self.counts
        return (
            f"{self.status}: {c.rows_in} rows in = {c.accepted} accepted + {c.quarantined} "
            f"quarantined + {c.duplicates} duplicates"
            + (f" + {c.after_cutoff} after the run's logical time" if c.after_cutoff else "")
            + f"; {c.labelled} labelled "
            f"({c.labels_in} labels in, {c.labels_orphaned} without a record)"
            + (f"; {c.files_skipped} file(s) skipped ({SKIPPED_REASON})"
               if c.files_skipped else "")
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


class IngestError(DriftloopError):
    """Rows were read but none can be used: every row of a kind was quarantined.

    ``result`` holds what the ingest produced (the quarantine and the report), so a caller
    can still write them; :func:`ingest` has already written the quarantine to the store.
    """

    def __init__(self, message: str, result: IngestResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def _check_folder(store: Store, prefix: str) -> None:
    """Raise when a local partition folder, or one below it, cannot be listed.

    ``Path.rglob`` (behind :meth:`LocalStore.list`) skips a folder it may not read, so
    without this a folder with mode 000 lost its rows with exit 0.

    Raises:
        StoreError: Naming the folder and the OS error.
    """
    if not isinstance(store, LocalStore):
        return  # an object store has no folders to be refused
    base = store.path(prefix)
    try:
        os.stat(base)
    except (FileNotFoundError, NotADirectoryError):
        return  # no partition for that day
    except OSError as exc:
        raise StoreError(f"{base}: cannot read folder ({exc.strerror})") from exc

    def fail(exc: OSError) -> None:
        raise StoreError(f"{exc.filename or base}: cannot read folder ({exc.strerror})") from exc

    for _ in os.walk(base, onerror=fail):
        pass


def _partition_keys(
    store: Store, kind: str, days: list[dt.date], skipped: dict[str, str]
) -> list[str]:
    """Keys of the readable files of ``kind`` for ``days``; other files go to ``skipped``."""
    keys: list[str] = []
    for day in days:
        prefix = f"{kind}/dt={day.isoformat()}"
        _check_folder(store, prefix)
        for key in store.list(prefix):
            if key.endswith(SUFFIXES):
                keys.append(key)
            else:
                skipped[store.url(key)] = SKIPPED_REASON
    return keys


def _bad(url: str, lineno: int, raw: str, reason: str) -> dict[str, Any]:
    if _SURROGATE.search(raw):
        # keep invalid bytes visible as \xNN: a lone surrogate cannot be written to Parquet
        raw = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return {SOURCE: url, LINE: lineno, RAW: raw, REASON: reason}


def _json_row(obj: Any, raw: str, url: str, lineno: int) -> tuple[dict[str, Any] | None, str]:
    """``(row, "")`` for a parsed JSON object, else ``(None, reason)``."""
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    if _SURROGATE.search(raw):
        return None, "not valid UTF-8"
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            # "\ud800" alone is valid JSON but no Unicode text: Parquet cannot store it
            return None, "not valid Unicode (a lone UTF-16 surrogate escape)"
    obj[SOURCE], obj[LINE], obj[RAW] = url, lineno, raw
    return obj, ""


def _parse_jsonl(data: bytes, url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, bad = [], []
    # JSON Lines are separated by "\n" only: str.splitlines() also splits on U+2028,
    # U+2029 and U+0085, which may stand unescaped inside a JSON string (a tweet). Bytes
    # are split before decoding (0x0A is never part of a UTF-8 sequence), so one invalid
    # byte costs its line only, instead of becoming U+FFFD inside an accepted row.
    for lineno, chunk in enumerate(data.removeprefix(_BOM).split(b"\n"), 1):
        chunk = chunk.removesuffix(b"\r")
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raw = chunk.decode("utf-8", errors="backslashreplace")
            reason = f"not valid UTF-8 (byte 0x{chunk[exc.start]:02x} at offset {exc.start})"
            bad.append(_bad(url, lineno, raw, reason))
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as exc:
            # ValueError: JSONDecodeError, or an integer beyond Python's 4,300 digits
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            bad.append(_bad(url, lineno, line, f"not valid JSON ({msg})"))
            continue
        row, reason = _json_row(obj, line, url, lineno)
        if row is None:
            bad.append(_bad(url, lineno, line, reason))
        else:
            rows.append(row)
    return rows, bad


def _skip_ws(text: str, pos: int) -> int:
    """The first position at or after ``pos`` that is not JSON whitespace."""
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def _parse_json_array(text: str, url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each element of a JSON array as a row; ``_line`` is the line where it starts.

    Elements are decoded one by one, so a broken element costs the rest of the file (one
    quarantined row holding it), not the elements before it.
    """
    rows: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, text.index("[") + 1)
    lineno, counted = 1, 0

    def line_at(at: int) -> int:
        nonlocal lineno, counted
        lineno += text.count("\n", counted, at)
        counted = at
        return lineno

    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            start = line_at(pos)
            try:
                obj, end = decoder.raw_decode(text, pos)
            except (ValueError, RecursionError) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
                bad.append(_bad(url, start, text[pos:], f"not valid JSON ({msg})"))
                return rows, bad
            row, reason = _json_row(obj, text[pos:end], url, start)
            if row is None:
                bad.append(_bad(url, start, text[pos:end], reason))
            else:
                rows.append(row)
            pos = _skip_ws(text, end)
            if text.startswith(",", pos):
                pos = _skip_ws(text, pos + 1)
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            reason = "not valid JSON (expected ',' or ']' in the array)"
            bad.append(_bad(url, line_at(pos), text[pos:], reason))
            return rows, bad
    if text[pos:].strip():
        bad.append(_bad(url, line_at(pos), text[pos:], "not valid JSON (text after the array)"))
    return rows, bad


def _parse_json(data: bytes, url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A ``.json`` file: an array of objects, one (pretty-printed) object, or JSON Lines."""
    body = data.removeprefix(_BOM)
    # surrogateescape: an invalid byte costs the element holding it (see _json_row)
    text = body.decode("utf-8", errors="surrogateescape")
    head = text.lstrip(" \t\r\n")[:1]
    if head == "[":
        return _parse_json_array(text, url)
    if head == "{" and "\n" in text.strip():
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return _parse_jsonl(body, url)  # more than one object: JSON Lines
        row, reason = _json_row(obj, text.strip(), url, 1)
        return ([row], []) if row is not None else ([], [_bad(url, 1, text.strip(), reason)])
    return _parse_jsonl(body, url)


def _split_bad_utf8(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Set aside CSV rows holding bytes that are not UTF-8 (read with surrogateescape)."""
    payload = frame.drop(columns=[SOURCE, LINE, RAW])
    hit = payload.apply(
        lambda col: col.map(lambda v: isinstance(v, str) and _SURROGATE.search(v) is not None)
    ).any(axis=1) if len(payload.columns) else pd.Series(False, index=frame.index)
    if not hit.any():
        return frame, []
    bad = []
    for i in frame.index[hit]:
        cols = [str(c) for c in payload.columns
                if isinstance(payload.at[i, c], str) and _SURROGATE.search(payload.at[i, c])]
        bad.append(_bad(frame.at[i, SOURCE], int(frame.at[i, LINE]), frame.at[i, RAW],
                        f"not valid UTF-8 (in column(s) {', '.join(cols)})"))
    return frame.loc[~hit], bad


def read_file(store: Store, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read one JSONL, JSON, CSV or Parquet object into object-typed raw rows.

    Returns:
        ``(rows, unparsable)``: rows carry ``_source``, ``_line`` and ``_raw``; lines that
        are not valid UTF-8 (JSON, CSV) or not a JSON object come back with a ``_reason``.

    Raises:
        StoreError: The file cannot be read or parsed at all (naming the file).
    """
    url = store.url(key)
    data = store.read_bytes(key)
    unparsable: list[dict[str, Any]] = []
    if key.endswith((".jsonl", ".json")):
        # never raises on content: every bad line is a quarantined row
        parse = _parse_json if key.endswith(".json") else _parse_jsonl
        rows, unparsable = parse(data, url)
        frame = pd.DataFrame(rows, dtype=object)
        return frame, pd.DataFrame(unparsable, columns=[SOURCE, LINE, RAW, REASON])
    try:
        if key.endswith(".csv"):
            # surrogateescape: an invalid byte costs its row (below), not the whole file
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False,
                                encoding_errors="surrogateescape")
            frame = frame.astype(object)
        else:
            frame = pd.read_parquet(io.BytesIO(data)).astype(object)
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise StoreError(f"{url}: unreadable ({first})") from exc
    if any(_SURROGATE.search(str(c)) for c in frame.columns):
        raise StoreError(f"{url}: unreadable (the header is not valid UTF-8)")
    if len(frame):
        frame[SOURCE] = url
        first_line = 2 if key.endswith(".csv") else 1  # CSV line 1 is the header
        frame[LINE] = range(first_line, first_line + len(frame))
        payload = frame.drop(columns=[SOURCE, LINE])
        frame[RAW] = [
            json.dumps(r, default=str) for r in payload.to_dict(orient="records")
        ]
        if key.endswith(".csv"):
            frame, unparsable = _split_bad_utf8(frame)
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
        report. An empty window gives status ``no_data``, not an error. Files of the
        window's partitions that ingest does not read are listed in
        ``report.skipped_files`` with the reason.

    Raises:
        StoreError: The store is missing, or a file or partition folder is unreadable.
        SchemaError: A file lacks a column the schema requires.
        IngestError: Records (or labels) were read and every one was quarantined; the
            quarantine is first written to ``quarantine/<start>_<end>.jsonl`` in the store.
    """
    days = _days(start, end)
    skipped: dict[str, str] = {}
    req_keys = _partition_keys(store, REQUESTS, days, skipped)
    fb_keys = _partition_keys(store, FEEDBACK, days, skipped)
    counts = IngestCounts(files=len(req_keys) + len(fb_keys), files_skipped=len(skipped))

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
        if "label_source" in labels:
            # the feedback's source (user or client id), for the training plan's test of
            # each source's agreement with the consensus
            if "label_source" not in records:
                records["label_source"] = pd.Series(None, index=records.index, dtype=object)
            records.loc[hit, "label_source"] = labels.loc[ids, "label_source"].to_numpy()

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
    status = "ok" if counts.accepted else "no_data"
    report = IngestReport(
        status=status,
        start=start.isoformat(),
        end=end.isoformat(),
        counts=counts,
        quarantine_reasons=dict(_reason_counts(quarantine[REASON])),
        files=[store.url(k) for k in req_keys + fb_keys],
        skipped_files=skipped,
    )
    records = records.sort_values(["timestamp", "id"], kind="stable").reset_index(drop=True)
    result = IngestResult(records=records, quarantine=quarantine, report=report)
    _fail_if_all_quarantined(store, result)
    return result


def _reason_counts(reasons: pd.Series) -> Counter[str]:
    """How often each rule was broken, counted by field and rule, not by offending value."""
    counts: Counter[str] = Counter()
    for text in reasons:
        for part in str(text).split("; "):
            field_name, sep, rule = part.partition(": ")
            key = f"{field_name}: {_VALUE.sub('<value>', rule)}" if sep else _VALUE.sub(
                "<value>", part)
            counts[key] += 1
    return counts


def _fail_if_all_quarantined(store: Store, result: IngestResult) -> None:
    """Raise :class:`IngestError` when every record (or label) read was quarantined.

    Such a window is a mismatch between data and schema (a renamed category, a bool
    written as text), not a quiet day: reporting ``no_data`` with exit 0 hid it. The
    quarantine is written to the store first, so the rows and reasons are not lost.
    """
    c, report, quarantine = result.report.counts, result.report, result.quarantine
    problems = []
    for kind, label, n_in, n_bad in (("record", "records", c.rows_in, c.quarantined),
                                     ("label", "labels", c.labels_in, c.labels_quarantined)):
        if not n_in or n_bad != n_in:
            continue
        rows = quarantine.loc[quarantine["_kind"] == kind]
        files = sorted({str(s) for s in rows[SOURCE]})
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        reason, times = _reason_counts(rows[REASON]).most_common(1)[0]
        problems.append(f"all {n_in} {label} read from {len(files)} file(s) ({shown}) were "
                        f"quarantined; most common reason {reason!r} ({times}x)")
    if not problems:
        return
    key = f"quarantine/{report.start}_{report.end}.jsonl"
    lines = [json.dumps(r, default=str) for r in quarantine.to_dict(orient="records")]
    try:
        store.write_text(key, "".join(line + "\n" for line in lines))
        where = f"quarantine written to {store.url(key)}"
    except StoreError as exc:
        where = f"the quarantine could not be written ({exc})"
    message = f"ingest {report.start}..{report.end}: " + "; ".join(problems) + f"; {where}"
    raise IngestError(message.replace("\n", "\\n"), result)
