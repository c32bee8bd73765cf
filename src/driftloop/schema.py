"""The declared schema of a model's records: which columns are features and their rules.

A schema file is JSON (or YAML) like::

    {"name": "tweets", "label": "label", "labels": ["negative", "positive"],
     "columns": [{"name": "text", "kind": "text", "dtype": "string"},
                 {"name": "price", "kind": "numeric", "dtype": "float", "min": 0},
                 {"name": "topic", "kind": "categorical", "dtype": "string",
                  "allowed": ["a", "b"], "required": false}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from driftloop.errors import SchemaError
from driftloop.storage import read_uri

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
            if c.allowed is not None:
                item["allowed"] = list(c.allowed)
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


def _fail(source: str, where: str, rule: str) -> SchemaError:
    return SchemaError(f"{source}: {where}: {rule}")


def _column(source: str, idx: int, raw: Any) -> ColumnSpec:
    where = f"columns[{idx}]"
    if not isinstance(raw, dict):
        raise _fail(source, where, "must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(source, f"{where}.name", "must be a non-empty string")
    where = f"column {name!r}"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _fail(source, f"{where}.kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
    default_dtype = {"numeric": "float", "categorical": "string", "text": "string"}[kind]
    dtype = raw.get("dtype", default_dtype)
    if dtype not in _KIND_DTYPES[kind]:
        allowed = ", ".join(_KIND_DTYPES[kind])
        raise _fail(source, f"{where}.dtype", f"a {kind} column takes {allowed} (got {dtype!r})")
    unknown = set(raw) - {"name", "kind", "dtype", "required", "min", "max", "allowed",
                          "max_length"}
    if unknown:
        raise _fail(source, where, f"unknown keys {sorted(unknown)}")
    lo, hi = raw.get("min"), raw.get("max")
    for key, val in (("min", lo), ("max", hi)):
        if val is not None and (kind != "numeric" or not isinstance(val, int | float)):
            raise _fail(source, f"{where}.{key}", "only numeric columns take a number bound")
    if lo is not None and hi is not None and lo > hi:
        raise _fail(source, where, f"min {lo} is greater than max {hi}")
    allowed_vals = raw.get("allowed")
    if allowed_vals is not None:
        if kind != "categorical" or not isinstance(allowed_vals, list) or not allowed_vals:
            raise _fail(source, f"{where}.allowed", "a non-empty list, categorical columns only")
        allowed_vals = tuple(str(v) for v in allowed_vals)
    required = raw.get("required", True)
    if not isinstance(required, bool):
        raise _fail(source, f"{where}.required", "must be true or false")
    max_length = raw.get("max_length")
    if max_length is not None and (kind != "text" or not isinstance(max_length, int)):
        raise _fail(source, f"{where}.max_length", "an integer, text columns only")
    return ColumnSpec(
        name=name,
        kind=kind,
        dtype=dtype,
        required=required,
        min=None if lo is None else float(lo),
        max=None if hi is None else float(hi),
        allowed=allowed_vals,
        max_length=max_length,
    )


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
    id_col = raw.get("id", "id")
    ts_col = raw.get("timestamp", "timestamp")
    label_col = raw.get("label", "label")
    reserved = {id_col, ts_col, label_col}
    clash = sorted(reserved & set(names))
    if clash:
        raise _fail(source, "columns", f"{clash} are the id/timestamp/label columns, not features")
    labels = raw.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or len(labels) < 2:
            raise _fail(source, "labels", "must list at least two classes")
        labels = tuple(str(v) for v in labels)
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


def load_schema(uri: str | Path) -> Schema:
    """Load and check a schema file (``.json``, ``.yaml`` or ``.yml``; local or ``gs://``)."""
    text = read_uri(uri).decode("utf-8", errors="replace")
    source = str(uri)
    try:
        raw = yaml.safe_load(text) if source.endswith((".yaml", ".yml")) else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise SchemaError(f"{source}: not a valid schema file ({first})") from exc
    return schema_from_dict(raw, source=source)


def write_schema(schema: Schema, path: str | Path) -> None:
    """Write ``schema`` as a JSON schema file."""
    Path(path).write_text(json.dumps(schema.to_dict(), indent=2) + "\n")
