"""KServe InferenceLogger CloudEvents: the accepted envelope and the records a pair makes.

KServe's agent posts one CloudEvent per inference request and one per response, sharing a
``Ce-Id`` (the protocol is described in :mod:`driftloop.serving.sink`). This module turns
one posted event into an :class:`Event` (:func:`parse_cloudevent`, binary or structured
mode; V2 binary-extension bodies decoded by :mod:`driftloop.serving.sink_binary`), gives
each event its deduplication key (:func:`event_key`), and turns a request/response pair,
or one lone side, into the records stored under ``requests/`` (:func:`build_records`). It
is its own module because all of these are pure functions of the events: which events are
paired, when, and where they are written is :mod:`driftloop.serving.sink_pairing`'s
business.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from driftloop.serving.sink_binary import (
    BinaryBodyError,
    declared_json_length,
    decode_binary_body,
)
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
#: ``Ce-Annotations`` keys (JSON of the InferenceService annotations the logger's
#: ``metadataAnnotations`` names, KServe v0.20.0 ``pkg/logger/worker.go``) that an A/B
#: test's variants carry (rollout/ab_split.py, rollout/ab_graph.py), and their record keys.
AB_ANNOTATIONS = {
    "driftloop.io/ab-test": "ab_test",
    "driftloop.io/ab-variant": "ab_variant",
    "driftloop.io/ab-keyed": "ab_keyed",
    "driftloop.io/ab-key": "ab_key",
    "driftloop.io/ab-key-field": "ab_key_field",
}
#: The request field a cluster client (or transformer) fills with the key's hash bucket
#: for the InferenceGraph's Switch node (rollout/ab_graph.py): present = keyed.
AB_BUCKET_FIELD = "ab_bucket"
#: Keys of a stored record that an instance's own keys can never override.
RESERVED = frozenset({"id", "timestamp", "label", "prediction", "score", "probabilities",
                      "model_version", "event_id", "logged", "event_keys", "source",
                      *EXTENSIONS.values(), *AB_ANNOTATIONS.values()})
#: Headers never copied into the quarantine (credentials a proxy may have added).
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
#: Hex digits of an event key (128 bits of SHA-256).
KEY_HEX = 32


def event_key(ce_id: str, ce_type: str, source: str, ce_time: str, payload: bytes) -> str:
    """The deduplication key of one event: the same key means the same event, sent again.

    The key digests ``(Ce-Id, Ce-Type, Ce-Source, Ce-Time, body)``. Why these: KServe
    v0.20.0's logger takes the id from the inference request's own ``Ce-Id`` header and
    only makes a UUID when there is none (``getOrCreateID`` in ``pkg/logger/handler.go``),
    so a client that resends one ``Ce-Id`` gets the same id on different inferences. What
    the logger makes unique per inference is the source (``--source-uri`` is the pod's name,
    ``pkg/webhook/admission/pod/agent_injector.go``) and the time: ``Ce-Time`` is the
    moment the request arrived, or the response was read, in nanoseconds
    (``requestTime``/``responseTime`` in ``handler.go``; RFC 3339 with nanoseconds by
    ``types.FormatTime`` in cloudevents/sdk-go v2.16.2, the version KServe's ``go.mod``
    pins). The CloudEvents spec identifies an event by source + id; KServe breaks that
    when ids are reused, and source + id + time restores it. The body digest keeps events
    of senders that set no ``Ce-Time`` (it is optional) apart when they differ. A true
    redelivery (a retrying proxy, a broker, our own gateway's retry) repeats every
    attribute and the body, so it has the same key and is dropped. KServe's logger
    itself never retries (``pkg/logger/worker.go`` logs a failed send and moves on).

    ``payload`` is the raw body in binary content mode, the compact JSON of ``data`` in
    structured mode. Extensions are left out: a broker may add its own (Knative adds
    ``knativearrivaltime``) to a redelivered event.
    """
    digest = hashlib.sha256()
    for part in (ce_id, ce_type, source, ce_time):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    digest.update(payload)
    return digest.hexdigest()[:KEY_HEX]


def legacy_key(ce_id: str, side: str) -> str:
    """The key of an event journaled or written before events had keys: ``(ce_id, side)``.

    That is what deduplicated events then, so old journal lines and records still match.
    """
    return event_key(ce_id, side, "", "", b"")


@dataclass
class Event:
    """One accepted CloudEvent: the attributes the sink keeps and the parsed JSON body.

    ``problem`` is set (and ``data`` is None) for an event whose body is a V2 binary body
    that could not be decoded: the sink stores it raw, with ``headers``, in its quarantine.
    """

    ce_id: str
    side: str  # "request" or "response"
    time: str  # ISO-8601, UTC
    received: float  # sink clock, epoch seconds
    ext: dict[str, str]
    data: Any
    journal_key: str = ""
    key: str = ""  # event_key(...)
    source: str = ""  # Ce-Source
    occurred: float | None = None  # Ce-Time as epoch seconds; None when the event had none
    problem: str | None = None
    raw: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def to_line(self) -> bytes:
        """Serialise as one JSON line for the pending journal."""
        doc = {"ce_id": self.ce_id, "side": self.side, "time": self.time,
               "received": self.received, "ext": self.ext, "data": self.data,
               "key": self.key, "source": self.source, "occurred": self.occurred}
        return (json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], journal_key: str) -> Event:
        """Rebuild an event from a journal line's object.

        Lines written before events had keys get one from ``(ce_id, side)`` alone, which
        is what deduplicated them then.
        """
        ce_id, side = str(doc["ce_id"]), str(doc["side"])
        occurred = doc.get("occurred")
        key = doc.get("key") or legacy_key(ce_id, side)
        return cls(ce_id, side, str(doc["time"]), float(doc["received"]),
                   dict(doc.get("ext") or {}), doc.get("data"), journal_key, str(key),
                   str(doc.get("source") or ""),
                   None if occurred is None else float(occurred))

    def quarantine_line(self) -> bytes:
        """One JSON line for the sink's quarantine: the raw event, its headers, the reason."""
        doc = {"event_id": self.ce_id, "side": self.side, "source": self.source,
               "time": self.time, "received": iso_utc(dt.datetime.fromtimestamp(
                   self.received, dt.UTC)),
               "reason": self.problem, "event_key": self.key, "headers": self.headers,
               "body_base64": base64.b64encode(self.raw).decode("ascii")}
        return (json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _binary_data(headers: Mapping[str, str], body: bytes, side: str,
                 refusal: SinkError) -> tuple[Any, str | None]:
    """``(decoded body, None)`` or ``(None, reason)`` for a body that is not JSON.

    Raises:
        SinkError: ``refusal`` again when the body is not a V2 binary body either.
    """
    declared = declared_json_length(headers.get("ce-metadata")) if side == REQUEST else None
    try:
        data = decode_binary_body(body, "inputs" if side == REQUEST else "outputs", declared)
    except BinaryBodyError as exc:
        return None, f"V2 binary body: {exc.reason}"
    if data is None:
        raise refusal
    return data, None


def parse_cloudevent(headers: Mapping[str, str], body: bytes,
                     clock: Callable[[], float] = time.time) -> Event:
    """Check a CloudEvent (binary or structured mode) and return it with its JSON body.

    A binary-mode body that is not JSON but a V2 binary-extension body (a JSON header,
    then raw tensors) is decoded to its JSON form; one that cannot be decoded, or whose
    decoded form the sink cannot read, comes back with ``problem`` set, to be quarantined
    rather than refused (KServe's logger never resends a refused event).

    Args:
        headers: HTTP headers, keys in lower case.
        body: The raw body.
        clock: Source of the receive time.

    Raises:
        SinkError: 400/415/422 with a message naming the header or field.
    """
    received = clock()
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    binary_mode = content_type != "application/cloudevents+json"
    if not binary_mode:
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
                f"header Ce-{required.capitalize()}" if binary_mode else f"body.{required}"
            )
            raise SinkError(400, f"{shown}: required CloudEvent attribute missing")
    if attrs["specversion"] != "1.0":
        raise SinkError(400, f"{names['specversion']}: {attrs['specversion']!r} is not "
                             "supported (only 1.0)")
    side = SIDE_OF_TYPE.get(attrs["type"])
    if side is None:
        raise SinkError(400, f"{names['type']}: {attrs['type']!r} is not one of "
                             f"{REQUEST_TYPE}, {RESPONSE_TYPE}")
    problem: str | None = None
    decoded = False  # data came from a V2 binary body
    if binary_mode:
        try:
            data = parse_json(body, where)
        except SinkError as exc:
            if exc.status != 400:  # JSON, but not storable: the field is named
                raise
            data, problem = _binary_data(headers, body, side, exc)
            decoded = True
        payload = body
    else:
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    ce_time = attrs.get("time", "").strip()
    moment = (parse_time(ce_time, names["time"]) if ce_time
              else dt.datetime.fromtimestamp(received, dt.UTC))
    ext = {EXTENSIONS[k]: v for k, v in attrs.items() if k in EXTENSIONS and v}
    ext.update(_ab_annotations(attrs.get("annotations")))
    ce_id, source = attrs["id"].strip(), attrs["source"].strip()
    event = Event(ce_id, side, iso_utc(moment), received, ext, data,
                  key=event_key(ce_id, attrs["type"], source, ce_time, payload),
                  source=source, occurred=moment.timestamp() if ce_time else None)
    if problem is None:
        # Reject a malformed body now, while the sender can still see the error.
        try:
            (parse_request_body if side == REQUEST else parse_response_body)(data, where)
        except SinkError as exc:
            if not decoded:
                raise
            problem = f"V2 binary body, decoded: {exc}"
    if problem is not None:
        event.problem, event.data, event.raw = problem, None, body
        event.headers = {k: v for k, v in headers.items() if k not in _SECRET_HEADERS}
    return event


def _ab_annotations(raw: str | None) -> dict[str, str]:
    """The A/B keys of a ``Ce-Annotations`` value (anything unreadable: none)."""
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {AB_ANNOTATIONS[k]: str(v) for k, v in doc.items() if k in AB_ANNOTATIONS and v}


def _ab_columns(ext: dict[str, str], features: Mapping[str, Any]) -> dict[str, Any]:
    """The A/B record columns: ``ab_keyed`` a bool, the key from the body when not given.

    The local gateway says per request whether it was keyed and by which key; a cluster's
    variant InferenceService only names its test, variant and key field, so there a row is
    keyed when the request carried the hash bucket and its key is that field's value.
    """
    out: dict[str, Any] = {k: v for k, v in ext.items() if k != "ab_key_field"}
    if "ab_variant" not in ext:
        return out
    if "ab_keyed" in ext:
        out["ab_keyed"] = ext["ab_keyed"].strip().lower() == "true"
    else:
        out["ab_keyed"] = features.get(AB_BUCKET_FIELD) is not None
    field_name = ext.get("ab_key_field")
    if "ab_key" not in ext and field_name and features.get(field_name) not in (None, ""):
        out["ab_key"] = str(features[field_name])
    return out


def build_records(ce_id: str, request: Event | None, response: Event | None,
                  tag: str | None = None) -> list[dict[str, Any]]:
    """Turn a request/response pair (or one lone side) into one record per instance.

    Args:
        ce_id: The events' ``Ce-Id``.
        request: The request event, if any.
        response: The response event, if any.
        tag: Set when ``ce_id`` was already given to other records: a row without an id
            of its own is then ``f"{ce_id}.{tag}-{index}"``, not ``f"{ce_id}-{index}"``, so
            ingest does not take a new inference for a duplicate of the earlier one.
    """
    rows = parse_request_body(request.data) if request is not None else []
    preds = parse_response_body(response.data) if response is not None else []
    logged = "pair" if request and response else ("request_only" if request else "response_only")
    base = request or response
    assert base is not None
    ext = {**(response.ext if response else {}), **(request.ext if request else {})}
    keys = " ".join(e.key for e in (request, response) if e is not None and e.key)
    prefix = ce_id if tag is None else f"{ce_id}.{tag}"
    records = []
    for i in range(max(len(rows), len(preds))):
        rid, features = rows[i] if i < len(rows) else (None, {})
        pred = preds[i] if i < len(preds) else Prediction()
        record: dict[str, Any] = {k: v for k, v in features.items() if k not in RESERVED}
        record.update({
            "id": rid or pred.id or f"{prefix}-{i}",
            "timestamp": base.time,
            "prediction": pred.label,
            "score": pred.score,
            "probabilities": pred.probabilities,
            "model_version": pred.model_version,
            # event_id, logged and event_keys stay together: sink_log reads them by regex
            "event_id": ce_id,
            "logged": logged,
            "event_keys": keys,
            "source": base.source or None,
            **_ab_columns(ext, features),
        })
        records.append(record)
    return records


def _fits(request: Event, response: Event) -> bool:
    """Whether a response's body can answer a request's: as many rows, the same V2 id.

    A V2 response carries the request's ``id`` (kserve v0.20.0 ``InferResponse``
    ``response_id``; driftloop's predictor too), and every predictor answers each row.
    """
    try:
        rows = len(parse_request_body(request.data))
        predictions = len(parse_response_body(response.data))
    except SinkError:
        return False
    asked, answered = (e.data.get("id") if isinstance(e.data, dict) else None
                       for e in (request, response))
    return rows == predictions and (asked is None or asked == answered)


def choose_partner(event: Event, waiting: list[Event] | None) -> Event | None:
    """The event of ``waiting`` that ``event`` pairs with, if any.

    ``waiting``: the other side's events of the same ``Ce-Id`` and ``Ce-Source``. The rule
    is in :mod:`driftloop.serving.sink`, "Pairing": a request that occurred after the
    response is never its partner; among several, the one whose body fits, then the
    nearest in time, then the first to arrive.
    """
    if not waiting:
        return None
    best: Event | None = None
    best_rank: tuple[int, float] | None = None
    for candidate in waiting:
        request, response = (candidate, event) if event.side == RESPONSE else (
            event, candidate)
        timed = request.occurred is not None and response.occurred is not None
        if timed and request.occurred > response.occurred:  # type: ignore[operator]
            continue  # KServe stamps a request before its response (handler.go)
        if len(waiting) == 1:
            return candidate
        gap = response.occurred - request.occurred if timed else math.inf  # type: ignore[operator]
        rank = (0 if _fits(request, response) else 1, gap)
        if best_rank is None or rank < best_rank:  # ties: the first to arrive
            best, best_rank = candidate, rank
    return best


__all__ = [
    "EXTENSIONS",
    "KEY_HEX",
    "REQUEST",
    "REQUEST_TYPE",
    "RESERVED",
    "RESPONSE",
    "RESPONSE_TYPE",
    "SIDE_OF_TYPE",
    "Event",
    "build_records",
    "choose_partner",
    "event_key",
    "legacy_key",
    "parse_cloudevent",
]
