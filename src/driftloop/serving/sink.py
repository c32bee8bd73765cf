"""The payload sink: KServe InferenceLogger CloudEvents and user feedback, durably stored.

What KServe's logger sends (read from KServe v0.20.0 and the cloudevents/sdk-go v2.16.2 its
``go.mod`` pins; ``tests/serving/test_sink_kserve_logger.py`` plays it). The agent in the
predictor pod (``spec.predictor.logger: {mode: all, url: http://sink/}``) posts one
CloudEvent per inference request and one per response, in binary content mode
(``cloudevents.WithEncodingBinary`` in ``pkg/logger/worker.go``): the body is the raw
request/response body, the attributes travel as headers::

    Ce-Id            the inference request's own Ce-Id header, else a new UUID
                     (getOrCreateID, pkg/logger/handler.go); shared by request and
                     response. There is no x-request-id involved: a client that sends
                     the same Ce-Id on every request gets it on every event.
    Ce-Type          org.kubeflow.serving.inference.request | ...inference.response
    Ce-Source        the agent's --source-uri: the pod's name
                     (pkg/webhook/admission/pod/agent_injector.go)
    Ce-Specversion   1.0
    Ce-Time          when the request arrived / the response was read (handler.go),
                     RFC 3339 in UTC with nanoseconds (sdk-go types.FormatTime)
    Ce-Recordedtime  when the event was sent (worker.go)
    Ce-Inferenceservicename, Ce-Namespace
    Ce-Component     the pod label ``component``: predictor, transformer or explainer
    Ce-Endpoint      the pod label ``endpoint`` (agent_injector.go), which no v0.20.0
                     controller sets: sent, and empty. Default and canary are NOT told
                     apart by it; the predictor's ``model_version`` in each response is
                     what names the version that answered (Ce-Source names the pod).
    Ce-Metadata      JSON {header: [values]} of the request headers listed in the
                     logger's metadataHeaders; "{}" when none
    Ce-Annotations   JSON, only when the logger has annotations
    Content-Type     the inference request's Content-Type, on both events (none when the
                     request had none); the response event reuses the request's

The agent sends the two events from a worker pool, so they may arrive in either order; a
response is only logged for HTTP 200; a failed send is logged and dropped, never retried
(``worker.go``). Structured mode (``application/cloudevents+json``) is accepted too.

Pairing
    A response pairs with a waiting request of the same ``Ce-Id`` *and* ``Ce-Source`` (the
    same pod: KServe sets one source for both events of an inference). Because a client
    may reuse a ``Ce-Id``, several may wait under one id: a request that occurred after
    the response (``Ce-Time``, when both have one) is never its partner (the agent stamps
    the request before proxying it, ``handler.go``); among the others the sink takes one
    whose body fits (as many rows as predictions, and a V2 response's ``id`` equal to the
    request's, as kserve's ``InferResponse`` echoes it), then the nearest in time, then
    the first to arrive. Without reuse there is one candidate and this is plain pairing.

What is stored
    Each request/response pair becomes one record per instance in
    ``requests/dt=YYYY-MM-DD/<file>.jsonl``::

        {"id", "timestamp", <features...>, "prediction", "score", "probabilities",
         "model_version", "event_id", "logged", "event_keys", "source",
         "inference_service", "namespace", "component", "endpoint"}

    ``id`` is the instance's ``id`` when the request (or our predictor's response) gave
    one, else ``f"{Ce-Id}-{index}"``; when that ``Ce-Id`` was already given to earlier
    records (a reused id, or the late partner of a side written alone), the rows get
    ``f"{Ce-Id}.{tag}-{index}"`` with ``tag`` the first 12 hex digits of the event's key,
    so ingest does not drop a new inference as a duplicate of the earlier one.
    ``score`` is the top class probability. ``logged`` is ``pair``, ``request_only`` or
    ``response_only``; ``event_keys`` the events' deduplication keys, ``source`` the
    ``Ce-Source``. Empty extensions (``Ce-Endpoint`` from KServe 0.20) are left out.
    Ingest reads these files as records; it ignores the extra keys. ``POST /feedback``
    with ``{"id", "label"}`` (optional ``timestamp``; or a list of such objects) appends
    to ``feedback/dt=YYYY-MM-DD/``, which ingest joins to records by ``id``.

    ``dt=`` is the UTC day the sink *received* the data (for a pair: its first event),
    ``timestamp`` is the request's ``Ce-Time`` (the feedback's own ``timestamp``, default
    the receive time). Partitioning by arrival keeps every write of the last days inside
    the dedup window below, whatever clocks the senders have; a record's partition and its
    timestamp differ only around midnight or for replayed events.

V2 binary tensors
    A V2 request with the binary tensor extension (a JSON header, then raw tensor bytes;
    the header's length in the request header ``Inference-Header-Content-Length``, kserve
    v0.20.0 ``python/kserve/kserve/protocol/rest/v2_endpoints.py`` / ``infer_type.py``)
    reaches the sink as it was sent, without that header, and is not JSON. The sink
    decodes it (:mod:`driftloop.serving.sink_binary`: the header's end from
    ``Ce-Metadata`` when the logger lists the header, else from the JSON itself, checked
    against the tensors' ``binary_data_size``) and stores its rows like a JSON body's;
    binary responses (``binary_data_output``) likewise. One it cannot decode, or whose
    decoded form is not a request/response the sink reads, is neither refused nor lost:
    the raw event is written to ``sink/quarantine/dt=YYYY-MM-DD/`` as one JSON line
    ``{"event_id", "side", "source", "time", "received", "reason", "event_key",
    "headers", "body_base64"}`` and answered 200 ``{"status": "quarantined", "reason"}``.
    Other bodies that are not JSON stay a 400.

Unpaired events
    The first event of a pair waits in memory (bounded by ``max_pending``, oldest first)
    for ``pending_ttl`` seconds. It is also journaled durably under ``sink/pending/`` before
    the 2xx, so a restart restores it. When the partner never comes it is written alone:
    a lone request keeps its features (``prediction`` null, ``logged: request_only``), so
    drift detection still sees it; a lone response (e.g. its request was never logged) is
    written with its predictions and no features (``logged: response_only``), and ingest
    quarantines it with "<feature>: required value missing" -- counted, never silent. A
    partner that arrives after its event was written alone waits like any event (with a
    reused id it may belong to a later inference) and is written alone in turn.
    When ``max_pending`` is reached the oldest pending event is written alone early.

Durability: a 2xx only after the data is on disk
    Local folder stores (``mode="append"``): each process appends to its own file per
    partition (``sink-<host>-<pid>-<start>.jsonl``) with ``O_APPEND``; a new file also
    fsyncs its folder. Writes are group committed (:mod:`driftloop.serving.sink_commit`):
    the event loop checks and pairs an event and queues its lines, a committer thread
    writes everything queued with one write and one fsync per file (the files of a batch
    in parallel) and only then are the batch's events answered -- a ``duplicate`` too,
    once the original's batch is durable. The committer waits for more events at most
    ``--commit-max-wait-ms`` (2) after a batch's first line, and only while other events
    are being handled; ``--commit-max-batch`` (512) bounds a batch, and ``1`` turns group
    commit off (each event written and fsync'd on its own, ~0.25-3 ms here depending on
    the disk's other work). Defaults: :class:`driftloop.config.SinkConfig`. A failed write
    or fsync cuts the batch's files back to their size before it and answers 503 to every
    event of the batch and every one queued behind it; the sink then rebuilds its state
    from the files, as at start, so a retry is stored, never taken for a duplicate.
    Other stores, e.g. ``gs://`` (``mode="object"``): one atomic object per event, named
    from the event's key, so a retried write replaces the same object.
    Measured on 2 CPUs over loopback, shared with other work (benchmarks/sink_throughput.py,
    8 client processes x 5 connections, the load average in its table; figures in the
    README's Benchmarks): group commit against one fsync per event in the same run, and
    after a ``kill -9`` in the middle every acknowledged event is in the store exactly once.
    Append-mode journals are compacted on start and at each new UTC day (pending events
    rewritten, older files deleted; queued lines are committed first).
    A reader of today's partition may see a line that is being appended at that instant
    (ingest quarantines it as unparsable); ingest whole past days to avoid it.

Idempotence
    An event is identified by its key, a digest of ``(Ce-Id, Ce-Type, Ce-Source,
    Ce-Time, body)`` (:func:`driftloop.serving.sink_events.event_key` gives the sources):
    KServe makes the time and the pod unique per inference even when the client reuses
    the id, and a true redelivery (a retrying proxy or broker, our gateway's retry)
    repeats all of it. So a redelivered event is answered 200 (``{"status":
    "duplicate"}``) and stored once, while a new inference under a reused ``Ce-Id`` is
    kept. On start the seen keys are rebuilt from the ``event_keys`` of the records in
    the ``requests/`` partitions (and from the quarantine) of the last ``dedup_days``
    days (the dedup window) and the pending events from the whole journal, so a restart
    still deduplicates and still pairs. Records and journal lines written before events
    had keys are matched by ``(Ce-Id, side)``, the rule then. At most ``max_seen`` keys
    are kept (default 1,000,000; with the ids, ~180 bytes per event, measured, plus 8 per
    key and per id for the order the oldest go in); a retry older than the window, or
    forgotten by the bound, is stored again and ingest counts its rows as duplicates by
    ``id`` (accounted, not silent). A snapshot of the seen keys
    (``sink/seen/snapshot.json``, :mod:`driftloop.serving.sink_seen`) is written at
    shutdown and every ``--snapshot-interval`` seconds (300) when something was written;
    a restart loads it and reads only what the record files gained after it (in object
    mode: only the objects written after it), so a restart's time is bounded by
    ``max_seen``, not by the window's volume (without one: ~0.5 s per 100,000 local
    record lines; one GET per object on gs://). A snapshot whose covered files are gone
    or shorter is not used (logged), and the window is read in full.
    Feedback is not deduplicated: a repeated label is superseded at ingest (the latest
    timestamp wins).

Run one replica per store: request and response must reach the same process to be paired.

Status codes: 200 stored/pending/duplicate/quarantined; 400 a missing or invalid
CloudEvent header, a body that is neither JSON nor a V2 binary body or is nested deeper
than ``MAX_JSON_DEPTH`` (64) levels; 413 a body above ``max_body_bytes``; 415 an
unsupported structured event; 422 JSON of the wrong shape or a string that is not valid
Unicode (a lone surrogate such as ``"\ud800"``, which no UTF-8 file can hold); the message
names the field; 503 the store write failed (nothing was recorded as seen; the sender may
retry). A client that closes its connection before the body is complete gets no answer
and nothing is recorded; its request is counted with code 499 (nginx's "client closed
request").

Everything an event's later writing needs (its shape, depth and text) is checked before
the 2xx, so an acknowledged event can always be written; a refused one is neither
journaled nor remembered as seen. KServe's logger logs a request even when the predictor
refuses it (a 400 has no response event): such a request, when well-formed JSON, is
acknowledged and written alone after ``pending_ttl`` (``request_only``); ingest then
applies the schema to its values.

Metrics (``GET /metrics``, the sink's own registry; every one is listed with its labels
in ``manifests/monitoring/README.md``)
    ``driftloop_sink_requests_total{route, code}`` and
    ``driftloop_sink_request_duration_seconds{route}`` for every answer of ``events`` and
    ``feedback`` (each code above has a series from the start, so a 5xx ratio is 0, not
    undefined); ``driftloop_sink_events_total{side, outcome}``,
    ``driftloop_sink_records_total{logged}``, ``driftloop_sink_feedback_total``,
    ``driftloop_sink_rejected_total{status}``, ``driftloop_sink_pending`` and
    ``driftloop_sink_write_seconds``; and live quality per model version, where the logged
    predictions meet the feedback labels (:mod:`driftloop.serving.sink_quality`):
    ``driftloop_feedback_labels_total``, ``driftloop_feedback_correct_total``,
    ``driftloop_feedback_label_lag_seconds`` and ``driftloop_feedback_received_total``.

Where the code lives
    This module is the HTTP app (:func:`create_app`: routes, body size limit, the sweeper)
    and the entry point (:func:`main`). The rest is split by what each part knows:

    * :mod:`driftloop.serving.sink_asgi` -- the POST routes as bare ASGI (body in,
      pre-encoded JSON out), dispatched before Starlette's router.
    * :mod:`driftloop.serving.sink_bodies` -- the checks on a body before the 2xx (JSON
      limits, V1/V2 request and response shapes, feedback).
    * :mod:`driftloop.serving.sink_events` -- the CloudEvent envelope, the event keys and
      the records a request/response pair becomes.
    * :mod:`driftloop.serving.sink_binary` -- V2 binary-extension bodies: found, split and
      decoded into their JSON form.
    * :mod:`driftloop.serving.sink_log` -- the durable files: fsync'd appends or atomic
      objects, read back on start.
    * :mod:`driftloop.serving.sink_commit` -- the group commit: the queue of lines, the
      committer thread, the tickets an answer waits on.
    * :mod:`driftloop.serving.sink_pairing` -- :class:`PayloadSink`, the state: pairing,
      deduplication, the pending journal, the quarantine and recovery.
    * :mod:`driftloop.serving.sink_seen` -- the seen keys and ids (the dedup set), rebuilt
      on start from the window's records, and their snapshot.
    * :mod:`driftloop.serving.sink_quality` -- the live join of feedback labels to the
      logged predictions (bounded in size and age) and its metrics.

Entry point::

    python -m driftloop.serving.sink --store PATH --host 127.0.0.1 --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from driftloop.config import SinkConfig
from driftloop.data.storage import LocalStore, open_store
from driftloop.errors import DriftloopError, StoreError
from driftloop.serving.metrics import LATENCY_BUCKETS, Children, get_or_create
from driftloop.serving.sink_asgi import (
    Disconnected,
    Receive,
    Send,
    SinkApp,
    lower_headers,
    read_body,
    send_json,
)
from driftloop.serving.sink_bodies import SinkError
from driftloop.serving.sink_commit import Receipt

# kept importable for rollout/local.py and tests/e2e/test_canary_flow.py
from driftloop.serving.sink_events import REQUEST_TYPE, RESPONSE_TYPE  # noqa: F401
from driftloop.serving.sink_pairing import PayloadSink
from driftloop.serving.sink_quality import (
    DEFAULT_MAX_PREDICTIONS,
    DEFAULT_MAX_VERSIONS,
    DEFAULT_TTL,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 4 * 1024 * 1024
#: The status codes each route answers (see "Status codes"), whose request counts are
#: exported from the start; 500 is an unexpected failure.
ROUTE_CODES: dict[str, tuple[str, ...]] = {
    "events": ("200", "400", "413", "415", "422", "500", "503"),
    "feedback": ("200", "400", "413", "422", "500", "503"),
}


def create_app(sink: PayloadSink, *, max_body_bytes: int = DEFAULT_MAX_BODY,
               sweep_interval: float = 1.0) -> SinkApp:
    """Return the sink's ASGI app. The app owns ``sink``: it is closed on shutdown.

    Routes: ``POST /`` and ``POST /events`` (CloudEvents), ``POST /feedback``,
    ``GET /healthz``, ``GET /metrics``. A background task writes expired pending events
    alone every ``sweep_interval`` seconds.
    """
    answered = get_or_create(Counter, "driftloop_sink_requests",
                             "Requests to the sink by route (events, feedback) and HTTP "
                             "status code.", ("route", "code"), registry=sink.registry)
    latency = get_or_create(Histogram, "driftloop_sink_request_duration_seconds",
                            "Time to answer a request to the sink, by route, seconds.",
                            ("route",), registry=sink.registry, buckets=LATENCY_BUCKETS)
    counted = Children(answered)
    for route, codes in ROUTE_CODES.items():  # 0 from the start: a 5xx ratio is defined
        for code in codes:
            counted(route, code)
    timed = {route: latency.labels(route) for route in ROUTE_CODES}

    async def call(route: str, receive: Receive, send: Send, headers: Mapping[str, str],
                   handle: Callable[..., dict[str, Any]], submit: Callable[..., Receipt],
                   *args: Any) -> None:
        began = time.perf_counter()
        code = 500  # an unexpected exception: SinkApp answers 500
        try:
            if sink.group_commit:  # no disk write in submit: the loop waits for nothing
                with sink.busy():
                    body = await read_body(receive, headers, max_body_bytes)
                    receipt = submit(*args, body)
                result = await sink.finish_async(receipt)  # once its batch is durable
            else:
                body = await read_body(receive, headers, max_body_bytes)
                result = await run_in_threadpool(handle, *args, body)
            code = 200
        except Disconnected:
            code = 499  # nginx's "client closed request": counted, never sent
            return
        except SinkError as exc:
            if exc.status == 413:
                (sink.reject_feedback if route == "feedback" else sink._reject)(exc)
            code = exc.status
            result = {"error": str(exc)}
        finally:
            counted(route, str(code)).inc()
            timed[route].observe(time.perf_counter() - began)
        await send_json(send, code, result)

    async def events(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = lower_headers(scope)
        await call("events", receive, send, headers, sink.handle_event, sink.submit_event,
                   headers)

    async def feedback(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await call("feedback", receive, send, lower_headers(scope), sink.handle_feedback,
                   sink.submit_feedback)

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

    async def served_by_sink_app(request: Request) -> Response:  # POSTs never get here
        raise AssertionError("SinkApp serves the POST routes")

    app = Starlette(
        routes=[
            # listed so that another method on them is a 405 (Allow: POST)
            Route("/", served_by_sink_app, methods=["POST"]),
            Route("/events", served_by_sink_app, methods=["POST"]),
            Route("/feedback", served_by_sink_app, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    return SinkApp(app, {"/": events, "/events": events, "/feedback": feedback})


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
        be opened (a file, missing permissions, read-only). Logs go to stderr as
        ``--log-format`` says (else ``$DRIFTLOOP_LOG_FORMAT``, else text), via
        :func:`driftloop.logs.configure_logging`.
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
    parser.add_argument("--commit-max-batch", type=int, default=SinkConfig.commit_max_batch,
                        help="most event writes per group-commit fsync; 1: one fsync "
                             "per event")
    parser.add_argument("--commit-max-wait-ms", type=float,
                        default=SinkConfig.commit_max_wait_ms,
                        help="longest wait for more events before a group commit's fsync")
    parser.add_argument("--snapshot-interval", type=float, default=300.0,
                        help="seconds between snapshots of the seen events (0: at "
                             "shutdown only)")
    parser.add_argument("--schema", help="schema file: feedback labels must be its labels")
    parser.add_argument("--feedback-max-predictions", type=int,
                        default=DEFAULT_MAX_PREDICTIONS,
                        help="most logged predictions kept to join live feedback labels to")
    parser.add_argument("--feedback-ttl", type=float, default=DEFAULT_TTL,
                        help="seconds a logged prediction is kept for that join")
    parser.add_argument("--max-versions", type=int, default=DEFAULT_MAX_VERSIONS,
                        help="most model versions with live-quality series of their own")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", metavar="{text,json}", default=None,
                        help="plain text or one JSON object per line (default: "
                             "$DRIFTLOOP_LOG_FORMAT, else text)")
    args = parser.parse_args(argv)

    from driftloop.logs import configure_logging, resolve_format

    try:  # first, so that even a store error below comes out in the chosen format
        setup = configure_logging(resolve_format(args.log_format), args.log_level)
    except DriftloopError as exc:
        print(f"driftloop sink: error: {exc}", file=sys.stderr)
        return exc.exit_code
    with setup:
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    """:func:`main` once logging is set up: open the store, serve until a signal."""
    from driftloop.data.schema import load_schema
    from driftloop.data.storage import check_store_root, describe_os_error
    from driftloop.logs import report_error
    from driftloop.serving.server import run_app

    store_path = args.store
    try:
        labels = load_schema(args.schema).labels if args.schema else None
        commit = SinkConfig(commit_max_batch=args.commit_max_batch,
                            commit_max_wait_ms=args.commit_max_wait_ms)
        check_store_root(store_path, create=True)
        store = open_store(store_path, create="://" not in str(store_path) or
                           str(store_path).startswith("file://"))
        if isinstance(store, LocalStore):
            _probe_writable(store)
        sink = PayloadSink(store, mode=args.mode, pending_ttl=args.pending_ttl,
                           max_pending=args.max_pending, dedup_days=args.dedup_days,
                           max_seen=args.max_seen, labels=labels,
                           feedback_max_predictions=args.feedback_max_predictions,
                           feedback_ttl=args.feedback_ttl, max_versions=args.max_versions,
                           commit_max_batch=commit.commit_max_batch,
                           commit_max_wait=commit.commit_max_wait_ms / 1000,
                           snapshot_interval=args.snapshot_interval)
    except DriftloopError as exc:
        report_error(f"driftloop sink: error: {exc}", logger="driftloop.serving.sink")
        return exc.exit_code
    except OSError as exc:
        report_error(f"driftloop sink: error: {describe_os_error(exc, store_path)}",
                     logger="driftloop.serving.sink")
        return StoreError.exit_code
    except ValueError as exc:  # a flag out of range (PayloadSink names it)
        report_error(f"driftloop sink: error: {exc}", logger="driftloop.serving.sink")
        return 2
    app = create_app(sink, max_body_bytes=args.max_body_bytes)
    run_app(app, args.host, args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["DEFAULT_MAX_BODY", "SinkApp", "create_app", "main"]
