"""The predictor's request decoding: V1 instances and V2 tensors to checked feature columns.

:func:`parse_v1` and :func:`parse_v2` turn a request into ``(feature columns, ids)``,
checking every value with :func:`check_value` against the model's schema (the rules ingest
applies, plus float64 range and valid Unicode; see :mod:`driftloop.serving.predictor`). A
violation raises ``kserve.errors.InvalidInput``, which kserve answers with HTTP 400 and a
message naming the field. This is its own module because it depends only on the schema,
not on the loaded model: the same checks hold for any version, and they can be read and
tested without a model server.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from driftloop.data.schema import ColumnSpec, Schema, bool_text
from driftloop.serving import clean_argv

# kserve parses sys.argv on first import (see driftloop.serving).
with clean_argv():
    from kserve.errors import InvalidInput

#: Largest number of rows accepted in one request.
MAX_BATCH_ROWS = 10_000
#: At most this many field errors are listed in one 400 message.
MAX_LISTED_ERRORS = 5
ID_FIELD = "id"
_NUMERIC_V2 = frozenset(
    {"FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16",
     "UINT8"}
)
_CATEGORICAL_V2 = frozenset({"BYTES", "BOOL"}) | (_NUMERIC_V2 - {"FP64", "FP32", "FP16"})
#: The V2 datatype a feature column is advertised with in the model metadata, by (kind, dtype):
#: what a client should send (parse_v2 accepts a few more, e.g. FP32 for a float column).
V2_DATATYPES = {
    ("numeric", "float"): "FP64",
    ("numeric", "int"): "INT64",
    ("categorical", "string"): "BYTES",
    ("categorical", "int"): "INT64",
    ("categorical", "bool"): "BOOL",
    ("text", "string"): "BYTES",
}
#: A UTF-16 surrogate left alone (JSON's "\ud800" escape): text no UTF-8 encoder can write.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, int) and abs(value) >= 10**20:
        return f"an integer of {_digits(value)} digits"
    if isinstance(value, int | float):
        return f"number {value!r}"
    return type(value).__name__ if not isinstance(value, dict | list) else (
        "object" if isinstance(value, dict) else "array"
    )


def _digits(value: int) -> int:
    """The decimal digits of ``value``, also beyond the 4,300 ``str(int)`` refuses."""
    try:
        return len(str(abs(value)))
    except ValueError:
        return int(abs(value).bit_length() * math.log10(2)) + 1


def _surrogate_rule(text: str) -> str | None:
    """The rule a string breaks when it holds a lone surrogate, else None."""
    found = _LONE_SURROGATE.search(text)
    if found is None:
        return None
    return (f"not valid Unicode: a lone surrogate {found.group()!a} at character "
            f"{found.start()}")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def check_value(spec: ColumnSpec, value: Any) -> tuple[Any, str | None]:
    """Return ``(typed value, None)`` or ``(None, rule broken)`` for one feature value.

    Mirrors :mod:`driftloop.data.validate` (the ingest rules) but is strict about JSON types:
    a string is never accepted for a numeric column.
    """
    if _is_missing(value):
        if spec.required:
            return None, "required value missing"
        return (math.nan if spec.kind == "numeric" else None), None
    if spec.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            return None, f"expected a number, got {_describe(value)}"
        try:
            number = float(value)
        except OverflowError:  # JSON integers have no size limit; float64 stops at ~1.8e308
            return None, f"expected a number within the float64 range, got {_describe(value)}"
        if math.isnan(number) or (math.isinf(number) and not spec.allow_infinite):
            return None, f"expected a finite number, got {number}"
        if spec.dtype == "int" and not number.is_integer():
            return None, f"expected an integer, got {number:g}"
        if spec.min is not None and number < spec.min:
            return None, f"{number:g} is below min {spec.min:g}"
        if spec.max is not None and number > spec.max:
            return None, f"{number:g} is above max {spec.max:g}"
        return number, None
    if spec.kind == "categorical":
        if spec.dtype == "bool":  # as ingest: booleans, or "true"/"false" in any case
            flag = bool_text(bool(value) if isinstance(value, np.bool_) else value)
            if flag is None:
                return None, f"expected a boolean, got {_describe(value)}"
            text = flag
        elif isinstance(value, bool | np.bool_):
            text = "true" if value else "false"
        elif isinstance(value, int | np.integer) or (
            isinstance(value, float) and value.is_integer()
        ):
            text = str(int(value))
        elif isinstance(value, str):
            text = value
        elif isinstance(value, bytes):
            text = value.decode("utf-8", errors="replace")
        else:
            return None, f"expected a string, got {_describe(value)}"
        broken = _surrogate_rule(text)
        if broken is not None:  # it could be neither logged nor stored as UTF-8
            return None, broken
        if spec.allowed is not None and text not in spec.allowed:
            return None, f"{text!r} is not one of the allowed values {list(spec.allowed)}"
        return text, None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None, f"expected a string, got {_describe(value)}"
    broken = _surrogate_rule(value)
    if broken is not None:
        return None, broken
    if spec.max_length is not None and len(value) > spec.max_length:
        return None, f"longer than {spec.max_length} characters ({len(value)})"
    return value, None


def v2_datatype(spec: ColumnSpec) -> str:
    """The V2 datatype of a feature column's input tensor (see :data:`V2_DATATYPES`)."""
    return V2_DATATYPES.get((spec.kind, spec.dtype), "BYTES" if spec.kind != "numeric"
                            else "FP64")


def _raise(errors: list[str]) -> None:
    if errors:
        shown = errors[:MAX_LISTED_ERRORS]
        more = len(errors) - len(shown)
        tail = f"; and {more} more" if more > 0 else ""
        raise InvalidInput("; ".join(shown) + tail)


def _check_rows(schema: Schema, n: int, get: Callable[[str, int], tuple[bool, Any]],
                where: Callable[[str, int], str]) -> dict[str, list[Any]]:
    """Check every feature of ``n`` rows; ``get(name, i)`` returns ``(present, value)``."""
    columns: dict[str, list[Any]] = {}
    errors: list[str] = []
    for spec in schema.columns:
        values: list[Any] = []
        for i in range(n):
            present, raw = get(spec.name, i)
            if not present and spec.required:
                errors.append(f"{where(spec.name, i)}: required feature missing")
                values.append(None)
                continue
            typed, rule = check_value(spec, raw if present else None)
            if rule is not None:
                errors.append(f"{where(spec.name, i)}: {rule}")
            values.append(typed)
        columns[spec.name] = values
    _raise(errors)
    return columns


def _check_id(value: Any, where: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
        raise InvalidInput(f"{where}: expected a non-empty string id, got {_describe(value)}")
    broken = _surrogate_rule(str(value))
    if broken is not None:  # the id is echoed: a response holding it could not be encoded
        raise InvalidInput(f"{where}: {broken}")
    return str(value)


def parse_v1(payload: Any, schema: Schema) -> tuple[dict[str, list[Any]], list[str | None]]:
    """Check a V1 body and return ``(feature columns, ids)``.

    Raises:
        InvalidInput: The body or a value breaks the schema (the message names the field).
    """
    if isinstance(payload, bytes | str):
        raise InvalidInput(
            "request body: expected a JSON object {\"instances\": [...]} sent as "
            "application/json"
        )
    if not isinstance(payload, Mapping):
        raise InvalidInput(f"request body: expected a JSON object, got {_describe(payload)}")
    if "instances" not in payload:
        raise InvalidInput("instances: required field missing (a list of objects, one per row)")
    rows = payload["instances"]
    if not isinstance(rows, list) or not rows:
        raise InvalidInput(f"instances: expected a non-empty list, got {_describe(rows)}")
    if len(rows) > MAX_BATCH_ROWS:
        raise InvalidInput(f"instances: {len(rows)} rows, at most {MAX_BATCH_ROWS} per request")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidInput(
                f"instances[{i}]: expected an object keyed by feature name "
                f"({', '.join(schema.feature_names)}), got {_describe(row)}"
            )
    ids = [
        _check_id(row[ID_FIELD], f"instances[{i}].{ID_FIELD}")
        if row.get(ID_FIELD) is not None else None
        for i, row in enumerate(rows)
    ]
    columns = _check_rows(
        schema, len(rows),
        lambda name, i: (name in rows[i], rows[i].get(name)),
        lambda name, i: f"instances[{i}].{name}",
    )
    return columns, ids


def _flatten(data: Any, where: str) -> list[Any]:
    if isinstance(data, np.ndarray):
        return list(data.reshape(-1))
    if not isinstance(data, list):
        raise InvalidInput(f"{where}.data: expected a list, got {_describe(data)}")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _v2_values(inp: Any) -> list[Any]:
    where = f"inputs[{inp.name}]"
    if getattr(inp, "_raw_data", None) is not None:
        try:
            return [v.item() if isinstance(v, np.generic) else v
                    for v in inp.as_numpy().reshape(-1)]
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{where}: binary data does not match its shape ({exc})") from exc
    return _flatten(inp.data, where)


def parse_v2(request: Any, schema: Schema) -> tuple[dict[str, list[Any]], list[str | None]]:
    """Check a V2 ``InferRequest`` and return ``(feature columns, ids)``.

    Raises:
        InvalidInput: Unknown, duplicate or missing inputs, wrong shapes or datatypes, or a
            value that breaks the schema.
    """
    features = {c.name: c for c in schema.columns}
    inputs: dict[str, Any] = {}
    for inp in request.inputs:
        if inp.name in inputs:
            raise InvalidInput(f"inputs[{inp.name}]: given twice")
        if inp.name not in features and inp.name != ID_FIELD:
            raise InvalidInput(
                f"inputs[{inp.name}]: unknown input; the model takes "
                f"{', '.join(schema.feature_names)} (and optionally {ID_FIELD})"
            )
        inputs[inp.name] = inp
    missing = [c.name for c in schema.columns if c.required and c.name not in inputs]
    if missing:
        raise InvalidInput(f"inputs[{missing[0]}]: required feature missing "
                           f"(missing inputs: {', '.join(missing)})")
    if not inputs:
        raise InvalidInput("inputs: expected one tensor per feature column")
    n: int | None = None
    values: dict[str, list[Any]] = {}
    for name, inp in inputs.items():
        where = f"inputs[{name}]"
        shape = list(inp.shape or [])
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
            raise InvalidInput(f"{where}.shape: expected [n] or [n, 1] with n >= 1, got {shape}")
        if n is None:
            n = shape[0]
        elif shape[0] != n:
            raise InvalidInput(f"{where}.shape: {shape[0]} rows, but other inputs have {n}")
        datatype = str(inp.datatype).upper()
        spec = features.get(name)
        if spec is None or spec.kind == "text":
            allowed_types = frozenset({"BYTES"})
        elif spec.kind == "numeric":
            allowed_types = _NUMERIC_V2
        else:
            allowed_types = _CATEGORICAL_V2
        if datatype not in allowed_types:
            wanted = v2_datatype(spec) if spec is not None else "BYTES"
            raise InvalidInput(f"{where}.datatype: {datatype} does not fit a "
                               f"{spec.kind if spec else 'id'} column; send {wanted}")
        flat = _v2_values(inp)
        if len(flat) != shape[0]:
            raise InvalidInput(f"{where}: shape {shape} needs {shape[0]} values, "
                               f"data has {len(flat)}")
        values[name] = flat
    assert n is not None
    if n > MAX_BATCH_ROWS:
        raise InvalidInput(f"inputs: {n} rows, at most {MAX_BATCH_ROWS} per request")
    ids: list[str | None] = (
        [_check_id(v, f"inputs[{ID_FIELD}][{i}]") for i, v in enumerate(values[ID_FIELD])]
        if ID_FIELD in values else [None] * n
    )
    columns = _check_rows(
        schema, n,
        lambda name, i: (name in values, values[name][i] if name in values else None),
        lambda name, i: f"inputs[{name}][{i}]",
    )
    return columns, ids


__all__ = ["ID_FIELD", "MAX_BATCH_ROWS", "MAX_LISTED_ERRORS", "V2_DATATYPES", "check_value",
           "parse_v1", "parse_v2", "v2_datatype"]
