"""The declared schema of a model's records: which columns are features and their rules.

A schema file is JSON (or YAML) like::

    {"name": "tweets", "label": "label", "labels": ["negative", "positive"],
     "columns": [{"name": "text", "kind": "text", "dtype": "string"},
                 {"name": "price", "kind": "numeric", "dtype": "float", "min": 0},
                 {"name": "topic", "kind": "categorical", "dtype": "string",
                  "allowed": ["a", "b"], "required": false}]}

Rules the loader enforces (each broken one is a one-line :class:`SchemaError` naming the
file, the field and the rule):

* ``id``, ``timestamp`` and ``label`` name three different columns, none a feature.
* ``labels`` and ``allowed`` hold scalars (strings, numbers or booleans) of one type;
  ``labels`` holds no duplicates.
* ``min`` / ``max`` are finite numbers (not booleans); ``max_length`` is a positive integer.
* ``allow_infinite`` (float columns only, default ``false``): whether ``inf`` / ``-inf``
  (or a number too large for a float) is a valid value; otherwise such a row is
  quarantined.

Categorical values and labels compare as text (:func:`value_text`). A ``bool`` column
compares booleans as booleans: JSON ``true`` / ``false`` and the strings ``"true"`` /
``"false"`` (any case, since CSV carries only strings) are the same value, written
``"true"`` / ``"false"``; anything else (``1``, ``"yes"``) is not a boolean.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from driftloop.data.storage import read_uri
from driftloop.errors import SchemaError

ColumnKind = Literal["numeric", "categorical", "text"]
KINDS: tuple[str, ...] = ("numeric", "categorical", "text")
DTYPES: tuple[str, ...] = ("float", "int", "string", "bool")
_KIND_DTYPES: dict[str, tuple[str, ...]] = {
    "numeric": ("float", "int"),
    "categorical": ("string", "int", "bool"),
    "text": ("string",),
}


@dataclass(frozen=True)
class ColumnSpec:
    """One feature column and the rules a value must satisfy."""

    name: str
    kind: ColumnKind
    dtype: str
    required: bool = True
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    max_length: int | None = None
    allow_infinite: bool = False


@dataclass(frozen=True)
class Schema:
    """The contract for a model's records and labels."""

    name: str
    columns: tuple[ColumnSpec, ...]
    id_column: str = "id"
    timestamp_column: str = "timestamp"
    label_column: str = "label"
    labels: tuple[str, ...] | None = None
    slice_column: str | None = None
    source: str = field(default="<dict>", compare=False)

    @property
    def feature_names(self) -> list[str]:
        """Names of all feature columns, in declared order."""
        return [c.name for c in self.columns]

    def names_of(self, kind: str) -> list[str]:
        """Names of the feature columns of one kind."""
        return [c.name for c in self.columns if c.kind == kind]

    @property
    def model_kind(self) -> Literal["text", "tabular"]:
        """``text`` when the schema has a text column, else ``tabular``."""
        return "text" if self.names_of("text") else "tabular"

    def column(self, name: str) -> ColumnSpec:
        """Return the spec of column ``name``."""
        for col in self.columns:
            if col.name == name:
                return col
        raise SchemaError(f"{self.source}: no column named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the schema as it would be written to a schema file."""
        cols = []
        for c in self.columns:
            item: dict[str, Any] = {"name": c.name, "kind": c.kind, "dtype": c.dtype}
            if not c.required:
                item["required"] = False
            for key in ("min", "max", "max_length"):
                if getattr(c, key) is not None:
                    item[key] = getattr(c, key)
            if c.allow_infinite:
                item["allow_infinite"] = True
            if c.allowed is not None:
                item["allowed"] = (
                    [v == "true" for v in c.allowed] if c.dtype == "bool" else list(c.allowed)
                )
            cols.append(item)
        out: dict[str, Any] = {
            "name": self.name,
            "id": self.id_column,
            "timestamp": self.timestamp_column,
            "label": self.label_column,
            "columns": cols,
        }
        if self.labels is not None:
            out["labels"] = list(self.labels)
        if self.slice_column is not None:
            out["slice"] = self.slice_column
        return out


def value_text(value: object) -> object:
    """A categorical value or label as the text it is compared by (``None`` stays ``None``).

    Booleans are ``"true"`` / ``"false"`` and integral floats lose their ``.0``, so JSON
    ``true``, CSV ``true`` and a schema's ``true`` are one value, as are ``1`` and ``1.0``.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if value is None else str(value)


def bool_text(value: object) -> str | None:
    """``"true"`` / ``"false"`` for a boolean or its text (any case), else ``None``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower()
    return None


def _fail(source: str, where: str, rule: str) -> SchemaError:
    return SchemaError(f"{source}: {where}: {rule}")


def _scalar_type(value: object) -> str | None:
    """The JSON type of a value a category or label may take, or ``None``."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return "number"
    return "string" if isinstance(value, str) else None


def _scalars(source: str, where: str, values: list[Any]) -> tuple[str, ...]:
    """Check a list of categories or labels: scalars of one type; return them as text."""
    types = [_scalar_type(v) for v in values]
    if None in types:
        bad = values[types.index(None)]
        raise _fail(source, where, f"must hold strings, numbers or booleans (got {bad!r})")
    kinds = sorted({t for t in types if t is not None})
    if len(kinds) > 1:
        raise _fail(source, where, f"must hold values of one type (got {', '.join(kinds)})")
    return tuple(str(value_text(v)) for v in values)


def _bound(source: str, where: str, value: Any) -> float:
    # bool is an int to Python, and NaN / inf would make every comparison meaningless
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(source, where, f"must be a finite number (got {value!r})")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise _fail(source, where, f"must be a finite number (got {value!r:.40})")
    return number


_COLUMN_KEYS = frozenset({"name", "kind", "dtype", "required", "min", "max", "allowed",
                          "max_length", "allow_infinite"})


def _column(source: str, idx: int, raw: Any) -> ColumnSpec:
    where = f"columns[{idx}]"
    if not isinstance(raw, dict):
        raise _fail(source, where, "must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(source, f"{where}.name", "must be a non-empty string")
    where = f"column {name!r}"
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise _fail(source, f"{where}.kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
    default_dtype = {"numeric": "float", "categorical": "string", "text": "string"}[kind]
    dtype = raw.get("dtype", default_dtype)
    if not isinstance(dtype, str) or dtype not in _KIND_DTYPES[kind]:
        allowed = ", ".join(_KIND_DTYPES[kind])
        raise _fail(source, f"{where}.dtype", f"a {kind} column takes {allowed} (got {dtype!r})")
    unknown = set(raw) - _COLUMN_KEYS
    if unknown:
        # str(): YAML keys may be numbers or null, which do not sort with strings
        raise _fail(source, where, f"unknown keys {sorted(map(str, unknown))}")
    bounds: dict[str, float | None] = {"min": None, "max": None}
    for key in bounds:
        val = raw.get(key)
        if val is None:
            continue
        if kind != "numeric":
            raise _fail(source, f"{where}.{key}", "only numeric columns take a number bound")
        bounds[key] = _bound(source, f"{where}.{key}", val)
    lo, hi = bounds["min"], bounds["max"]
    if lo is not None and hi is not None and lo > hi:
        raise _fail(source, where, f"min {lo:g} is greater than max {hi:g}")
    allow_inf = raw.get("allow_infinite", False)
    if not isinstance(allow_inf, bool):
        raise _fail(source, f"{where}.allow_infinite", "must be true or false")
    if allow_inf and dtype != "float":
        raise _fail(source, f"{where}.allow_infinite", "float columns only")
    allowed_vals = raw.get("allowed")
    if allowed_vals is not None:
        if kind != "categorical" or not isinstance(allowed_vals, list) or not allowed_vals:
            raise _fail(source, f"{where}.allowed", "a non-empty list, categorical columns only")
        allowed_vals = _scalars(source, f"{where}.allowed", allowed_vals)
        if dtype == "bool":
            as_bools = [bool_text(v) for v in raw["allowed"]]
            if None in as_bools:
                raise _fail(source, f"{where}.allowed", "a bool column allows only true/false")
            allowed_vals = tuple(v for v in as_bools if v is not None)
    required = raw.get("required", True)
    if not isinstance(required, bool):
        raise _fail(source, f"{where}.required", "must be true or false")
    max_length = raw.get("max_length")
    if max_length is not None and (
        kind != "text" or isinstance(max_length, bool) or not isinstance(max_length, int)
        or max_length < 1
    ):
        raise _fail(source, f"{where}.max_length", "a positive integer, text columns only")
    return ColumnSpec(
        name=name,
        kind=kind,  # type: ignore[arg-type]  # checked against KINDS above
        dtype=dtype,
        required=required,
        min=lo,
        max=hi,
        allowed=allowed_vals,
        max_length=max_length,
        allow_infinite=allow_inf,
    )


def _column_name(source: str, raw: dict[Any, Any], key: str) -> str:
    value = raw.get(key, key)
    if not isinstance(value, str) or not value:
        raise _fail(source, key, f"must be a non-empty column name (got {value!r})")
    return value


def schema_from_dict(raw: Any, source: str = "<dict>") -> Schema:
    """Build a :class:`Schema` from parsed JSON/YAML, naming ``source`` in every error."""
    if not isinstance(raw, dict):
        raise _fail(source, "top level", "must be an object")
    cols_raw = raw.get("columns")
    if not isinstance(cols_raw, list) or not cols_raw:
        raise _fail(source, "columns", "must be a non-empty list")
    columns = tuple(_column(source, i, c) for i, c in enumerate(cols_raw))
    names = [c.name for c in columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(source, "columns", f"duplicate column names {dupes}")
    id_col = _column_name(source, raw, "id")
    ts_col = _column_name(source, raw, "timestamp")
    label_col = _column_name(source, raw, "label")
    # One column cannot be two of these: the id check would reject every timestamp.
    for key, value, other_key, other in (("timestamp", ts_col, "id", id_col),
                                         ("label", label_col, "id", id_col),
                                         ("label", label_col, "timestamp", ts_col)):
        if value == other:
            raise _fail(source, key, f"{value!r} is also the {other_key} column: they must differ")
    reserved = {id_col, ts_col, label_col}
    clash = sorted(reserved & set(names))
    if clash:
        raise _fail(source, "columns", f"{clash} are the id/timestamp/label columns, not features")
    labels = raw.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or len(labels) < 2:
            raise _fail(source, "labels", "must list at least two classes")
        labels = _scalars(source, "labels", labels)
        label_dupes = sorted({v for v in labels if labels.count(v) > 1})
        if label_dupes:
            raise _fail(source, "labels", f"duplicate labels {label_dupes}")
    slice_col = raw.get("slice")
    if slice_col is not None and slice_col not in names:
        raise _fail(source, "slice", f"{slice_col!r} is not a declared column")
    if slice_col is not None and next(c for c in columns if c.name == slice_col).kind != (
        "categorical"
    ):
        raise _fail(source, "slice", f"{slice_col!r} must be a categorical column")
    return Schema(
        name=str(raw.get("name", "model")),
        columns=columns,
        id_column=id_col,
        timestamp_column=ts_col,
        label_column=label_col,
        labels=labels,
        slice_column=slice_col,
        source=source,
    )


def _parse_yaml(text: str) -> Any:
    """Parse YAML; its errors become ValueError (PyYAML loads only for a YAML schema)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from exc


def load_schema(uri: str | Path) -> Schema:
    """Load and check a schema file (``.json``, ``.yaml`` or ``.yml``; local or ``gs://``)."""
    # utf-8-sig: an editor's byte-order mark is not part of the JSON
    text = read_uri(uri).decode("utf-8-sig", errors="replace")
    source = str(uri)
    try:
        raw = _parse_yaml(text) if source.endswith((".yaml", ".yml")) else json.loads(text)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and an integer beyond Python's 4,300 digits;
        # RecursionError a document nested too deeply to parse
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SchemaError(f"{source}: not a valid schema file ({first})") from exc
    return schema_from_dict(raw, source=source)


def write_schema(schema: Schema, path: str | Path) -> None:
    """Write ``schema`` as a JSON schema file."""
    Path(path).write_text(json.dumps(schema.to_dict(), indent=2) + "\n")
