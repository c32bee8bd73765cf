"""One shard of the current window, read straight from the day's request files.

The current window of a run (the complete days before its logical time, see
:func:`driftloop.steps.ingest.run_ingest`) is cut into shards by file: the readable files
of ``requests/dt=<day>/`` for the window's days and the days up to the logical time (a
record stamped in the window can be filed after midnight), sorted by key, file ``k``
going to shard ``k mod n``. A shard reads, validates (:func:`~driftloop.data.validate.
validate_records`, row by row as ingest does) and keeps the rows stamped inside the window,
one per ``id`` within the shard, so a pod holds one shard, never the day.

What it does not see, and why that is acceptable: ingest drops a record whose ``id`` was
already read earlier in the lookback (another day, or another shard's file); a shard only
knows its own files. The sink writes each acknowledged event once (issue 16's group
commit), so such duplicates are what ingest counts as ``duplicates``; a shard counts the
ones inside itself (:attr:`WindowShard.duplicates`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd

from driftloop.data.readers import REQUESTS, SUFFIXES, read_file
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.data.validate import validate_records
from driftloop.errors import DriftloopError

__all__ = ["WindowShard", "read_window_shard", "shard_of", "window_files"]


@dataclass
class WindowShard:
    """The rows of one shard of the current window.

    Attributes:
        shard: This shard's index.
        n_shards: Shards of the window.
        files: Store keys of the files it read.
        rows_in: Rows read (valid, invalid and outside the window).
        rejected: Rows the validation rejected (ingest quarantines them).
        outside: Valid rows stamped outside the window.
        duplicates: Rows dropped as a repeated ``id`` within the shard.
        frame: The kept rows (``id``, ``timestamp`` and the schema's features).
    """

    shard: int
    n_shards: int
    files: list[str]
    rows_in: int
    rejected: int
    outside: int
    duplicates: int
    frame: pd.DataFrame


def window_files(store: Store, first: dt.date, last: dt.date) -> list[str]:
    """Sorted keys of the readable request files of the partitions ``first``..``last``."""
    keys: list[str] = []
    day = first
    while day <= last:
        keys += [k for k in store.list(f"{REQUESTS}/dt={day.isoformat()}")
                 if k.endswith(SUFFIXES)]
        day += dt.timedelta(days=1)
    return sorted(keys)


def shard_of(keys: list[str], shard: int, n_shards: int) -> list[str]:
    """The keys of shard ``shard`` of ``n_shards`` (every ``n_shards``-th key).

    Raises:
        DriftloopError: ``n_shards`` below 1 or ``shard`` outside ``0..n_shards - 1``.
    """
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise DriftloopError(f"drift shard: shard {shard} of {n_shards}: need "
                             "0 <= shard < n_shards and n_shards >= 1")
    return keys[shard::n_shards]


def read_window_shard(store: Store, schema: Schema, *, start: dt.datetime, end: dt.datetime,
                      until: dt.datetime, shard: int = 0, n_shards: int = 1) -> WindowShard:
    """Read shard ``shard`` of the window ``[start, end)`` from the store.

    Args:
        store: The store holding ``requests/``.
        schema: The records' schema.
        start: First instant of the window (UTC).
        end: End of the window (exclusive; a UTC midnight).
        until: The run's logical time: partitions up to its date are read.
        shard: This shard's index.
        n_shards: Shards of the window.

    Returns:
        The shard's rows and its row accounting.

    Raises:
        DriftloopError: A bad shard index.
        StoreError: A file is unreadable.
    """
    keys = shard_of(window_files(store, start.date(),
                                 max((until - dt.timedelta(microseconds=1)).date(),
                                     start.date())), shard, n_shards)
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    frames, rows_in, rejected, outside = [], 0, 0, 0
    columns = ["id", "timestamp", *schema.feature_names]
    for key in keys:
        raw, unparsable = read_file(store, key)
        rows_in += len(raw) + len(unparsable)
        rejected += len(unparsable)
        if not len(raw):
            continue
        valid, bad = validate_records(raw, schema)
        rejected += len(bad)
        ts = pd.to_datetime(valid["timestamp"], utc=True)
        inside = ((ts >= lo) & (ts < hi)).to_numpy()
        outside += int((~inside).sum())
        frames.append(valid.loc[inside, [c for c in columns if c in valid]])
    frame = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame({c: pd.Series(dtype=object) for c in columns}))
    dup = frame["id"].duplicated(keep="first")
    return WindowShard(shard, n_shards, keys, rows_in, rejected, outside, int(dup.sum()),
                       frame.loc[~dup].reset_index(drop=True))
