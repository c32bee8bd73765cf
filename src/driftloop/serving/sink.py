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

Where the code lives
    This module is the HTTP app (:func:`create_app`: routes, body size limit, the sweeper)
    and the entry point (:func:`main`). The rest is split by what each part knows:

    * :mod:`driftloop.serving.sink_bodies` -- the checks on a body before the 2xx (JSON
      limits, V1/V2 request and response shapes, feedback).
    * :mod:`driftloop.serving.sink_events` -- the CloudEvent envelope and the records a
      request/response pair becomes.
    * :mod:`driftloop.serving.sink_log` -- the durable files: fsync'd appends or atomic
      objects, read back on start.
    * :mod:`driftloop.serving.sink_pairing` -- :class:`PayloadSink`, the state: pairing,
      deduplication, the pending journal and recovery.

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
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from driftloop.data.storage import LocalStore, open_store
from driftloop.errors import DriftloopError, StoreError
from driftloop.serving.sink_bodies import SinkError

# kept importable for rollout/local.py and tests/e2e/test_canary_flow.py
from driftloop.serving.sink_events import REQUEST_TYPE, RESPONSE_TYPE  # noqa: F401
from driftloop.serving.sink_pairing import PayloadSink

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 4 * 1024 * 1024


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


__all__ = ["DEFAULT_MAX_BODY", "create_app", "main", "read_body"]
