"""The sink's bare-ASGI POST path (``SinkApp``), driven with ASGI messages, no server.

The POST routes bypass Starlette's ``Request`` and ``JSONResponse`` (issue 16: a fifth of
the sink's CPU per event); these tests hold the bare path to what Starlette answered.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from starlette.responses import JSONResponse

from driftloop.data.storage import LocalStore
from driftloop.serving.sink import create_app
from driftloop.serving.sink_bodies import MAX_JSON_DEPTH, SinkError, parse_json
from driftloop.serving.sink_events import REQUEST_TYPE, RESPONSE_TYPE
from driftloop.serving.sink_pairing import PayloadSink

BODY = json.dumps({"instances": [{"x0": 0.5, "x1": -1.0, "segment": "north"}]}).encode()


def _headers(length: int | str) -> list[tuple[bytes, bytes]]:
    pairs = {"ce-id": "e1", "ce-type": REQUEST_TYPE, "ce-source": "http://localhost:9081/",
             "ce-specversion": "1.0", "ce-time": "2026-01-01T10:00:00Z",
             "content-type": "application/json", "content-length": str(length)}
    return [(k.encode(), v.encode()) for k, v in pairs.items()]


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "scheme": "http", "headers": headers,
            "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8090)}


async def _call(app: Any, scope: dict[str, Any],
                messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    incoming = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)  # as a server: nothing more until the client acts
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent


@pytest.fixture()
def sink(tmp_path: Path) -> Any:
    sink = PayloadSink(LocalStore(tmp_path / "store", create=True), mode="append")
    yield sink
    sink.close()


def _requests_counted(sink: PayloadSink, code: str) -> float:
    text = generate_latest(sink.registry).decode()
    line = f'driftloop_sink_requests_total{{code="{code}",route="events"}}'
    values = [float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line)]
    return values[0] if values else 0.0


def test_a_body_in_chunks_is_answered_as_starlette_would(sink):
    app = create_app(sink)
    half = len(BODY) // 2
    sent = asyncio.run(_call(app, _scope("POST", "/events", _headers(len(BODY))), [
        {"type": "http.request", "body": BODY[:half], "more_body": True},
        {"type": "http.request", "body": BODY[half:], "more_body": False}]))
    start, body = sent
    expected = JSONResponse({"status": "pending", "records": 0})
    assert start["status"] == 200
    assert body["body"] == expected.body
    assert dict(start["headers"]) == dict(expected.raw_headers)
    assert sink.pending_count == 1


def test_a_client_gone_mid_body_stores_nothing_and_is_counted_499(sink):
    app = create_app(sink)
    sent = asyncio.run(_call(app, _scope("POST", "/events", _headers(len(BODY))), [
        {"type": "http.request", "body": BODY[:10], "more_body": True},
        {"type": "http.disconnect"}]))
    assert sent == []  # nobody to answer: no 500, no half-read event
    assert sink.pending_count == 0 and sink.stats.pending == 0
    assert _requests_counted(sink, "499") == 1.0


def test_a_content_length_that_is_not_an_integer_is_400_naming_the_header(sink):
    app = create_app(sink)
    start, body = asyncio.run(_call(app, _scope("POST", "/events", _headers("ten")), [
        {"type": "http.request", "body": BODY, "more_body": False}]))
    assert start["status"] == 400
    assert json.loads(body["body"])["error"] == "header Content-Length: not an integer"
    assert _requests_counted(sink, "400") == 1.0


def test_other_methods_on_the_post_routes_are_405(sink):
    app = create_app(sink)
    for path in ("/", "/events", "/feedback"):
        start = asyncio.run(_call(app, _scope("GET", path, []),
                                  [{"type": "http.request", "body": b""}]))[0]
        assert start["status"] == 405
        assert (b"allow", b"POST") in start["headers"]


def test_wide_shallow_bodies_parse_and_deep_ones_are_refused():
    # more openers than the depth limit, but only two levels: the depth walk must not refuse
    wide = json.dumps([[i] for i in range(3 * MAX_JSON_DEPTH)]).encode()
    assert len(parse_json(wide, "body")) == 3 * MAX_JSON_DEPTH
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(SinkError, match="deeper than"):
        parse_json(deep, "body")
    at_limit = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(at_limit, "body") is not None


def _events_counted(sink: PayloadSink) -> dict[tuple[str, str], float]:
    out = {}
    for line in generate_latest(sink.registry).decode().splitlines():
        if line.startswith("driftloop_sink_events_total{"):
            labels, value = line[len("driftloop_sink_events_total{"):].split("} ")
            pairs = dict(p.split("=") for p in labels.split(","))
            out[pairs["side"].strip('"'), pairs["outcome"].strip('"')] = float(value)
    return out


def test_each_outcome_is_counted_by_side_and_only_outcomes_seen_are_exported(sink):
    app = create_app(sink)
    response = json.dumps({"predictions": [
        {"class": "yes", "probabilities": {"no": 0.3, "yes": 0.7}}]}).encode()

    def post(ce_type: str, body: bytes) -> int:
        headers = [(k, v if k != b"ce-type" else ce_type.encode())
                   for k, v in _headers(len(body))]
        sent = asyncio.run(_call(app, _scope("POST", "/events", headers),
                                 [{"type": "http.request", "body": body}]))
        return int(sent[0]["status"])

    assert post(REQUEST_TYPE, BODY) == 200
    assert post(REQUEST_TYPE, BODY) == 200  # the same event again
    assert post(RESPONSE_TYPE, response) == 200
    assert _events_counted(sink) == {("request", "pending"): 1.0,
                                     ("request", "duplicate"): 1.0,
                                     ("response", "stored"): 1.0}
