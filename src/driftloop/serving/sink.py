"""The payload sink: KServe InferenceLogger CloudEvents and user feedback, durably stored.

KServe's agent (``spec.predictor.logger: {mode: all, url: http://sink/}``) posts one
CloudEvent per inference request and one per response, in binary content mode: the body is
the raw JSON request/response and the attributes travel as headers (``pkg/logger/worker.go``)::

    Ce-Id            shared by a request and its response (the x-request-id / a UUID)
    Ce-Type          org.kubeflow.serving.inference.request | ...inference.response
    Ce-Source, Ce-Specversion (1.0), Ce-Time
    Ce-Inferenceservicename, Ce-Namespace, Ce-Component, Ce-Endpoint (default|canary),
    Ce-Metadata (JSON), Ce-Annotations (JSON, optional)

The agent sends the two events from a worker pool, so they may arrive in either order; a
response is only logged for a 200. Structured mode (``application/cloudevents+json``) is
accepted too.

What is stored
    Each request/response pair becomes one record per instance in
    ``requests/dt=YYYY-MM-DD/<file>.jsonl``::

        {"id", "timestamp", <features...>, "prediction", "score", "probabilities",
         "model_version", "event_id", "logged", "inference_service", "namespace",
         "component", "endpoint"}

    ``id`` is the instance's ``id`` when the request (or our predictor's response) gave
    one, else ``f"{Ce-Id}-{index}"``. ``score`` is the top class probability. ``logged``
    is ``pair``, ``request_only`` or ``response_only``. Ingest reads these files as
    records; it ignores the extra keys. ``POST /feedback`` with ``{"id", "label"}``
    (optional ``timestamp``; or a list of such objects) appends to
    ``feedback/dt=YYYY-MM-DD/``, which ingest joins to records by ``id``.

    ``dt=`` is the UTC day the sink *received* the data (for a pair: its first event),
    ``timestamp`` is the request's ``Ce-Time`` (the feedback's own ``timestamp``, default
    the receive time). Partitioning by arrival keeps every write of the last days inside
    the dedup window below, whatever clocks the senders have; a record's partition and its
    timestamp differ only around midnight or for replayed events.

Unpaired events
    The first event of a pair waits in memory (bounded by ``max_pending``, oldest first)
    for ``pending_ttl`` seconds. It is also journaled durably under ``sink/pending/`` before
    the 2xx, so a restart restores it. When the partner never comes it is written alone:
    a lone request keeps its features (``prediction`` null, ``logged: request_only``), so
    drift detection still sees it; a lone response (e.g. its request was never logged) is
    written with its predictions and no features (``logged: response_only``), and ingest
    quarantines it with "<feature>: required value missing" -- counted, never silent. A
    partner that arrives after its event was written alone is written alone at once.
    When ``max_pending`` is reached the oldest pending event is written alone early.

Durability: a 2xx only after the data is on disk
    Local folder stores (``mode="append"``): each process appends to its own file per
    partition (``sink-<host>-<pid>-<start>.jsonl``) with ``O_APPEND`` and ``fsync`` before
    it answers; a new file also fsyncs its folder. One fsync per event (~0.25 ms here).
    Other stores, e.g. ``gs://`` (``mode="object"``): one atomic object per event, named
    from the event id, so a retried write replaces the same object.
    Measured on 2 CPUs over loopback (benchmarks/sink_throughput.py): ~900-1,300 events/s
    with one client, ~1,150-1,550 with four, no loss. Append-mode journals are compacted
    on start and at each new UTC day (pending events rewritten, older files deleted).
    A reader of today's partition may see a line that is being appended at that instant
    (ingest quarantines it as unparsable); ingest whole past days to avoid it.

Idempotence
    Events are deduplicated by ``(Ce-Id, Ce-Type)``: a retried event is answered 200
    (``{"status": "duplicate"}``) and stored once. On start the seen ids are rebuilt from
    the ``event_id``/``logged`` keys of the records in the ``requests/`` partitions of the
    last ``dedup_days`` days (the dedup window) and the pending events from the whole
    journal, so a restart still deduplicates and still pairs. At most ``max_seen`` ids
    are kept (default 1,000,000, ~125 MB); a retry older than the window is stored again
    and ingest counts its rows as duplicates by ``id`` (accounted, not silent). The
    start-up scan reads every record line of the window (~0.2 M lines/s): large daily
    volumes make restarts slower.
    Feedback is not deduplicated: a repeated label is superseded at ingest (the latest
    timestamp wins).

Run one replica per store: request and response must reach the same process to be paired.

Status codes: 200 stored/pending/duplicate; 400 a missing or invalid CloudEvent header, a
body that is not JSON or is nested deeper than ``MAX_JSON_DEPTH`` (64) levels; 413 a body
above ``max_body_bytes``; 415 an unsupported structured event; 422 JSON of the wrong shape
or a string that is not valid Unicode (a lone surrogate such as ``"\ud800"``, which no
UTF-8 file can hold); the message names the field; 503 the store write failed (nothing was
recorded as seen; the sender may retry).

Everything an event's later writing needs (its shape, depth and text) is checked before
the 2xx, so an acknowledged event can always be written; a refused one is neither
journaled nor remembered as seen. KServe's logger logs a request even when the predictor
refuses it (a 400 has no response event): such a request, when well-formed JSON, is
acknowledged and written alone after ``pending_ttl`` (``request_only``); ingest then
applies the schema to its values.

Entry point::

    python -m driftloop.serving.sink --store PATH --host 127.0.0.1 --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from driftloop.data.storage import LocalStore, Store, open_store
from driftloop.errors import DriftloopError, StoreError

log = logging.getLogger(__name__)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
REQUEST, RESPONSE = "request", "response"
SIDE_OF_TYPE = {REQUEST_TYPE: REQUEST, RESPONSE_TYPE: RESPONSE}
_BIT = {REQUEST: 1, RESPONSE: 2}
BOTH = 3
#: CloudEvent extension attributes the KServe logger sets, and the record keys they fill.
EXTENSIONS = {
    "inferenceservicename": "inference_service",
    "namespace": "namespace",
    "component": "component",
    "endpoint": "endpoint",
}
#: Keys of a stored record that an instance's own keys can never override.
RESERVED = frozenset({"id", "timestamp", "label", "prediction", "score", "probabilities",
                      "model_version", "event_id", "logged", *EXTENSIONS.values()})
DEFAULT_MAX_BODY = 4 * 1024 * 1024
MAX_FEEDBACK_ITEMS = 10_000
PENDING_PREFIX = "sink/pending"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EVENT_KEYS = re.compile(rb'"event_id":"((?:[^"\\]|\\.)*)","logged":"(\w+)"')
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


def _utc_now(clock: Callable[[], float]) -> dt.datetime:
    return dt.datetime.fromtimestamp(clock(), dt.UTC)


def _day(epoch: float) -> str:
    """The partition day (UTC) of a receive time."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).date().isoformat()


def _iso(moment: dt.datetime) -> str:
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


# -- events -----------------------------------------------------------------------------


@dataclass
class Event:
    """One accepted CloudEvent: the attributes the sink keeps and the parsed JSON body."""

    ce_id: str
    side: str  # "request" or "response"
    time: str  # ISO-8601, UTC
    received: float  # sink clock, epoch seconds
    ext: dict[str, str]
    data: Any
    journal_key: str = ""

    def to_line(self) -> bytes:
        """Serialise as one JSON line for the pending journal."""
        doc = {"ce_id": self.ce_id, "side": self.side, "time": self.time,
               "received": self.received, "ext": self.ext, "data": self.data}
        return (json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], journal_key: str) -> Event:
        """Rebuild an event from a journal line's object."""
        return cls(str(doc["ce_id"]), str(doc["side"]), str(doc["time"]),
                   float(doc["received"]), dict(doc.get("ext") or {}), doc.get("data"),
                   journal_key)


def _json(body: bytes, where: str) -> Any:
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


def parse_cloudevent(headers: Mapping[str, str], body: bytes,
                     clock: Callable[[], float] = time.time) -> Event:
    """Check a CloudEvent (binary or structured mode) and return it with its JSON body.

    Args:
        headers: HTTP headers, keys in lower case.
        body: The raw body.
        clock: Source of the receive time.

    Raises:
        SinkError: 400/415/422 with a message naming the header or field.
    """
    received = clock()
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/cloudevents+json":
        doc = _json(body, "body")
        if not isinstance(doc, dict):
            raise SinkError(422, "body: a structured CloudEvent must be a JSON object")
        if "data" not in doc:
            raise SinkError(415 if "data_base64" in doc else 422,
                            "body.data: required (JSON data; data_base64 is not supported)")
        attrs = {k: v for k, v in doc.items() if k != "data" and isinstance(v, str)}
        data, where = doc["data"], "body.data"
        names = {k: f"body.{k}" for k in attrs}
    else:
        attrs = {k[3:]: v for k, v in headers.items() if k.startswith("ce-")}
        data, where = None, "body"
        names = {k: f"header ce-{k}" for k in attrs}
    for required in ("id", "type", "source", "specversion"):
        if not attrs.get(required, "").strip():
            shown = names.get(required) or (
                f"body.{required}" if content_type == "application/cloudevents+json"
                else f"header Ce-{required.capitalize()}"
            )
            raise SinkError(400, f"{shown}: required CloudEvent attribute missing")
    if attrs["specversion"] != "1.0":
        raise SinkError(400, f"{names['specversion']}: {attrs['specversion']!r} is not "
                             "supported (only 1.0)")
    side = SIDE_OF_TYPE.get(attrs["type"])
    if side is None:
        raise SinkError(400, f"{names['type']}: {attrs['type']!r} is not one of "
                             f"{REQUEST_TYPE}, {RESPONSE_TYPE}")
    if data is None:
        data = _json(body, where)
    moment = (parse_time(attrs["time"], names["time"]) if attrs.get("time")
              else dt.datetime.fromtimestamp(received, dt.UTC))
    ext = {EXTENSIONS[k]: v for k, v in attrs.items() if k in EXTENSIONS and v}
    event = Event(attrs["id"].strip(), side, _iso(moment), received, ext, data)
    # Reject a malformed body now, while the sender can still see the error.
    (parse_request_body if side == REQUEST else parse_response_body)(data, where)
    return event


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
            raise SinkError(422, f"{where}[{name}].data: required (binary tensors are not "
                                 "supported by the sink)")
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


def build_records(
    ce_id: str, request: Event | None, response: Event | None
) -> list[dict[str, Any]]:
    """Turn a request/response pair (or one lone side) into one record per instance."""
    rows = parse_request_body(request.data) if request is not None else []
    preds = parse_response_body(response.data) if response is not None else []
    logged = "pair" if request and response else ("request_only" if request else "response_only")
    base = request or response
    assert base is not None
    ext = {**(response.ext if response else {}), **(request.ext if request else {})}
    records = []
    for i in range(max(len(rows), len(preds))):
        rid, features = rows[i] if i < len(rows) else (None, {})
        pred = preds[i] if i < len(preds) else Prediction()
        record: dict[str, Any] = {k: v for k, v in features.items() if k not in RESERVED}
        record.update({
            "id": rid or pred.id or f"{ce_id}-{i}",
            "timestamp": base.time,
            "prediction": pred.label,
            "score": pred.score,
            "probabilities": pred.probabilities,
            "model_version": pred.model_version,
            "event_id": ce_id,
            "logged": logged,
            **ext,
        })
        records.append(record)
    return records


def parse_feedback(body: bytes, *, labels: Sequence[str] | None = None,
                   now: dt.datetime | None = None) -> list[dict[str, str]]:
    """Check a feedback body (one object or a list) and return normalised rows.

    Raises:
        SinkError: 400 for invalid JSON; 422 naming the field otherwise.
    """
    data = _json(body, "body")
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
        out.append({"id": str(rid), "label": label, "timestamp": _iso(when)})
    return out


# -- writers ----------------------------------------------------------------------------


class Writer(ABC):
    """Durable writes of JSON lines under a store folder."""

    @abstractmethod
    def write(self, folder: str, data: bytes, name: str) -> str:
        """Write ``data`` (whole lines) under ``folder``; return the key written.

        ``name`` identifies the write (used by object stores as the object name).
        Returns only after the data is durable.
        """

    def drop(self, key: str) -> None:  # noqa: B027 - optional hook
        """Forget a pending-journal entry written with :meth:`write` (optional)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release open files."""


class AppendWriter(Writer):
    """Append to one file per folder and process, fsync'd before returning (local stores)."""

    MAX_OPEN = 16

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        host = _SAFE.sub("-", socket.gethostname())[:40] or "host"
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        self.file_name = f"sink-{host}-{os.getpid()}-{stamp}-{uuid.uuid4().hex[:6]}.jsonl"
        self._fds: dict[str, int] = {}

    def _open(self, folder: str) -> int:
        fd = self._fds.pop(folder, None)
        if fd is None:
            path = self.store.path(f"{folder}/{self.file_name}")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            for parent in (path.parent, path.parent.parent):  # the new entries are durable
                dir_fd = os.open(parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            while len(self._fds) >= self.MAX_OPEN:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[folder] = fd  # most recently used last
        return fd

    def write(self, folder: str, data: bytes, name: str) -> str:  # noqa: D102
        fd = self._open(folder)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        return f"{folder}/{self.file_name}"

    def close(self) -> None:  # noqa: D102
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class ObjectWriter(Writer):
    """One atomic object per write, named after the write (any store, e.g. ``gs://``)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def write(self, folder: str, data: bytes, name: str) -> str:  # noqa: D102
        key = f"{folder}/{name}.jsonl"
        self.store.write_bytes(key, data)
        return key

    def drop(self, key: str) -> None:  # noqa: D102
        self.store.delete(key)


def _lines(rows: list[dict[str, Any]]) -> bytes:
    return "".join(
        json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in rows
    ).encode()


def _event_name(ce_id: str, tag: str) -> str:
    return f"ev-{hashlib.sha256(ce_id.encode()).hexdigest()[:24]}-{tag}"


# -- the sink ---------------------------------------------------------------------------


@dataclass
class SinkStats:
    """What the sink did since it started (also exported as Prometheus metrics)."""

    stored: int = 0
    pending: int = 0
    duplicates: int = 0
    rejected: int = 0
    records: int = 0
    lone_requests: int = 0
    lone_responses: int = 0
    feedback: int = 0
    recovered_pending: int = 0
    recovered_ids: int = 0
    unreadable_lines: int = 0


class PayloadSink:
    """Pairs logged requests and responses and writes them, with feedback, into a store.

    Thread-safe: one lock serialises the state and the writes (one fsync per event).

    Args:
        store: The store (``requests/``, ``feedback/`` and ``sink/pending/`` go here).
        mode: ``append`` (local folders), ``object`` (any store) or ``auto``.
        pending_ttl: Seconds an unpaired event waits for its partner.
        max_pending: Most unpaired events kept; beyond, the oldest is written alone.
        dedup_days: Partitions (days back from today, plus today and tomorrow) scanned on
            start to rebuild the seen event ids; ids older than that are forgotten.
        max_seen: Most event ids remembered for deduplication (oldest forgotten first;
            about 125 bytes each).
        labels: When given, feedback labels must be one of these.
        clock: Time source (epoch seconds), for tests.
    """

    def __init__(self, store: Store, *, mode: str = "auto", pending_ttl: float = 60.0,
                 max_pending: int = 10_000, dedup_days: int = 2, max_seen: int = 1_000_000,
                 labels: Sequence[str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if mode == "auto":
            mode = "append" if isinstance(store, LocalStore) else "object"
        if mode == "append" and not isinstance(store, LocalStore):
            raise ValueError("mode 'append' needs a local folder store; use 'object'")
        if mode not in ("append", "object"):
            raise ValueError(f"mode {mode!r}: must be auto, append or object")
        if pending_ttl <= 0 or max_pending < 1 or dedup_days < 0 or max_seen < 1:
            raise ValueError("pending_ttl > 0, max_pending >= 1, dedup_days >= 0 and "
                             "max_seen >= 1 required")
        self.store = store
        self.mode = mode
        self.pending_ttl = pending_ttl
        self.max_pending = max_pending
        self.dedup_days = dedup_days
        self.max_seen = max_seen
        self.labels = tuple(labels) if labels is not None else None
        self.clock = clock
        self.writer: Writer = (AppendWriter(store) if mode == "append"  # type: ignore[arg-type]
                               else ObjectWriter(store))
        self.stats = SinkStats()
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], Event] = {}
        # ce_id -> sides bitmask | day ordinal << 2, oldest first; at most max_seen entries.
        self._done: dict[str, int] = {}
        self._last_prune = 0.0
        self._journal_day = ""
        self.registry = CollectorRegistry()
        self._m_events = Counter("driftloop_sink_events", "CloudEvents by side and outcome.",
                                 ("side", "outcome"), registry=self.registry)
        self._m_records = Counter("driftloop_sink_records", "Records written, by how logged.",
                                  ("logged",), registry=self.registry)
        self._m_feedback = Counter("driftloop_sink_feedback", "Feedback rows written.",
                                   registry=self.registry)
        self._m_rejected = Counter("driftloop_sink_rejected", "Bodies refused, by status.",
                                   ("status",), registry=self.registry)
        self._m_pending = Gauge("driftloop_sink_pending", "Unpaired events waiting.",
                                registry=self.registry)
        self._m_write = Histogram("driftloop_sink_write_seconds", "Durable write latency.",
                                  registry=self.registry,
                                  buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                           0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
        self._recover()

    # -- start-up -----------------------------------------------------------------------

    def _window(self) -> list[dt.date]:
        today = _utc_now(self.clock).date()
        return [today + dt.timedelta(days=d) for d in range(-self.dedup_days, 2)]

    def _read_lines(self, key: str) -> list[dict[str, Any]]:
        out = []
        for line in self.store.read_bytes(key).splitlines():
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.stats.unreadable_lines += 1  # a torn last line after a crash
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def _event_ids(self, key: str) -> Iterator[tuple[str, str]]:
        """Yield ``(event_id, logged)`` of each record line of ``key``.

        The sink writes ``"event_id":...,"logged":...`` next to each other; a regex reads
        them ~4x faster than parsing whole lines. Other lines (batch drops, hand-written
        files) fall back to JSON.
        """
        for line in self.store.read_bytes(key).splitlines():
            found = _EVENT_KEYS.search(line)
            if found is not None:
                raw = found.group(1).decode("utf-8", errors="replace")
                ce_id = json.loads(f'"{raw}"') if "\\" in raw else raw
                yield ce_id, found.group(2).decode()
                continue
            if b'"event_id"' not in line:
                continue
            try:
                doc = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.stats.unreadable_lines += 1  # a torn last line after a crash
                continue
            if isinstance(doc, dict) and doc.get("event_id") is not None:
                yield str(doc["event_id"]), str(doc.get("logged"))

    def _recover(self) -> None:
        codes = {"pair": BOTH, "request_only": _BIT[REQUEST], "response_only": _BIT[RESPONSE]}
        for day in self._window():
            for key in self.store.list(f"requests/dt={day.isoformat()}"):
                for ce_id, logged in self._event_ids(key):
                    code = codes.get(logged)
                    if code is not None:
                        self._remember(ce_id, code, day.toordinal())
        # Every journal is read, whatever its day: a pending event is never left behind.
        restored: list[Event] = []
        for key in self.store.list(PENDING_PREFIX):
            for doc in self._read_lines(key):
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    restored.append(Event.from_doc(doc, key))
        for event in sorted(restored, key=lambda e: e.received):
            if not self._seen(event.ce_id) & _BIT[event.side]:
                self._pending.setdefault((event.ce_id, event.side), event)
            else:
                with contextlib.suppress(OSError, DriftloopError):
                    self.writer.drop(event.journal_key)  # object mode: resolved, tidy up
        self.stats.recovered_ids = len(self._done)
        self.stats.recovered_pending = len(self._pending)
        self._m_pending.set(len(self._pending))
        self._compact()

    def _compact(self) -> None:
        """Append mode: rewrite the pending events into today's journal, drop older files.

        Journal lines are never removed from an append file, so without this the journal
        would grow with every request ever logged. New journal first (fsync'd), deletions
        after: a crash in between leaves duplicate journal lines, which recovery merges.
        """
        if self.mode != "append":
            return
        self._journal_day = _utc_now(self.clock).date().isoformat()
        folder = f"{PENDING_PREFIX}/dt={self._journal_day}"
        current = f"{folder}/{self.writer.file_name}"  # type: ignore[attr-defined]
        moved = [e for e in self._pending.values() if e.journal_key != current]
        if moved:
            self._write(folder, b"".join(e.to_line() for e in moved), "compact")
            for event in moved:
                event.journal_key = current
        self.writer.close()  # no descriptor may point at a file deleted below
        for key in self.store.list(PENDING_PREFIX):
            if key != current:
                self.store.delete(key)

    # -- events -------------------------------------------------------------------------

    def _write(self, folder: str, data: bytes, name: str) -> str:
        started = time.perf_counter()
        try:
            key = self.writer.write(folder, data, name)
        except OSError as exc:
            raise SinkError(503, f"store write failed ({exc}); nothing was recorded") from exc
        except DriftloopError as exc:
            raise SinkError(503, f"store write failed ({exc}); nothing was recorded") from exc
        self._m_write.observe(time.perf_counter() - started)
        return key

    def _store_records(self, ce_id: str, request: Event | None, response: Event | None) -> int:
        records = build_records(ce_id, request, response)
        day = _day(min(e.received for e in (request, response) if e is not None))
        logged = records[0]["logged"] if records else "pair"
        if records:
            self._write(f"requests/dt={day}", _lines(records), _event_name(ce_id, logged))
        self._m_records.labels(logged).inc(len(records))
        self.stats.records += len(records)
        if logged == "request_only":
            self.stats.lone_requests += 1
        elif logged == "response_only":
            self.stats.lone_responses += 1
        return len(records)

    def _seen(self, ce_id: str) -> int:
        """The sides of ``ce_id`` already written (bitmask; 0 when none)."""
        return self._done.get(ce_id, 0) & BOTH

    def _remember(self, ce_id: str, mask: int, day_ordinal: int) -> None:
        self._done[ce_id] = self._seen(ce_id) | mask | (day_ordinal << 2)
        while len(self._done) > self.max_seen:
            del self._done[next(iter(self._done))]  # forget the oldest

    def _mark(self, ce_id: str, mask: int, received: float) -> None:
        day = dt.datetime.fromtimestamp(received, dt.UTC).date().toordinal()
        self._remember(ce_id, mask, day)

    def handle_event(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """Check, pair and store one CloudEvent.

        Returns:
            ``{"status": "stored" | "pending" | "duplicate", "records": n}``; returned only
            once everything the status promises is durable.

        Raises:
            SinkError: The event is refused (4xx) or the store failed (503).
        """
        try:
            event = parse_cloudevent(headers, body, self.clock)
        except SinkError as exc:
            self._reject(exc)
            raise
        with self._lock:
            return self._accept(event)

    def _reject(self, exc: SinkError) -> None:
        self.stats.rejected += 1
        self._m_rejected.labels(str(exc.status)).inc()

    def _accept(self, event: Event) -> dict[str, Any]:
        bit = _BIT[event.side]
        other_side = RESPONSE if event.side == REQUEST else REQUEST
        mask = self._seen(event.ce_id)
        if mask & bit or (event.ce_id, event.side) in self._pending:
            self.stats.duplicates += 1
            self._m_events.labels(event.side, "duplicate").inc()
            return {"status": "duplicate", "records": 0}
        if mask:  # the partner was already written alone: so is this one, at once
            n = self._store_records(event.ce_id, event if bit == 1 else None,
                                    event if bit == 2 else None)
            self._mark(event.ce_id, bit, event.received)
            return self._stored(event, n)
        partner = self._pending.get((event.ce_id, other_side))
        if partner is not None:
            request, response = (event, partner) if event.side == REQUEST else (partner, event)
            n = self._store_records(event.ce_id, request, response)
            del self._pending[(event.ce_id, other_side)]
            self._mark(event.ce_id, BOTH, min(request.received, response.received))
            with contextlib.suppress(OSError, DriftloopError):
                self.writer.drop(partner.journal_key)
            self._m_pending.set(len(self._pending))
            return self._stored(event, n)
        event.journal_key = self._write(f"{PENDING_PREFIX}/dt={_day(event.received)}",
                                        event.to_line(),
                                        _event_name(event.ce_id, event.side))
        self._pending[(event.ce_id, event.side)] = event
        self.stats.pending += 1
        self._m_events.labels(event.side, "pending").inc()
        while len(self._pending) > self.max_pending:
            self._write_alone(next(iter(self._pending.values())))
        self._m_pending.set(len(self._pending))
        return {"status": "pending", "records": 0}

    def _stored(self, event: Event, n: int) -> dict[str, Any]:
        self.stats.stored += 1
        self._m_events.labels(event.side, "stored").inc()
        return {"status": "stored", "records": n}

    def _write_alone(self, event: Event) -> None:
        self._store_records(event.ce_id, event if event.side == REQUEST else None,
                            event if event.side == RESPONSE else None)
        del self._pending[(event.ce_id, event.side)]
        self._mark(event.ce_id, _BIT[event.side], event.received)
        with contextlib.suppress(OSError, DriftloopError):
            self.writer.drop(event.journal_key)

    def expire(self) -> int:
        """Write alone every pending event older than ``pending_ttl``; return how many."""
        now = self.clock()
        written = 0
        with self._lock:
            for event in list(self._pending.values()):
                if now - event.received < self.pending_ttl:
                    break  # oldest first: the rest are younger
                self._write_alone(event)
                written += 1
            self._m_pending.set(len(self._pending))
            if self.mode == "append" and (
                _utc_now(self.clock).date().isoformat() != self._journal_day
            ):
                self._compact()
            if now - self._last_prune > 3600:
                self._last_prune = now
                oldest = self._window()[0].toordinal()
                self._done = {k: v for k, v in self._done.items() if v >> 2 >= oldest}
        return written

    @property
    def pending_count(self) -> int:
        """Unpaired events waiting in memory."""
        return len(self._pending)

    # -- feedback -----------------------------------------------------------------------

    def handle_feedback(self, body: bytes) -> dict[str, Any]:
        """Check and store feedback rows; return ``{"stored": n}`` once they are durable.

        Raises:
            SinkError: The body is refused (4xx) or the store failed (503).
        """
        try:
            rows = parse_feedback(body, labels=self.labels, now=_utc_now(self.clock))
        except SinkError as exc:
            self._reject(exc)
            raise
        day = _day(self.clock())
        with self._lock:
            self._write(f"feedback/dt={day}", _lines(rows), f"fb-{uuid.uuid4().hex}")
            self.stats.feedback += len(rows)
        self._m_feedback.inc(len(rows))
        return {"stored": len(rows)}

    def close(self) -> None:
        """Close open files. Pending events stay journaled for the next start."""
        with self._lock:
            self.writer.close()


# -- HTTP -------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing (413) more than ``limit`` bytes without buffering them."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise SinkError(400, "header Content-Length: not an integer") from None
        if size > limit:
            raise SinkError(413, f"body: {size} bytes, the limit is {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise SinkError(413, f"body: more than {limit} bytes, the limit")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(sink: PayloadSink, *, max_body_bytes: int = DEFAULT_MAX_BODY,
               sweep_interval: float = 1.0) -> Starlette:
    """Return the sink's ASGI app. The app owns ``sink``: it is closed on shutdown.

    Routes: ``POST /`` and ``POST /events`` (CloudEvents), ``POST /feedback``,
    ``GET /healthz``, ``GET /metrics``. A background task writes expired pending events
    alone every ``sweep_interval`` seconds.
    """

    async def call(request: Request, handler: Callable[..., dict[str, Any]],
                   *args: Any) -> Response:
        try:
            body = await read_body(request, max_body_bytes)
            result = await run_in_threadpool(handler, *args, body)
        except SinkError as exc:
            if exc.status == 413:
                sink._reject(exc)
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return JSONResponse(result)

    async def events(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await call(request, sink.handle_event, headers)

    async def feedback(request: Request) -> Response:
        return await call(request, sink.handle_feedback)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "mode": sink.mode, "store": sink.store.uri,
                             "pending": sink.pending_count})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(sink.registry), media_type=CONTENT_TYPE_LATEST)

    async def sweeper() -> None:
        while True:
            await asyncio.sleep(sweep_interval)
            try:
                await run_in_threadpool(sink.expire)
            except Exception:  # keep sweeping; the next round retries
                log.exception("sink: writing expired pending events failed")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            sink.close()

    return Starlette(
        routes=[
            Route("/", events, methods=["POST"]),
            Route("/events", events, methods=["POST"]),
            Route("/feedback", feedback, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def _probe_writable(store: LocalStore) -> None:
    """Create and remove a file in the store, so a read-only store fails at start.

    Without this the sink would start and answer every event 503.

    Raises:
        StoreError: The folder refuses a new file.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".sink-probe-", dir=store.root)
    except OSError as exc:
        raise StoreError(f"store {store.root}: cannot write ({exc.strerror})") from None
    os.close(fd)
    os.unlink(name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sink in the foreground until SIGTERM/SIGINT.

    Returns:
        0 after a clean shutdown; non-zero, with one line on stderr, when the store cannot
        be opened (a file, missing permissions, read-only).
    """
    parser = argparse.ArgumentParser(
        prog="python -m driftloop.serving.sink",
        description="Receive KServe InferenceLogger CloudEvents and feedback into a store.",
    )
    parser.add_argument("--store", required=True, help="store root (folder or gs:// URI)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--mode", choices=("auto", "append", "object"), default="auto")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY)
    parser.add_argument("--pending-ttl", type=float, default=60.0,
                        help="seconds an unpaired event waits for its partner")
    parser.add_argument("--max-pending", type=int, default=10_000)
    parser.add_argument("--dedup-days", type=int, default=2)
    parser.add_argument("--max-seen", type=int, default=1_000_000,
                        help="most event ids remembered for deduplication")
    parser.add_argument("--schema", help="schema file: feedback labels must be its labels")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    from driftloop.data.schema import load_schema
    from driftloop.data.storage import check_store_root, describe_os_error
    from driftloop.serving.server import run_app

    store_path = args.store
    try:
        labels = load_schema(args.schema).labels if args.schema else None
        check_store_root(store_path, create=True)
        store = open_store(store_path, create="://" not in str(store_path) or
                           str(store_path).startswith("file://"))
        if isinstance(store, LocalStore):
            _probe_writable(store)
        sink = PayloadSink(store, mode=args.mode, pending_ttl=args.pending_ttl,
                           max_pending=args.max_pending, dedup_days=args.dedup_days,
                           max_seen=args.max_seen, labels=labels)
    except DriftloopError as exc:
        print(f"driftloop sink: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"driftloop sink: error: {describe_os_error(exc, store_path)}", file=sys.stderr)
        return StoreError.exit_code
    app = create_app(sink, max_body_bytes=args.max_body_bytes)
    run_app(app, args.host, args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "REQUEST_TYPE",
    "RESPONSE_TYPE",
    "AppendWriter",
    "Event",
    "ObjectWriter",
    "PayloadSink",
    "Prediction",
    "SinkError",
    "build_records",
    "create_app",
    "main",
    "parse_cloudevent",
    "parse_feedback",
    "parse_request_body",
    "parse_response_body",
]
