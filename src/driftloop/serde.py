"""JSON round-tripping for the typed results (dataclasses) every step returns."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np

T = TypeVar("T")


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy values, datetimes and enums into JSON-ready values.

    Non-finite floats become ``None`` so the output is strict JSON.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, dt.datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any) -> str:
    """Serialise a result to indented, key-stable JSON."""
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=False)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return _convert(non_none[0], value) if len(non_none) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is dt.datetime:
        return dt.datetime.fromisoformat(value)
    if tp is float:
        return float(value)
    if origin in (list, tuple) and args:
        items = [_convert(args[0], v) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict and len(args) == 2:
        return {k: _convert(args[1], v) for k, v in value.items()}
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (possibly nested) dataclass from :func:`to_jsonable` output."""
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: _convert(hints[f.name], data[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name in data
    }
    return cls(**kwargs)


def loads(cls: type[T], text: str) -> T:
    """Parse JSON text into the dataclass ``cls``."""
    return from_dict(cls, json.loads(text))


class JsonResult:
    """Mixin for result dataclasses: ``to_json`` and ``from_json`` through this module."""

    def to_json(self) -> str:
        """Serialise to indented JSON."""
        return dumps(self)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Parse :meth:`to_json` output back into this dataclass."""
        return loads(cls, text)
