"""KServe InferenceLogger CloudEvents: the accepted envelope and the records a pair makes.

KServe's agent posts one CloudEvent per inference request and one per response, sharing a
``Ce-Id`` (the protocol is described in :mod:`driftloop.serving.sink`). This module turns
one posted event into an :class:`Event` (:func:`parse_cloudevent`, binary or structured
mode) and a request/response pair, or one lone side, into the records stored under
``requests/`` (:func:`build_records`). It is its own module because both are pure
functions of the events: which events are paired, when, and where they are written is
:mod:`driftloop.serving.sink_pairing`'s business.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from driftloop.serving.sink_bodies import (
    Prediction,
    SinkError,
    iso_utc,
    parse_json,
    parse_request_body,
    parse_response_body,
    parse_time,
)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
REQUEST, RESPONSE = "request", "response"
SIDE_OF_TYPE = {REQUEST_TYPE: REQUEST, RESPONSE_TYPE: RESPONSE}
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
        doc = parse_json(body, "body")
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
        data = parse_json(body, where)
    moment = (parse_time(attrs["time"], names["time"]) if attrs.get("time")
              else dt.datetime.fromtimestamp(received, dt.UTC))
    ext = {EXTENSIONS[k]: v for k, v in attrs.items() if k in EXTENSIONS and v}
    event = Event(attrs["id"].strip(), side, iso_utc(moment), received, ext, data)
    # Reject a malformed body now, while the sender can still see the error.
    (parse_request_body if side == REQUEST else parse_response_body)(data, where)
    return event



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



__all__ = [
    "EXTENSIONS",
    "REQUEST",
    "REQUEST_TYPE",
    "RESERVED",
    "RESPONSE",
    "RESPONSE_TYPE",
    "SIDE_OF_TYPE",
    "Event",
    "build_records",
    "parse_cloudevent",
]
