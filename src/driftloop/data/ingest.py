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
import json
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from driftloop.data.readers import (
    FEEDBACK,
    REQUESTS,
    SKIPPED_REASON,
    empty_records,
    partition_keys,
    quarantine_frame,
    read_kind,
)
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.data.validate import LINE, RAW, REASON, SOURCE, validate_labels, validate_records
from driftloop.errors import DriftloopError, StoreError
from driftloop.serde import JsonResult

_VALUE = re.compile(r"'[^']*'|(?<![\w.-])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])")


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


#: Columns a part's rows carry for the merge: the file and the row's place in it, so the
#: merge restores the order of one reading (partitions by date, files by name).
_FILE, _AT = "_file", "_at"


@dataclass
class IngestPart:
    """What one shard of the lookback read: typed valid rows, rejects, and its files.

    A shard owns the partition files whose key hashes to it (:func:`shard_owns`), so the
    shards split the files exactly once however many there are, whatever order a store
    lists them in. Its memory is that of its own files' raw rows; the merge
    (:func:`merge_parts`) holds the typed rows of every shard, which training needs anyway.

    Attributes:
        shard: This shard's index.
        n_shards: Shards of the lookback.
        start: First partition day (ISO date).
        end: Last partition day (ISO date).
        request_files: Store keys of the request files it read.
        feedback_files: Store keys of the feedback files it read.
        skipped: Files of the partitions that ingest does not read, with the reason.
        rows_in: Request rows read (valid or not).
        labels_in: Feedback rows read (valid or not).
        records: Valid records, typed, with ``_file`` (the file's URL) and ``_at``.
        labels: Valid labels with ``_line``, ``_raw``, ``_file`` and ``_at``.
        quarantine: Rejected records and labels (``_kind``, ``_source``, ``_line``,
            ``_reason``, ``_raw``).
    """

    shard: int
    n_shards: int
    start: str
    end: str
    request_files: list[str]
    feedback_files: list[str]
    skipped: dict[str, str]
    rows_in: int
    labels_in: int
    records: pd.DataFrame
    labels: pd.DataFrame
    quarantine: pd.DataFrame

    _FRAMES = ("records", "labels", "quarantine")

    def save(self, folder: str | Path) -> None:
        """Write the part as three Parquet files and ``part.json`` in ``folder``."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        for name in self._FRAMES:
            frame = getattr(self, name)
            (frame.astype("string") if name == "quarantine" else frame).to_parquet(
                root / f"{name}.parquet", index=False)
        meta = {k: v for k, v in vars(self).items() if k not in self._FRAMES}
        (root / "part.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> IngestPart:
        """Read a part written by :meth:`save`.

        Raises:
            IngestError: The folder is not a complete part.
        """
        root = Path(folder)
        try:
            meta = json.loads((root / "part.json").read_text())
            frames = {n: pd.read_parquet(root / f"{n}.parquet") for n in cls._FRAMES}
        except (OSError, ValueError) as exc:
            raise IngestError(f"{root}: not an ingest shard's part ({exc})") from None
        quarantine = frames["quarantine"].astype(object)
        quarantine[LINE] = pd.to_numeric(quarantine[LINE])
        return cls(**meta, records=frames["records"], labels=frames["labels"],
                   quarantine=quarantine.where(quarantine.notna(), None))


def shard_owns(key: str, shard: int, n_shards: int) -> bool:
    """Whether file ``key`` belongs to shard ``shard`` of ``n_shards`` (by CRC-32 of the key).

    Raises:
        DriftloopError: ``n_shards`` below 1 or ``shard`` outside ``0..n_shards - 1``.
    """
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise DriftloopError(f"ingest shard: shard {shard} of {n_shards}: need "
                             "0 <= shard < n_shards and n_shards >= 1")
    return n_shards == 1 or zlib.crc32(key.encode()) % n_shards == shard


def _placed(valid: pd.DataFrame, raw: pd.DataFrame, keep: tuple[str, ...]) -> pd.DataFrame:
    """``valid`` (indexed like ``raw``) with its rows' file, place in it and ``keep`` columns."""
    if not len(raw):
        return valid.assign(**{c: pd.Series(dtype=object) for c in (*keep, _FILE)},
                            **{_AT: pd.Series(dtype="int64")})
    at = raw.groupby(SOURCE, sort=False).cumcount()
    extra = raw.loc[valid.index, [SOURCE, *keep]].rename(columns={SOURCE: _FILE})
    return pd.concat([valid, extra.assign(**{_AT: at.loc[valid.index]})], axis=1).reset_index(
        drop=True)


def read_part(store: Store, schema: Schema, start: dt.date, end: dt.date, *,
              shard: int = 0, n_shards: int = 1) -> IngestPart:
    """Read and validate the request and feedback files of ``start``..``end`` this shard owns.

    Raises:
        StoreError: The store is missing, or a file or partition folder is unreadable.
        SchemaError: A file lacks a column the schema requires.
        DriftloopError: A bad shard index.
    """
    days = _days(start, end)
    skipped: dict[str, str] = {}
    req_keys = [k for k in partition_keys(store, REQUESTS, days, skipped)
                if shard_owns(k, shard, n_shards)]
    fb_keys = [k for k in partition_keys(store, FEEDBACK, days, skipped)
               if shard_owns(k, shard, n_shards)]
    raw, unparsable = read_kind(store, schema, REQUESTS, req_keys)
    if len(raw):
        valid, rejected = validate_records(raw, schema, keep_index=True)
    else:
        valid, rejected = empty_records(schema), pd.DataFrame(columns=[SOURCE, LINE, RAW, REASON])
    fb_raw, fb_unparsable = read_kind(store, schema, FEEDBACK, fb_keys)
    if len(fb_raw):
        labels, fb_rejected = validate_labels(fb_raw, schema, keep_index=True)
    else:
        labels = pd.DataFrame(columns=["id", "label", "label_timestamp"])
        fb_rejected = pd.DataFrame(columns=[SOURCE, LINE, RAW, REASON])
    quarantine = pd.concat([quarantine_frame("record", rejected, unparsable),
                            quarantine_frame("label", fb_rejected, fb_unparsable)],
                           ignore_index=True)
    return IngestPart(
        shard, n_shards, start.isoformat(), end.isoformat(), req_keys, fb_keys, skipped,
        rows_in=len(raw) + len(unparsable), labels_in=len(fb_raw) + len(fb_unparsable),
        records=_placed(valid, raw, ()),
        labels=_placed(labels, fb_raw, (LINE, RAW)),
        quarantine=quarantine)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The rows of ``frames``; an empty shard does not decide a column's type."""
    return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)


def _check_parts(parts: Sequence[IngestPart]) -> None:
    """Raise unless ``parts`` are every shard of one split of one lookback, once each."""
    if not parts:
        raise IngestError("ingest merge: no shard parts given")
    first = parts[0]
    for part in parts:
        if (part.start, part.end, part.n_shards) != (first.start, first.end, first.n_shards):
            raise IngestError(
                f"ingest merge: shard {part.shard} read {part.start}..{part.end} in "
                f"{part.n_shards} shards, shard {first.shard} {first.start}..{first.end} in "
                f"{first.n_shards}: run again (or set run_date)")
    shards = sorted(p.shard for p in parts)
    if shards != list(range(first.n_shards)):
        raise IngestError(f"ingest merge: got shards {shards} of {first.n_shards}; each of "
                          f"0..{first.n_shards - 1} must be given once")


def merge_parts(store: Store, schema: Schema, parts: Sequence[IngestPart], *,
                until: dt.datetime | None = None) -> IngestResult:
    """Join the shards' parts into the lookback's records: what one reading would give.

    The rows are put back in the order of one reading (partitions by date, files by name,
    rows by place) before anything depends on order, so duplicates keep the same row and
    ties between labels break the same way however the files were split.

    Args:
        store: The store (an all-quarantined lookback writes its quarantine there).
        schema: The declared schema.
        parts: Every shard's part, one each (:func:`read_part`).
        until: See :func:`ingest`.

    Raises:
        IngestError: The parts do not make one whole lookback, or every record (or
            label) read was quarantined.
    """
    _check_parts(parts)
    parts = sorted(parts, key=lambda p: p.shard)
    req_keys = sorted(k for p in parts for k in p.request_files)
    fb_keys = sorted(k for p in parts for k in p.feedback_files)
    skipped = {k: v for p in parts for k, v in sorted(p.skipped.items())}
    counts = IngestCounts(files=len(req_keys) + len(fb_keys), files_skipped=len(skipped),
                          rows_in=sum(p.rows_in for p in parts),
                          labels_in=sum(p.labels_in for p in parts))
    order = [_FILE, _AT]
    valid = _concat([p.records for p in parts]).sort_values(
        order, kind="stable").reset_index(drop=True)
    if until is not None and len(valid):
        later = (pd.to_datetime(valid["timestamp"], utc=True) >= _utc(until)).to_numpy()
        counts.after_cutoff = int(later.sum())
        valid = valid.loc[~later]
    dup = valid["id"].duplicated(keep="first")
    counts.duplicates = int(dup.sum())
    records = valid.loc[~dup].drop(columns=order).reset_index(drop=True)
    if "label" not in records:
        records["label"] = pd.Series(None, index=records.index, dtype=object)
        records["label_timestamp"] = pd.Series(pd.NaT, index=records.index,
                                               dtype="datetime64[ns, UTC]")

    # latest label first by time, ties in the order of one reading
    labels = _concat([p.labels for p in parts]).sort_values(["label_timestamp", *order],
                                                            kind="stable")
    if until is not None and len(labels):
        later = (pd.to_datetime(labels["label_timestamp"], utc=True) > _utc(until)).to_numpy()
        counts.labels_after_cutoff = int(later.sum())
        labels = labels.loc[~later]
    latest = ~labels["id"].duplicated(keep="last")
    counts.labels_superseded = int((~latest).sum())
    labels = labels.loc[latest]
    known = labels["id"].isin(set(records["id"]))
    orphans = (labels.loc[~known, [_FILE, LINE, RAW]].rename(columns={_FILE: SOURCE})
               if len(labels) else None)
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

    shards_q = _concat([p.quarantine for p in parts])
    counts.accepted = len(records)
    counts.quarantined = int((shards_q["_kind"] == "record").sum())
    counts.labels_quarantined = int((shards_q["_kind"] == "label").sum())
    counts.labelled = int(records["label"].notna().sum())
    orphan_frame = (
        orphans.assign(**{REASON: f"{schema.id_column}: no record with this id in the window"})
        if orphans is not None and len(orphans)
        else pd.DataFrame(columns=[SOURCE, LINE, RAW, REASON])
    )
    quarantine = pd.concat(
        [shards_q.loc[shards_q["_kind"] == "record"], shards_q.loc[shards_q["_kind"] == "label"],
         quarantine_frame("label", orphan_frame)],
        ignore_index=True,
    )
    status = "ok" if counts.accepted else "no_data"
    report = IngestReport(
        status=status,
        start=parts[0].start,
        end=parts[0].end,
        counts=counts,
        quarantine_reasons=dict(_reason_counts(quarantine[REASON])),
        files=[store.url(k) for k in req_keys + fb_keys],
        skipped_files=skipped,
    )
    records = records.sort_values(["timestamp", "id"], kind="stable").reset_index(drop=True)
    result = IngestResult(records=records, quarantine=quarantine, report=report)
    _fail_if_all_quarantined(store, result)
    return result


def ingest(
    store: Store, schema: Schema, start: dt.date, end: dt.date, *,
    until: dt.datetime | None = None,
) -> IngestResult:
    """Read, validate and join the records and feedback of the days ``start``..``end``.

    Labels join their record by ``id``; the latest feedback (by its timestamp) wins and
    overrides a label carried by the record itself. Exact duplicates by ``id`` keep the
    first row read (partitions in date order, files in name order). One shard of one:
    :func:`read_part` then :func:`merge_parts`, as the sharded pipeline does.

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
    return merge_parts(store, schema, [read_part(store, schema, start, end)], until=until)


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
