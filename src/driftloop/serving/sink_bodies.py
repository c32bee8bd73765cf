"""What the payload sink checks in a body before it answers 2xx.

The sink acknowledges an event or a feedback body only when it can always be written later
(see :mod:`driftloop.serving.sink`, "Everything an event's later writing needs ... is
checked before the 2xx"). This module holds those checks, apart from the CloudEvent
envelope, the pairing state and the files, because they are pure functions of a body:

* :func:`parse_json` -- JSON that parses, is at most :data:`MAX_JSON_DEPTH` levels deep and
  holds no lone surrogate (a string no UTF-8 file can hold).
* :func:`parse_request_body` / :func:`parse_response_body` -- the V1 and V2 shapes of a
  logged inference request and response, as rows and :class:`Prediction` objects.
* :func:`parse_feedback` -- ``POST /feedback`` bodies, normalised to ``{id, label,
  timestamp}`` rows.

Every refusal is a :class:`SinkError` carrying the HTTP status and a message naming the
header or field.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from driftloop.errors import DriftloopError

MAX_FEEDBACK_ITEMS = 10_000
#: Deepest JSON nesting accepted in a body (a V2 tensor of rank 4 in an event is 7 deep).
MAX_JSON_DEPTH = 64
#: What a lone surrogate can come from in a body json.loads reads: a "\ud800"-style escape
#: or the surrogate's own UTF-8 bytes (json decodes bytes with "surrogatepass").
_SURROGATE_SOURCE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class SinkError(DriftloopError):
    """An event or feedback body the sink refuses; ``status`` is the HTTP status to send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status



def iso_utc(moment: dt.datetime) -> str:
    """Format a time as ISO-8601 in UTC, the form records and feedback rows store."""
    return moment.astimezone(dt.UTC).isoformat()


def parse_time(text: Any, where: str) -> dt.datetime:
    """Parse an RFC 3339 / ISO-8601 time (naive means UTC).

    Raises:
        SinkError: 400 naming ``where`` when ``text`` is not such a time.
    """
    if not isinstance(text, str):
        raise SinkError(422, f"{where}: expected an ISO-8601 time string, got "
                             f"{type(text).__name__}")
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise SinkError(400 if where.startswith("header") else 422,
                        f"{where}: {text[:60]!r} is not an ISO-8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)



def parse_json(body: bytes, where: str) -> Any:
    """Parse a body and check what the sink must be able to store of it.

    Raises:
        SinkError: 400 for invalid JSON or nesting deeper than :data:`MAX_JSON_DEPTH`;
            422 naming the field for a string with a lone surrogate.
    """
    try:
        doc = json.loads(body)
    except RecursionError:
        raise SinkError(400, f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels, "
                             "the limit") from None
    except ValueError as exc:  # also bad UTF-8 and integers above 4,300 digits
        raise SinkError(400, f"{where}: not valid JSON ({exc})") from None
    # nesting deeper than the openers in the body is impossible: most bodies skip the walk
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH:
        _check_depth(doc, where)
    # UTF-16/32 bodies (NULs in the first bytes) hide escapes from the byte pattern.
    if b"\x00" in body[:4] or _SURROGATE_SOURCE.search(body):
        _check_text(doc, where)
    return doc


def _check_depth(doc: Any, where: str) -> None:
    """Refuse nesting deeper than :data:`MAX_JSON_DEPTH`.

    Journaling, pairing and writing recurse into the body (``json.dumps``, V2 tensors): a
    body json.loads can parse may still be too deep for them, after the 2xx.
    """
    stack = [(doc, 1)] if isinstance(doc, dict | list) else []
    while stack:
        node, depth = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                if depth >= MAX_JSON_DEPTH:
                    raise SinkError(400, f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} "
                                         "levels, the limit")
                stack.append((child, depth + 1))


def _check_text(doc: Any, where: str) -> None:
    """Refuse a string (value or key) holding a lone surrogate, naming its field.

    Such a string parses but cannot be encoded as UTF-8, so it could never be written.
    """
    stack: list[tuple[Any, str]] = [(doc, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            found = _LONE_SURROGATE.search(node)
            if found is not None:
                raise SinkError(422, f"{path}: not valid Unicode, a lone surrogate "
                                     f"{found.group()!a} at character {found.start()}")
        elif isinstance(node, dict):
            for key, value in reversed(node.items()):  # popped in document order
                found = _LONE_SURROGATE.search(key)
                if found is not None:
                    raise SinkError(422, f"{path}: key {ascii(key)[:60]} is not valid Unicode "
                                         f"(a lone surrogate {found.group()!a})")
                stack.append((value, f"{path}.{key}"))
        elif isinstance(node, list):
            stack.extend((node[i], f"{path}[{i}]") for i in range(len(node) - 1, -1, -1))



@dataclass
class Prediction:
    """One predicted row as logged in a response."""

    id: str | None = None
    label: Any = None
    probabilities: dict[str, float] | None = None
    model_version: str | None = None

    @property
    def score(self) -> float | None:
        """The top class probability, when probabilities were logged."""
        return max(self.probabilities.values()) if self.probabilities else None


def _flat(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        raise SinkError(422, f"{where}: expected a list")
    out: list[Any] = []
    for item in data:
        out.extend(_flat(item, where) if isinstance(item, list) else [item])
    return out


def _v2_columns(tensors: Any, where: str) -> tuple[dict[str, list[Any]], int]:
    if not isinstance(tensors, list) or not tensors:
        raise SinkError(422, f"{where}: expected a non-empty list of tensors")
    columns: dict[str, list[Any]] = {}
    n: int | None = None
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise SinkError(422, f"{where}[{i}]: expected an object with a 'name'")
        name = tensor["name"]
        if "data" not in tensor:
            raise SinkError(422, f"{where}[{name}].data: required (or, with the V2 binary "
                                 "extension, the tensor's bytes after the JSON header)")
        values = _flat(tensor["data"], f"{where}[{name}].data")
        shape = tensor.get("shape")
        rows = shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) \
            else len(values)
        # rows > len(values) would also pass the modulo test with no values, and then
        # build ``rows`` empty lists: a large shape would exhaust the memory.
        if rows < 1 or rows > len(values) or len(values) % rows:
            raise SinkError(422, f"{where}[{name}].shape: {shape} does not fit "
                                 f"{len(values)} values")
        width = len(values) // rows
        columns[name] = values if width == 1 else [
            values[r * width:(r + 1) * width] for r in range(rows)
        ]
        if n is not None and rows != n:
            raise SinkError(422, f"{where}[{name}].shape: {rows} rows, other tensors have {n}")
        n = rows
    assert n is not None
    return columns, n


def parse_request_body(data: Any, where: str = "body") -> list[tuple[str | None, dict[str, Any]]]:
    """Return ``(id or None, features)`` per instance of a V1 or V2 request body.

    Raises:
        SinkError: 422 naming the field when the body has neither shape.
    """
    if not isinstance(data, dict):
        raise SinkError(422, f"{where}: expected a JSON object with 'instances' (V1) or "
                             "'inputs' (V2)")
    if "instances" in data:
        rows = data["instances"]
        if not isinstance(rows, list) or not rows:
            raise SinkError(422, f"{where}.instances: expected a non-empty list")
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise SinkError(422, f"{where}.instances[{i}]: expected an object keyed by "
                                     "feature name")
            rid = row.get("id")
            out.append((None if rid is None else str(rid), row))
        return out
    if "inputs" in data:
        columns, n = _v2_columns(data["inputs"], f"{where}.inputs")
        ids = columns.pop("id", None)
        return [
            (None if ids is None or ids[i] is None else str(ids[i]),
             {name: values[i] for name, values in columns.items()})
            for i in range(n)
        ]
    raise SinkError(422, f"{where}.instances: required (or 'inputs' for a V2 request)")


def _probability(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SinkError(422, f"{where}: expected a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # a JSON integer beyond float64
        raise SinkError(422, f"{where}: a {len(str(abs(value)))}-digit integer is not a "
                             "probability") from None


def _prediction(item: Any, default_version: str | None, where: str) -> Prediction:
    if isinstance(item, dict):
        probs = item.get("probabilities")
        probabilities = (
            {str(k): _probability(v, f"{where}.probabilities.{k}") for k, v in probs.items()
             if isinstance(v, int | float)}
            if isinstance(probs, dict) else None
        )
        label = item.get("class", item.get("prediction", item.get("label")))
        rid = item.get("id")
        version = item.get("model_version", default_version)
        return Prediction(None if rid is None else str(rid), label, probabilities or None,
                          None if version is None else str(version))
    return Prediction(None, item, None, default_version)


def parse_response_body(data: Any, where: str = "body") -> list[Prediction]:
    """Return one :class:`Prediction` per row of a V1 or V2 response body.

    V1 ``predictions`` items may be driftloop's objects (``class``, ``probabilities``,
    ``model_version``, ``id``) or plain values (other predictors). V2 uses the ``class``
    and ``probabilities`` outputs (classes in the output's ``classes`` parameter), else the
    first output.

    Raises:
        SinkError: 422 naming the field when the body has neither shape.
    """
    if not isinstance(data, dict):
        raise SinkError(422, f"{where}: expected a JSON object with 'predictions' (V1) or "
                             "'outputs' (V2)")
    version = data.get("model_version")
    version = None if version is None else str(version)
    if "predictions" in data:
        items = data["predictions"]
        if not isinstance(items, list):
            raise SinkError(422, f"{where}.predictions: expected a list")
        return [_prediction(item, version, f"{where}.predictions[{i}]")
                for i, item in enumerate(items)]
    if "outputs" in data:
        columns, n = _v2_columns(data["outputs"], f"{where}.outputs")
        outputs = {o["name"]: o for o in data["outputs"]}
        label_name = "class" if "class" in columns else next(iter(columns))
        classes: list[str] | None = None
        params = outputs.get("probabilities", {}).get("parameters")
        if "probabilities" in columns and isinstance(params, dict) and isinstance(
            params.get("classes"), str
        ):
            with contextlib.suppress(ValueError, RecursionError):
                parsed = json.loads(params["classes"])
                if isinstance(parsed, list) and all(isinstance(c, str | int) for c in parsed):
                    classes = [str(c) for c in parsed]
            if classes is not None and any(_LONE_SURROGATE.search(c) for c in classes):
                raise SinkError(422, f"{where}.outputs[probabilities].parameters.classes: "
                                     "not valid Unicode, a class name has a lone surrogate")
        preds = []
        for i in range(n):
            probabilities = None
            row = columns["probabilities"][i] if "probabilities" in columns else None
            if classes is not None and isinstance(row, list) and len(row) == len(classes):
                probabilities = {
                    c: _probability(p, f"{where}.outputs[probabilities].data[{i}][{j}]")
                    for j, (c, p) in enumerate(zip(classes, row, strict=True))
                }
            rid = columns["id"][i] if "id" in columns else None
            preds.append(Prediction(None if rid in (None, "") else str(rid),
                                    columns[label_name][i], probabilities, version))
        return preds
    raise SinkError(422, f"{where}.predictions: required (or 'outputs' for a V2 response)")



def parse_feedback(body: bytes, *, labels: Sequence[str] | None = None,
                   now: dt.datetime | None = None) -> list[dict[str, str]]:
    """Check a feedback body (one object or a list) and return normalised rows.

    Each item is ``{"id", "label"}`` with an optional ``timestamp`` and an optional
    ``source`` (the user or client id who labelled; kept with the label).

    Raises:
        SinkError: 400 for invalid JSON; 422 naming the field otherwise.
    """
    data = parse_json(body, "body")
    many = isinstance(data, list)
    items = data if many else [data]
    if not items:
        raise SinkError(422, "body: expected an object or a non-empty list of objects")
    if len(items) > MAX_FEEDBACK_ITEMS:
        raise SinkError(422, f"body: {len(items)} items, at most {MAX_FEEDBACK_ITEMS}")
    moment = now or dt.datetime.now(dt.UTC)
    out = []
    for i, item in enumerate(items):
        at = f"body[{i}]." if many else ""
        if not isinstance(item, dict):
            raise SinkError(422, f"{at or 'body'}: expected an object with id and label")
        rid, label = item.get("id"), item.get("label")
        if isinstance(rid, bool) or not isinstance(rid, str | int) or str(rid).strip() == "":
            raise SinkError(422, f"{at}id: required, a non-empty string")
        if isinstance(label, bool):
            label = "true" if label else "false"
        elif isinstance(label, int):
            label = str(label)
        if not isinstance(label, str) or label.strip() == "":
            raise SinkError(422, f"{at}label: required, a non-empty string")
        if labels is not None and label not in labels:
            raise SinkError(422, f"{at}label: {label!r} is not one of {list(labels)}")
        stamp = item.get("timestamp")
        when = moment if stamp is None else parse_time(stamp, f"{at}timestamp")
        row = {"id": str(rid), "label": label, "timestamp": iso_utc(when)}
        source = item.get("source")
        if source is not None:
            # who gave the label (a user or client id): the training plan tests each
            # source's agreement with the consensus (driftloop.data.curate)
            if isinstance(source, bool) or not isinstance(source, str | int) or (
                    str(source).strip() == ""):
                raise SinkError(422, f"{at}source: a non-empty string (a user or client id)")
            row["source"] = str(source)
        out.append(row)
    return out



__all__ = [
    "MAX_FEEDBACK_ITEMS",
    "MAX_JSON_DEPTH",
    "Prediction",
    "SinkError",
    "iso_utc",
    "parse_feedback",
    "parse_json",
    "parse_request_body",
    "parse_response_body",
    "parse_time",
]
