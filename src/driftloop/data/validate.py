"""Row-level validation of records and labels against a :class:`~driftloop.data.schema.Schema`.

Raw rows arrive as object columns (straight from JSONL, CSV or Parquet). Valid rows come
out typed; every invalid row comes out with a reason naming each field and rule it broke.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from driftloop.data.schema import ColumnSpec, Schema, bool_text, value_text

#: Columns the reader adds to every raw row so a quarantined row can be traced back.
SOURCE, LINE, REASON, RAW = "_source", "_line", "_reason", "_raw"


def _missing(col: pd.Series) -> pd.Series:
    is_blank = col.map(lambda v: isinstance(v, str) and v.strip() == "")
    return col.isna() | is_blank.astype(bool)


def _add_reason(reasons: pd.Series, mask: pd.Series, text: str | pd.Series) -> pd.Series:
    if not mask.any():
        return reasons
    addition = text if isinstance(text, pd.Series) else pd.Series(text, index=reasons.index)
    joined = reasons.where(reasons == "", reasons + "; ") + addition
    return reasons.where(~mask, joined)


def _to_float(value: object) -> float:
    """One value as a float; NaN when it is not a number, +-inf beyond the float range."""
    if value is None or isinstance(value, bool):
        return float("nan")
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        # an integer beyond ~1e308: infinite as a float, which the column may refuse
        return -math.inf if value < 0 else math.inf  # type: ignore[operator]
    except (TypeError, ValueError):
        return float("nan")


def _json_type(value: object) -> str:
    """The JSON name of a value's type, for reasons (``object``, ``array``, ...)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple | np.ndarray):
        return "array"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else type(value).__name__


def _not_scalar(col: pd.Series, missing: pd.Series, *, bools: bool = True) -> pd.Series:
    """Present values that are objects or arrays (or booleans when ``bools`` is false)."""
    # np.ndarray: a Parquet list column arrives as arrays
    nested = (dict, list, tuple, np.ndarray)
    bad_types = nested if bools else (*nested, bool, np.bool_)
    return ~missing & col.map(lambda v: isinstance(v, bad_types)).astype(bool)


def _check_numeric(
    spec: ColumnSpec, col: pd.Series, missing: pd.Series, reasons: pd.Series
) -> tuple[pd.Series, pd.Series]:
    as_bool = col.map(lambda v: isinstance(v, bool))
    kept = col.where(~as_bool.astype(bool))
    try:
        values = pd.to_numeric(kept, errors="coerce").astype("float64")
    except (OverflowError, TypeError, ValueError):
        # e.g. a JSON integer above ~1e308 (OverflowError): judge value by value, so one
        # such row is quarantined instead of failing every run whose window holds it
        values = kept.map(_to_float).astype("float64")
    bad = ~missing & values.isna()
    reasons = _add_reason(reasons, bad, f"{spec.name}: not a number")
    # inf, -inf, or an integer beyond the float range: one reason, not also "above max"
    infinite = ~missing & np.isinf(values)
    refused = infinite if not spec.allow_infinite else pd.Series(False, index=values.index)
    reasons = _add_reason(
        reasons, refused, f"{spec.name}: infinite or beyond the float range (allow_infinite "
        "is false)"
    )
    if spec.dtype == "int":
        frac = ~bad & ~missing & ~infinite & (values % 1 != 0)
        reasons = _add_reason(reasons, frac, f"{spec.name}: not an integer")
    if spec.min is not None:
        low = ~missing & ~refused & (values < spec.min)
        reasons = _add_reason(
            reasons, low, values.map(lambda v: f"{spec.name}: {v:g} below min {spec.min:g}")
        )
    if spec.max is not None:
        high = ~missing & ~refused & (values > spec.max)
        reasons = _add_reason(
            reasons, high, values.map(lambda v: f"{spec.name}: {v:g} above max {spec.max:g}")
        )
    return values, reasons


_as_text = value_text


def _check_categorical(
    spec: ColumnSpec, col: pd.Series, missing: pd.Series, reasons: pd.Series
) -> tuple[pd.Series, pd.Series]:
    nested = _not_scalar(col, missing)
    reasons = _add_reason(
        reasons, nested,
        col.map(lambda v: f"{spec.name}: not a string, number or boolean (got {_json_type(v)})"),
    )
    if spec.dtype == "bool":
        # JSON true and CSV "true" are one value (see driftloop.data.schema)
        values = col.where(missing, col.map(bool_text)).astype(object)
        not_bool = ~missing & ~nested & values.isna()
        reasons = _add_reason(
            reasons, not_bool, col.map(lambda v: f"{spec.name}: {v!r} is not a boolean")
        )
        bad_before = nested | not_bool
    else:
        values = col.where(missing, col.map(_as_text)).astype(object)
        bad_before = nested
    if spec.allowed is not None:
        allowed = set(spec.allowed)
        bad = ~missing & ~bad_before & ~values.isin(allowed)
        reasons = _add_reason(
            reasons, bad, values.map(lambda v: f"{spec.name}: {v!r} not in allowed values")
        )
    return values.where(~missing, None), reasons


def _check_text(
    spec: ColumnSpec, col: pd.Series, missing: pd.Series, reasons: pd.Series
) -> tuple[pd.Series, pd.Series]:
    not_str = ~missing & ~col.map(lambda v: isinstance(v, str)).astype(bool)
    reasons = _add_reason(reasons, not_str, f"{spec.name}: not a string")
    if spec.max_length is not None:
        long = ~missing & ~not_str & (col.map(lambda v: len(str(v))) > spec.max_length)
        reasons = _add_reason(reasons, long, f"{spec.name}: longer than {spec.max_length} chars")
    return col.where(~missing, None).astype(object), reasons


_CHECKS = {"numeric": _check_numeric, "categorical": _check_categorical, "text": _check_text}


def _check_label(
    schema: Schema, col: pd.Series, missing: pd.Series, reasons: pd.Series
) -> tuple[pd.Series, pd.Series]:
    nested = _not_scalar(col, missing)
    reasons = _add_reason(
        reasons, nested,
        col.map(lambda v: f"{schema.label_column}: not a string, number or boolean "
                          f"(got {_json_type(v)})"),
    )
    values = col.where(missing, col.map(_as_text)).astype(object)
    if schema.labels is not None:
        bad = ~missing & ~nested & ~values.isin(set(schema.labels))
        reasons = _add_reason(
            reasons,
            bad,
            values.map(lambda v: f"{schema.label_column}: {v!r} is not one of the schema labels"),
        )
    return values.where(~missing, None), reasons


def _id_and_time(
    schema: Schema, raw: pd.DataFrame, reasons: pd.Series
) -> tuple[pd.Series, pd.Series, pd.Series]:
    ids = raw[schema.id_column] if schema.id_column in raw else pd.Series(None, index=raw.index)
    id_missing = _missing(ids)
    reasons = _add_reason(reasons, id_missing, f"{schema.id_column}: required value missing")
    # An object, array or boolean is no id: stringified, {"a": 1} and true would join
    # feedback by accident ("True" == "True") and read as ids nobody sent.
    odd = _not_scalar(ids, id_missing, bools=False)
    reasons = _add_reason(
        reasons, odd,
        ids.map(lambda v: f"{schema.id_column}: not a string or number (got {_json_type(v)})"),
    )
    ids = ids.map(_as_text).astype(object)
    ts_raw = (
        raw[schema.timestamp_column]
        if schema.timestamp_column in raw
        else pd.Series(None, index=raw.index)
    )
    ts_missing = _missing(ts_raw)
    reasons = _add_reason(
        reasons, ts_missing, f"{schema.timestamp_column}: required value missing"
    )
    ts = parse_timestamps(ts_raw.where(~ts_missing))
    reasons = _add_reason(
        reasons, ~ts_missing & ts.isna(), f"{schema.timestamp_column}: not an ISO-8601 time"
    )
    return ids, ts, reasons


_OFFSET = re.compile(r"(?:Z|[+-]\d\d(?::?\d\d)?)$", re.IGNORECASE)


def parse_timestamps(values: pd.Series) -> pd.Series:
    """ISO-8601 times as UTC, each by its own offset; a time without one is UTC.

    Naive and offset-carrying values are parsed apart: parsed together, pandas shifts a
    naive value by another row's offset (a naive 10:00 became 04:30Z after a +05:30 row).
    Anything that is not an ISO-8601 time becomes NaT.
    """
    text = values.map(lambda v: v.strip() if isinstance(v, str) else None)
    aware = text.map(lambda v: bool(v) and _OFFSET.search(v) is not None).astype(bool)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    for part in (aware, ~aware & text.notna()):
        if part.any():
            out.loc[part] = pd.to_datetime(text[part], utc=True, errors="coerce",
                                           format="ISO8601")
    other = values.notna() & text.isna()  # datetime objects (Parquet), numbers
    for i in values.index[other]:
        out.loc[i] = _one_timestamp(values.loc[i])
    return out


def _one_timestamp(value: object) -> pd.Timestamp:
    if isinstance(value, bool | int | float):
        return pd.NaT  # not a time, whatever pandas would make of it
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError, OverflowError):
        return pd.NaT
    if stamp is pd.NaT:
        return pd.NaT
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _split(
    typed: pd.DataFrame, raw: pd.DataFrame, reasons: pd.Series, keep_index: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    bad = reasons != ""
    good = typed.loc[~bad] if keep_index else typed.loc[~bad].reset_index(drop=True)
    rejected = raw.loc[bad, [SOURCE, LINE, RAW]].copy()
    rejected[REASON] = reasons[bad]
    return good, rejected.reset_index(drop=True)


#: Serving columns a record keeps as they are: the prediction, and the A/B test's columns
#: (decide/ab_assign.py names them; the sink writes them, serving/sink_events.py).
SERVED_COLUMNS = ("prediction", "score", "model_version", "ab_test", "ab_variant", "ab_keyed",
                  "ab_key")


def validate_records(raw: pd.DataFrame, schema: Schema, *,
                     keep_index: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate raw request records.

    Args:
        raw: Object-typed rows with the reader's ``_source``, ``_line`` and ``_raw`` columns.
        schema: The declared schema.
        keep_index: Valid rows keep their row's index in ``raw`` (else 0..n-1).

    Returns:
        ``(valid, rejected)``: valid rows typed (``id``, ``timestamp`` in UTC, features,
        ``label``/``label_timestamp`` when the rows carry labels, serving columns kept), and
        rejected rows with ``_source``, ``_line``, ``_raw`` and ``_reason``.
    """
    reasons = pd.Series("", index=raw.index, dtype=object)
    ids, ts, reasons = _id_and_time(schema, raw, reasons)
    typed = pd.DataFrame({"id": ids, "timestamp": ts}, index=raw.index)
    for spec in schema.columns:
        col = raw[spec.name] if spec.name in raw else pd.Series(None, index=raw.index)
        missing = _missing(col)
        if spec.required:
            reasons = _add_reason(reasons, missing, f"{spec.name}: required value missing")
        typed[spec.name], reasons = _CHECKS[spec.kind](spec, col, missing, reasons)
    if schema.label_column in raw:
        col = raw[schema.label_column]
        labels, reasons = _check_label(schema, col, _missing(col), reasons)
        typed["label"] = labels
        typed["label_timestamp"] = ts.where(labels.notna())
    for extra in SERVED_COLUMNS:
        if extra in raw:
            typed[extra] = raw[extra]
    return _split(typed, raw, reasons, keep_index)


def validate_labels(raw: pd.DataFrame, schema: Schema, *,
                    keep_index: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate raw feedback rows (``id``, label, ``timestamp``, optional ``source``).

    ``keep_index``: valid rows keep their row's index in ``raw`` (else 0..n-1).

    Returns:
        ``(valid, rejected)``: valid rows with ``id``, ``label`` and ``label_timestamp``;
        rejected rows with ``_source``, ``_line``, ``_raw`` and ``_reason``.
    """
    reasons = pd.Series("", index=raw.index, dtype=object)
    ids, ts, reasons = _id_and_time(schema, raw, reasons)
    col = (
        raw[schema.label_column]
        if schema.label_column in raw
        else pd.Series(None, index=raw.index)
    )
    missing = _missing(col)
    reasons = _add_reason(reasons, missing, f"{schema.label_column}: required value missing")
    labels, reasons = _check_label(schema, col, missing, reasons)
    typed = pd.DataFrame({"id": ids, "label": labels, "label_timestamp": ts}, index=raw.index)
    if "source" in raw:
        # who gave the label, when the feedback says (a user or client id); not required
        src = raw["source"]
        typed["label_source"] = src.where(~_missing(src), None).map(
            lambda v: None if v is None else str(v))
    return _split(typed, raw, reasons, keep_index)
