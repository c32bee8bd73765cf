"""The local gateway: a stand-in for Knative's traffic split, served over HTTP on 127.0.0.1.

:class:`LocalGateway` serves ``/v1/models/<name>:predict`` and ``/v2/models/<name>/infer``
(and kserve's other model routes) by forwarding each request to the predictor server of one
revision, chosen by ``status.components.predictor.traffic`` of the local InferenceService
with a deterministic weighted split (:class:`_Split`). It re-reads the service whenever its
YAML file changes, so a rollout step takes effect on the next request; it counts each
inference in Prometheus series per model version (``/metrics``) and can post each
request/response pair to a payload logger, as KServe's logger does. While an A/B test runs
(:meth:`~driftloop.rollout.local.LocalRolloutBackend.start_ab`) it assigns each inference
request to a variant by its user key first (:mod:`driftloop.rollout.ab_split`).

Its own module because it is the HTTP side of the local stand-in: the backend
(:class:`~driftloop.rollout.local.LocalRolloutBackend`) only writes the YAML file, and the
model servers it forwards to are started by
:class:`~driftloop.rollout.predictors.PredictorServers`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from driftloop.decide.ab_assign import KEYED_HEADER, VARIANT_HEADER, ABTest, Assignment, assign
from driftloop.errors import DriftloopError
from driftloop.rollout.ab_split import (
    ABRequestError,
    ABRoutes,
    log_annotations,
    read_routes,
    request_assignment_key,
)
from driftloop.rollout.errors import RolloutError
from driftloop.rollout.inference_service import ServiceState
from driftloop.rollout.predictors import PredictorServers

if TYPE_CHECKING:
    import httpx
    from starlette.requests import Request
    from starlette.responses import Response

    from driftloop.serving.server import RunningServer

#: Name prefix of the gateway's serving metrics (``driftloop_gateway_requests_total``, ...).
GATEWAY_METRICS = "driftloop_gateway"
#: Tries per payload event (a transport error before an answer is retried once).
LOG_ATTEMPTS = 2

log = logging.getLogger(__name__)


class LocalService(Protocol):
    """What the gateway reads of the local backend's InferenceService.

    :class:`~driftloop.rollout.local.LocalRolloutBackend` is the one implementation. A
    protocol rather than that class because ``rollout/local.py`` imports this module, and
    an import back (even for type hints only) would close an import circle.
    """

    name: str
    namespace: str

    @property
    def path(self) -> Path:
        """The InferenceService's YAML file."""
        ...

    @property
    def where(self) -> str:
        """The service and its file, for messages."""
        ...

    @property
    def ab_path(self) -> Path:
        """The running A/B test's state file (absent: no test)."""
        ...

    def get_object(self) -> dict[str, Any]:
        """Return the whole InferenceService object."""
        ...

    def revisions(self) -> list[dict[str, Any]]:
        """Return the predictor's revisions, oldest first."""
        ...


class _Split:
    """A deterministic weighted split (smooth weighted round-robin, as nginx uses).

    After every multiple of ``100 / gcd(percents)`` requests each target has received
    exactly its share (10 %/90 %: 1 of every 10 requests; 200 requests: exactly 20/180), and
    the picks interleave evenly in between: no randomness, no seed.
    """

    def __init__(self, weights: Mapping[str, int]) -> None:
        self.weights = {k: v for k, v in weights.items() if v > 0}
        self._current = dict.fromkeys(self.weights, 0)
        self._total = sum(self.weights.values())

    def pick(self) -> str | None:
        if not self.weights:
            return None
        for key, weight in self.weights.items():
            self._current[key] += weight
        best = max(self._current, key=lambda k: self._current[k])
        self._current[best] -= self._total
        return best


def _model_in_path(path: str) -> str | None:
    for prefix in ("/v1/models/", "/v2/models/"):
        if path.startswith(prefix):
            rest = path[len(prefix):]
            name = rest.split("/", 1)[0].split(":", 1)[0]
            return name or None
    return None


class LocalGateway:
    """A stand-in for Knative's traffic split in front of the local InferenceService.

    Serves ``/v1/models/<model>:predict``, ``/v2/models/<model>/infer`` (and the other
    ``/v1/models/...`` and ``/v2/models/...`` routes of kserve) on 127.0.0.1 and forwards
    each request to the predictor server of one revision listed in
    ``status.components.predictor.traffic``, in proportion to its ``percent``. The split is
    **deterministic** (smooth weighted round-robin, restarted whenever the split changes):
    with 10 % over 200 requests the canary answers exactly 20.

    Each revision's model is its ``storageUri``: a local registry version folder (or
    ``file://``), or a ``gs://`` folder that is first copied into ``cache_dir`` (as KServe's
    storage initializer does). Every storageUri is loaded once (hash-verified by
    :class:`~driftloop.serving.predictor.DriftloopModel`) and served by its own kserve server
    on 127.0.0.1 (one "pod" per model); revisions with the same storageUri share it
    (:class:`~driftloop.rollout.predictors.PredictorServers`).

    The gateway compares the YAML file's bytes with the last ones it read on every request
    and re-reads the object when they changed, so a rollout step takes effect on the next
    request without a restart. The response header ``x-driftloop-revision`` names the
    revision that answered (a header of this stand-in only; Knative sets none).

    With ``logger_url`` the gateway also plays KServe's payload logger
    (``spec.predictor.logger``, mode ``all``): after each answered ``:predict`` / ``/infer``
    it posts the request and the response as two binary-mode CloudEvents with one ``Ce-Id``
    to that URL, as the logger in the predictor pod does. A logging failure is logged and
    does not fail the inference (KServe's logger drops the event too).

    Args:
        backend: The local backend whose InferenceService is served.
        model_name: The model name on the endpoint paths (default: the service's name, as
            KServe's runtimes use).
        host: The address to bind.
        port: The port (0: a free one).
        cache_dir: Where ``gs://`` models are copied (default: a temporary folder).
        request_timeout: Seconds to wait for a predictor's answer.
        logger_url: Where request/response CloudEvents go (``None``: not logged).
        clock: Time source (epoch seconds) of the events' ``Ce-Time``.
        ab_seed: Seed of the random split of A/B requests without a key (``None``: fresh).

    **A/B tests.** While ``backend.ab_path`` holds a running test, each ``:predict`` /
    ``/infer`` request is assigned by :func:`~driftloop.decide.ab_assign.assign` on its key
    (the test's header, else the body's field): a variant routed to the service's split is
    served as above, any other by the predictor of its fixed ``storageUri``. The answer
    carries ``x-driftloop-variant`` and ``x-driftloop-keyed``; the logged events carry the
    test, the variant, keyed and the key in ``Ce-Annotations`` (the sink makes them the
    record columns ``ab_test``, ``ab_variant``, ``ab_keyed``, ``ab_key``). A request whose
    instances carry different keys is refused with 400 (one request, one variant).
    """

    def __init__(self, backend: LocalService, *, model_name: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, cache_dir: str | Path | None = None,
                 request_timeout: float = 30.0, logger_url: str | None = None,
                 clock: Callable[[], float] = time.time, ab_seed: int | None = None) -> None:
        self.backend = backend
        self.model_name = model_name or backend.name
        self.host = host
        self.port = port
        self.request_timeout = request_timeout
        self.logger_url = logger_url
        self.clock = clock
        #: The predictor server of each storageUri the split has named so far.
        self.predictors = PredictorServers(self.model_name, cache_dir)
        self._lock = threading.Lock()  # routes and split: held briefly
        self._refresh_lock = threading.Lock()  # one refresh (maybe loading models) at a time
        self._file_key: bytes | None = None
        self._routes: dict[str, str] = {}  # revision -> storageUri
        self._split = _Split({})
        from prometheus_client import CollectorRegistry

        #: The gateway's own Prometheus registry, served at ``/metrics``.
        self.registry = CollectorRegistry()
        self._problem: str | None = None
        self._server: RunningServer | None = None
        self._client: httpx.AsyncClient | None = None
        #: Requests forwarded per revision.
        self.served: dict[str, int] = {}
        #: Events the payload logger could not deliver.
        self.log_failures = 0
        self._ab: ABRoutes | None = None
        self._ab_rng = random.Random(ab_seed)
        #: A/B requests served per (variant, keyed).
        self.ab_served: dict[tuple[str, bool], int] = {}

    # -- life cycle ------------------------------------------------------------------

    @property
    def loads(self) -> list[str]:
        """The storageUris loaded so far, in order (each appears once)."""
        return self.predictors.loads

    @property
    def cache_dir(self) -> Path:
        """Where ``gs://`` models are copied."""
        return self.predictors.cache_dir

    @property
    def url(self) -> str:
        """``http://host:port`` of the gateway."""
        if self._server is None:
            raise RuntimeError("the gateway is not running")
        return self._server.url

    def start(self) -> LocalGateway:
        """Load the models the current split needs and start serving."""
        from driftloop.serving.server import start_app

        with contextlib.suppress(DriftloopError):  # a missing service answers 503 instead
            self.refresh()
        self._server = start_app(self._app(), self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop the gateway and every predictor server (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        self.predictors.stop()

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- routing -----------------------------------------------------------------------

    def _stat(self) -> bytes | None:
        # The content itself (a few KB): a change of size, inode or mtime can be missed
        # (canaryTrafficPercent 10 -> 50 keeps the size; inodes are reused; coarse mtimes).
        # The A/B state file's bytes follow, so starting or stopping a test is a change too.
        try:
            service = self.backend.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return service + b"\0ab\0" + self.backend.ab_path.read_bytes()
        except FileNotFoundError:
            return service

    def changed(self) -> bool:
        """Whether the YAML file changed since the last :meth:`refresh`."""
        return self._file_key is None or self._stat() != self._file_key

    def split(self) -> dict[str, int]:
        """The current split: revision -> percent (revisions with 0 % left out)."""
        with self._lock:
            return dict(self._split.weights)

    def routes(self) -> dict[str, str]:
        """The current revisions with traffic: revision -> storageUri."""
        with self._lock:
            return dict(self._routes)

    def refresh(self) -> bool:
        """Re-read the InferenceService if its file changed; load the models it needs.

        Returns:
            Whether the file had changed.

        Raises:
            DriftloopError: The service is missing or a model cannot be loaded (the gateway
                then answers 503 with the message).
        """
        with self._refresh_lock:
            key = self._stat()
            if key is not None and key == self._file_key:
                return False
            try:
                self._reload(key)
            except DriftloopError as exc:
                self._problem = str(exc)
                self._file_key = None
                raise
            self._problem = None
            return True

    def _reload(self, key: bytes | None) -> None:
        obj = self.backend.get_object()
        state = ServiceState.from_object(obj)
        if not state.knative:
            raise RolloutError(f"{self.backend.where}: the local gateway only simulates "
                               "Knative (Serverless) mode")
        by_name = {rev["name"]: rev.get("storageUri") for rev in self.backend.revisions()}
        shares = {rev: pct for rev, pct in state.traffic_by_revision().items() if pct > 0}
        routes: dict[str, str] = {}
        for revision in shares:
            uri = by_name.get(revision)
            if not uri:
                raise RolloutError(f"{self.backend.where}: traffic names revision {revision!r}, "
                                   "which has no record in the revisions file")
            self.predictors.ensure(uri)
            routes[revision] = uri
        if not routes:
            raise RolloutError(f"{self.backend.where}: no revision receives traffic")
        ab = self._read_ab()
        with self._lock:
            if shares != self._split.weights or routes != self._routes:
                self._split = _Split(shares)
                log.info("gateway %s: split %s", self.model_name, shares)
            self._routes = routes
            if ab != self._ab:
                log.info("gateway %s: A/B %s", self.model_name,
                         ab.test.test_id if ab else "none")
            self._ab = ab
        self._file_key = key

    def _read_ab(self) -> ABRoutes | None:
        """The running test and its routes; load every fixed variant's model."""
        path = self.backend.ab_path
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        ab = read_routes(data, str(path))
        if ab.test.state != "running":
            return None
        for uri in ab.routes.values():
            if uri:
                self.predictors.ensure(uri)
        return ab

    def ab_test(self) -> ABTest | None:
        """The running A/B test the gateway splits by (``None``: none)."""
        with self._lock:
            return self._ab.test if self._ab is not None else None

    def _assign(self, headers: Mapping[str, str], body: bytes
                ) -> tuple[ABTest, Assignment, str | None, str] | None:
        """``(test, assignment, key, storageUri or "")`` of one request, ``None`` without a test.

        Raises:
            ABRequestError: The request's instances carry different keys.
        """
        with self._lock:
            ab = self._ab
        if ab is None:
            return None
        key = request_assignment_key(ab.test, headers, body)  # parses the body: unlocked
        with self._lock:  # the fallback's random stream and the counters
            got = assign(ab.test, key, self._ab_rng)
            counted = (got.variant, got.keyed)
            self.ab_served[counted] = self.ab_served.get(counted, 0) + 1
        return ab.test, got, key, ab.routes[got.variant]

    def _fixed(self, variant: str, uri: str) -> tuple[str, RunningServer]:
        """The revision name and predictor of a variant served from a fixed ``storageUri``."""
        revision = next((rev for rev, u in self.routes().items() if u == uri),
                        f"{self.backend.name}-ab-{variant}")
        with self._lock:
            self.served[revision] = self.served.get(revision, 0) + 1
        return revision, self.predictors.get(uri)

    def _version_of(self, revision: str, uri: str = "") -> str:
        """The registry version a revision serves (the last part of its storageUri)."""
        if not uri:
            with self._lock:
                uri = self._routes.get(revision, "")
        return uri.rstrip("/").rsplit("/", 1)[-1] or revision

    def count(self, version: str, code: int, seconds: float) -> None:
        """Count one inference request in the serving metrics (per version and code).

        The numbers a cluster gets per revision from Knative's queue-proxy
        (``revision_request_count`` / ``revision_request_latencies``), as
        ``driftloop_gateway_*`` series named by registry version, so the canary analysis
        can read them from Prometheus (``serving_stats(..., prefix=GATEWAY_METRICS)``).
        """
        from driftloop.serving import metrics as m

        labels = {"model_name": self.model_name, "model_version": version}
        m.serving_requests(self.registry, prefix=GATEWAY_METRICS).labels(
            **labels, code=str(code)).inc()
        m.serving_latency(self.registry, prefix=GATEWAY_METRICS).labels(**labels).observe(
            seconds)

    def _pick(self) -> tuple[str, RunningServer] | None:
        with self._lock:
            revision = self._split.pick()
            if revision is None:
                return None
            self.served[revision] = self.served.get(revision, 0) + 1
            return revision, self.predictors.get(self._routes[revision])

    # -- HTTP ------------------------------------------------------------------------------

    async def _log_pair(self, request: bytes, response: bytes, revision: str,
                        request_headers: Mapping[str, str] | None = None,
                        annotations: Mapping[str, str] | None = None) -> None:
        """Post one inference's request and response to the logger URL (KServe's logger).

        As KServe v0.20.0's logger does (``pkg/logger/handler.go``, ``worker.go``): the id
        is the inference request's own ``Ce-Id`` header, else a new UUID; ``Ce-Endpoint``
        is sent empty (it comes from a pod label no v0.20.0 controller sets); both events
        carry the request's ``Content-Type``; ``Ce-Source`` names the revision's pod;
        ``Ce-Annotations`` (JSON, only when there are any, as ``worker.go`` sends it) carries
        the A/B test's annotations.
        """
        from driftloop.serving.sink import REQUEST_TYPE, RESPONSE_TYPE

        assert self._client is not None and self.logger_url is not None
        given = {k.lower(): v for k, v in (request_headers or {}).items()}
        ce_id = given.get("ce-id") or uuid.uuid4().hex
        content_type = given.get("content-type") or "application/json"
        stamp = dt.datetime.fromtimestamp(self.clock(), dt.UTC).isoformat().replace(
            "+00:00", "Z")
        for ce_type, content in ((REQUEST_TYPE, request), (RESPONSE_TYPE, response)):
            headers = {"Ce-Id": ce_id, "Ce-Type": ce_type, "Ce-Specversion": "1.0",
                       "Ce-Source": f"http://localhost/{revision}", "Ce-Time": stamp,
                       "Ce-Inferenceservicename": self.backend.name,
                       "Ce-Namespace": self.backend.namespace, "Ce-Component": "predictor",
                       "Ce-Endpoint": "", "Content-Type": content_type}
            if annotations:
                headers["Ce-Annotations"] = json.dumps(dict(annotations), sort_keys=True)
            failed = True
            for attempt in range(LOG_ATTEMPTS):
                try:
                    sent = await self._client.post(self.logger_url, content=content,
                                                   headers=headers)
                    failed = sent.status_code >= 300
                    break
                except Exception as exc:  # the logger never fails an inference
                    # e.g. the sink closed an idle keep-alive connection as it was reused;
                    # the sink stores an event id once, so sending it again is safe
                    log.warning("payload logger: %s (attempt %d): %r", self.logger_url,
                                attempt + 1, exc)
            if failed:
                self.log_failures += 1

    def _app(self) -> Any:
        import anyio.to_thread
        import httpx
        from starlette import responses
        from starlette.applications import Starlette
        from starlette.routing import Route

        JSONResponse = responses.JSONResponse

        gateway = self

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            async with httpx.AsyncClient(timeout=gateway.request_timeout) as client:
                gateway._client = client
                try:
                    yield
                finally:
                    gateway._client = None

        async def health(request: Request) -> Response:
            return JSONResponse({"status": "alive"})

        async def forward(request: Request) -> Response:
            path = request.url.path
            name = _model_in_path(path)
            if name is None:
                return JSONResponse({"error": f"{path}: not found"}, status_code=404)
            if name != gateway.model_name:
                return JSONResponse({"error": f"Model with name {name} does not exist."},
                                    status_code=404)
            if gateway.changed() or gateway._problem is not None:
                try:
                    await anyio.to_thread.run_sync(gateway.refresh)
                except DriftloopError as exc:
                    return JSONResponse({"error": str(exc)}, status_code=503)
            body = await request.body()
            inference = request.method == "POST" and path.endswith((":predict", "/infer"))
            try:
                ab = gateway._assign(request.headers, body) if inference else None
            except ABRequestError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            fixed_uri = ab[3] if ab is not None else ""
            picked = (gateway._fixed(ab[1].variant, fixed_uri) if ab is not None and fixed_uri
                      else gateway._pick())
            if picked is None:
                return JSONResponse({"error": gateway._problem or "no revision is ready"},
                                    status_code=503)
            revision, server = picked
            version = gateway._version_of(revision, fixed_uri)
            began = time.perf_counter()
            assert gateway._client is not None
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() in ("content-type", "accept", "ce-id", "ce-type",
                                        "ce-source", "ce-specversion")}
            try:
                answer = await gateway._client.request(
                    request.method, f"{server.url}{path}", params=request.query_params,
                    content=body, headers=headers)
            except httpx.HTTPError as exc:  # the revision did not answer: a 502 it served
                gateway.count(version, 502, time.perf_counter() - began)
                return JSONResponse({"error": f"revision {revision}: {exc}"}, status_code=502)
            if inference:
                gateway.count(version, answer.status_code, time.perf_counter() - began)
            if gateway.logger_url and inference and answer.status_code == 200:
                await gateway._log_pair(
                    body, answer.content, revision, request.headers,
                    log_annotations(ab[0], ab[1], ab[2]) if ab is not None else None)
            out = {"x-driftloop-revision": revision}
            if ab is not None:
                out[VARIANT_HEADER] = ab[1].variant
                out[KEYED_HEADER] = "true" if ab[1].keyed else "false"
            if "content-type" in answer.headers:
                out["content-type"] = answer.headers["content-type"]
            return responses.Response(answer.content, status_code=answer.status_code,
                                      headers=out)

        async def metrics(request: Request) -> Response:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return responses.Response(generate_latest(gateway.registry),
                                      media_type=CONTENT_TYPE_LATEST)

        return Starlette(
            routes=[Route("/", health, methods=["GET"]),
                    Route("/metrics", metrics, methods=["GET"]),
                    Route("/{path:path}", forward, methods=["GET", "POST"])],
            lifespan=lifespan,
        )


__all__ = [
    "GATEWAY_METRICS",
    "LocalGateway",
    "LocalService",
]
