"""Read the store's partition files into raw, object-typed rows; never lose a line.

One function per format (JSON Lines, JSON, CSV, Parquet) behind :func:`read_file`; every
line that is not valid UTF-8, JSON or a JSON object comes back as an unparsable row with
its reason. :mod:`driftloop.data.ingest` validates and joins what these return.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
from typing import Any

import pandas as pd

from driftloop.data.schema import Schema
from driftloop.data.storage import LocalStore, Store
from driftloop.data.validate import LINE, RAW, REASON, SOURCE
from driftloop.errors import SchemaError, StoreError

REQUESTS, FEEDBACK = "requests", "feedback"
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
QUARANTINE_COLUMNS = ["_kind", SOURCE, LINE, REASON, RAW]
SKIPPED_REASON = f"not read: ingest reads only {', '.join(SUFFIXES)} files (lower case, " \
    "uncompressed)"
_BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON text of a UTF-16 surrogate
_SURROGATE = re.compile("[\udc80-\udcff]")  # an invalid byte after surrogateescape


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


def partition_keys(
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


def read_kind(
    store: Store, schema: Schema, kind: str, keys: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the files ``keys`` of ``kind``: ``(rows, unparsable)`` over all of them."""
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


def quarantine_frame(kind: str, *frames: pd.DataFrame) -> pd.DataFrame:
    """Rejected rows of ``kind`` (record or label) in the quarantine's columns."""
    parts = [f.assign(_kind=kind)[QUARANTINE_COLUMNS] for f in frames if len(f)]
    if not parts:
        return pd.DataFrame(columns=QUARANTINE_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def empty_records(schema: Schema) -> pd.DataFrame:
    """No records, in the columns and time types of accepted ones."""
    cols = ["id", "timestamp", *schema.feature_names, "label", "label_timestamp"]
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    frame["timestamp"] = pd.Series(dtype="datetime64[ns, UTC]")
    frame["label_timestamp"] = pd.Series(dtype="datetime64[ns, UTC]")
    return frame
