"""The local rollout backend: an InferenceService as YAML in a folder, plus a traffic-split gateway.

Three parts, together a laptop/CI stand-in for KServe Serverless on a cluster:

* :func:`reconcile` -- a stand-in for KServe's InferenceService controller and Knative
  Serving: it creates a revision when the predictor's template changes and computes
  ``status.components.predictor`` (traffic, latest created/ready/rolled-out revisions,
  previous rolled-out revision) with KServe's canary rules. The test stand-in of the
  Kubernetes API imports it from here, so both simulate the controller identically.
* :class:`LocalRolloutBackend` -- the :class:`~driftloop.rollout.base.RolloutBackend` over
  ``<state>/inferenceservices/<namespace>/<name>.yaml`` (the same object a cluster holds;
  atomic writes, a lock file, resourceVersion/generation bookkeeping and KServe's
  validation). The revisions live in ``<state>/revisions/<namespace>/<name>.yaml``.
* :class:`LocalGateway` -- a stand-in for Knative's traffic split: an HTTP server on
  127.0.0.1 that serves ``/v1/models/<name>:predict`` and ``/v2/models/<name>/infer`` by
  forwarding each request to a :class:`~driftloop.serving.predictor.DriftloopModel` server of
  one revision, chosen by ``status.components.predictor.traffic``.

KServe semantics simulated (``pkg/controller/.../knative/ksvc_reconciler.go`` and
``InferenceServiceStatus.PropagateStatus``): with ``canaryTrafficPercent = p`` the latest
revision gets ``p`` % and the last rolled-out revision (tag ``prev``) the rest; without it
(or with 100) the latest revision gets 100 % and becomes ``latestRolledoutRevision`` (the
one before becomes ``previousRolledoutRevision``); ``p = 0`` right after a promotion moves
``latestRolledoutRevision`` back to the previous one, so all traffic returns to it.

Not simulated: revisions become ready at once (no image pulls, no failing revisions),
status is written in the same step as the spec, no scale-to-zero, no garbage collection of
old revisions, and transformers/explainers are ignored.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fcntl
import hashlib
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from driftloop.data.storage import LocalStore, open_store
from driftloop.errors import DriftloopError, StoreError
from driftloop.rollout.base import RolloutBackend
from driftloop.rollout.errors import (
    AlreadyExistsError,
    ConflictError,
    InferenceServiceNotFound,
    RolloutError,
    RolloutRejected,
)
from driftloop.rollout.inference_service import (
    SERVERLESS,
    TAG_ROUTING_ANNOTATION,
    ServiceState,
    deployment_mode,
    merge_patch,
    validate_inference_service,
)

if TYPE_CHECKING:
    import httpx
    from starlette.requests import Request
    from starlette.responses import Response

    from driftloop.serving.server import RunningServer

ISVC_DIR = "inferenceservices"
REVISIONS_DIR = "revisions"
#: Name prefix of the gateway's serving metrics (``driftloop_gateway_requests_total``, ...).
GATEWAY_METRICS = "driftloop_gateway"
#: The route domain of the simulated cluster (``status.url``).
DOMAIN = "example.com"
#: Annotations that do not reach the Knative revision template.
_NOT_PROPAGATED = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})
_MANAGED_METADATA = ("name", "namespace", "uid", "creationTimestamp", "generation",
                     "resourceVersion", "managedFields")
_CONDITIONS = ("IngressReady", "LatestDeploymentReady", "PredictorConfigurationReady",
               "PredictorReady", "PredictorRouteReady", "Ready", "RoutesReady")

log = logging.getLogger(__name__)
#: Tries per payload event (a transport error before an answer is retried once).
LOG_ATTEMPTS = 2


def now_rfc3339() -> str:
    """Return the current UTC time as Kubernetes writes it (``2026-01-01T10:00:00Z``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the controller stand-in ------------------------------------------------------------------


def revision_template(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Return what makes up a Knative revision of the predictor.

    Everything under ``spec.predictor`` except ``canaryTrafficPercent`` (that is routing,
    not configuration) plus the labels and annotations, which KServe copies onto the
    revision template: changing any of them creates a new revision.
    """
    meta = obj.get("metadata") or {}
    predictor = dict((obj.get("spec") or {}).get("predictor") or {})
    predictor.pop("canaryTrafficPercent", None)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k not in _NOT_PROPAGATED}
    return copy.deepcopy({"predictor": predictor, "labels": dict(meta.get("labels") or {}),
                          "annotations": annotations})


def _knative_traffic(canary: int | None, component: Mapping[str, Any],
                     tag_latest: bool) -> list[dict[str, Any]]:
    """KServe's route for the Knative service, resolved as Knative reports it in status."""
    latest = component["latestReadyRevision"]
    rolled_out = component.get("latestRolledoutRevision") or ""
    first: dict[str, Any] = {"revisionName": latest, "latestRevision": True}
    if tag_latest:
        first["tag"] = "latest"
    if canary is not None and rolled_out:
        targets = [{**first, "percent": canary}]
        if canary < 100:
            targets.append({"tag": "prev", "revisionName": rolled_out, "latestRevision": False,
                            "percent": 100 - canary})
        return targets
    return [{**first, "percent": 100}]


def _propagate(component: dict[str, Any], traffic: Sequence[Mapping[str, Any]]) -> bool:
    """KServe's ``PropagateStatus`` bookkeeping of rolled-out revisions; True if it moved."""
    before = component.get("latestRolledoutRevision")
    latest_ready = component["latestReadyRevision"]
    shares: dict[str, int] = {}
    for target in traffic:
        shares[target["revisionName"]] = shares.get(target["revisionName"], 0) + target["percent"]
    for target in traffic:
        if target["revisionName"] != latest_ready or not target.get("latestRevision"):
            continue
        if component.get("latestRolledoutRevision") != latest_ready:
            if target["percent"] == 100:  # track the last revision that is fully rolled out
                component["previousRolledoutRevision"] = component.get("latestRolledoutRevision")
                component["latestRolledoutRevision"] = latest_ready
        elif (latest_ready == component["latestCreatedRevision"] and target["percent"] < 100
              and shares.get(target["revisionName"]) == 100
              and component.get("previousRolledoutRevision")):
            # rolled out at 100 % and then rolled back: the previous one is rolled out again
            component["latestRolledoutRevision"] = component["previousRolledoutRevision"]
    return component.get("latestRolledoutRevision") != before


def reconcile(obj: Mapping[str, Any], revisions: Sequence[Mapping[str, Any]], *,
              now: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Simulate KServe's controller and Knative after a spec change (a pure function).

    Args:
        obj: The InferenceService after the change; its old ``status`` carries the
            rolled-out revision bookkeeping.
        revisions: The predictor's revisions so far, oldest first (dicts with ``name``,
            ``storageUri``, ``template``, ``generation``).
        now: The condition timestamp (default: the current time).

    Returns:
        The object with a new ``status``, and the revisions (one appended when the
        predictor's template changed).
    """
    new = copy.deepcopy(dict(obj))
    revs = [copy.deepcopy(dict(r)) for r in revisions]
    meta = new.get("metadata") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    generation = int(meta.get("generation") or 1)
    predictor = (new.get("spec") or {}).get("predictor") or {}
    old = ((new.get("status") or {}).get("components") or {}).get("predictor") or {}
    stamp = now or now_rfc3339()
    host = f"{name}.{namespace}.{DOMAIN}"
    mode = deployment_mode(new)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "deploymentMode": mode,
        "url": f"http://{host}",
        "address": {"url": f"http://{name}-predictor.{namespace}.svc.cluster.local"},
        "conditions": [{"type": c, "status": "True", "lastTransitionTime": stamp}
                       for c in _CONDITIONS],
        "modelStatus": {"transitionStatus": "UpToDate",
                        "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"}},
    }
    if mode != SERVERLESS:  # one Deployment, rolled over in place: no revisions, no split
        status["components"] = {"predictor": {"url": f"http://{name}-predictor.{namespace}"
                                                     f".{DOMAIN}"}}
        new["status"] = status
        return new, revs
    template = revision_template(new)
    if not revs or revs[-1].get("template") != template:
        revs.append({
            "name": f"{name}-predictor-{len(revs) + 1:05d}",
            "storageUri": (predictor.get("model") or {}).get("storageUri"),
            "generation": generation,
            "template": template,
        })
    latest = revs[-1]["name"]
    component: dict[str, Any] = {
        "latestCreatedRevision": latest,
        "latestReadyRevision": latest,  # revisions are ready at once here
        "latestRolledoutRevision": old.get("latestRolledoutRevision") or "",
        "previousRolledoutRevision": old.get("previousRolledoutRevision") or "",
    }
    canary = predictor.get("canaryTrafficPercent")
    tag_latest = (meta.get("annotations") or {}).get(TAG_ROUTING_ANNOTATION) == "true"
    traffic = _knative_traffic(canary, component, tag_latest)
    for _ in range(4):  # the controller reconciles again whenever the status moved
        if not _propagate(component, traffic):
            break
        traffic = _knative_traffic(canary, component, tag_latest)
    component["traffic"] = traffic
    component["url"] = f"http://{name}-predictor.{namespace}.{DOMAIN}"
    status["components"] = {"predictor": {k: v for k, v in component.items() if v != ""}}
    new["status"] = status
    return new, revs


# -- the local backend ------------------------------------------------------------------------


def _dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def _strip_volatile(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(obj))
    out.pop("status", None)
    (out.get("metadata") or {}).pop("resourceVersion", None)
    return out


class LocalRolloutBackend(RolloutBackend):
    """The rollout interface over an InferenceService stored as YAML in a local folder.

    Behaves like the Kubernetes API plus KServe for what a rollout needs: merge patches,
    the resourceVersion precondition (409), ``metadata.generation``, KServe's validation
    (:class:`~driftloop.rollout.base.RolloutRejected`) and the controller's status
    (:func:`reconcile`). A lock file serialises writers of the same service.

    Args:
        state_dir: The state folder (created when missing).
        name: The InferenceService's name.
        namespace: Its namespace (a sub-folder).
        template: The template :meth:`ensure` creates from.
        max_conflict_retries: How many times a step is recomputed after a conflict.
    """

    def __init__(self, state_dir: str | Path, name: str, namespace: str = "default", *,
                 template: Any = None, max_conflict_retries: int = 5) -> None:
        super().__init__(name, namespace, template=template,
                         max_conflict_retries=max_conflict_retries)
        self.store = LocalStore(state_dir, create=True)
        self.key = f"{ISVC_DIR}/{namespace}/{name}.yaml"
        self.revisions_key = f"{REVISIONS_DIR}/{namespace}/{name}.yaml"

    @property
    def path(self) -> Path:
        """The InferenceService's YAML file."""
        return self.store.path(self.key)

    @property
    def where(self) -> str:  # noqa: D102
        return f"InferenceService {self.namespace}/{self.name} ({self.path})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_dir = self.store.root / ".locks"
        lock_dir.mkdir(exist_ok=True)
        with (lock_dir / f"{self.namespace}.{self.name}.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load(self, key: str) -> Any:
        if not self.store.exists(key):
            return None
        text = self.store.read_text(key)
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise StoreError(f"{self.store.path(key)}: not valid YAML ({exc})") from exc

    def _read_object(self) -> dict[str, Any]:
        return self._read_file()

    def _read_file(self) -> dict[str, Any]:
        obj = self._load(self.key)
        if obj is None:
            raise InferenceServiceNotFound(
                f"InferenceService {self.namespace}/{self.name} not found: {self.path} does not "
                "exist (create it with ensure(storage_uri))"
            )
        if not isinstance(obj, dict):
            raise StoreError(f"{self.path}: expected an InferenceService object")
        return obj

    def revisions(self) -> list[dict[str, Any]]:
        """Return the predictor's revisions, oldest first (``name``, ``storageUri``, ...)."""
        revs = self._load(self.revisions_key)
        if revs is None:
            return []
        if not isinstance(revs, list):
            raise StoreError(f"{self.store.path(self.revisions_key)}: expected a list")
        return revs

    def _write(self, obj: dict[str, Any], revisions: list[dict[str, Any]]) -> None:
        # Revisions first: they only grow, so a reader of the object always finds its
        # revisions; the object's rename is the commit point.
        self.store.write_text(self.revisions_key, _dump(revisions))
        self.store.write_text(self.key, _dump(obj))

    def _reject(self, errors: list[str]) -> RolloutRejected:
        return RolloutRejected(
            f"InferenceService.serving.kserve.io {self.name!r} is invalid ({self.path}): "
            + "; ".join(errors)
        )

    def _patch_object(self, patch: dict[str, Any]) -> dict[str, Any]:
        with self._locked():
            current = self._read_file()
            meta = current.get("metadata") or {}
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and str(wanted) != str(meta.get("resourceVersion")):
                raise ConflictError(
                    f"Operation cannot be fulfilled on inferenceservices.serving.kserve.io "
                    f"{self.name!r}: the object has been modified; please apply your changes "
                    "to the latest version and try again"
                )
            clean = copy.deepcopy(patch)
            clean.pop("status", None)
            for key in _MANAGED_METADATA:
                (clean.get("metadata") or {}).pop(key, None)
            new = merge_patch(current, clean)
            errors = validate_inference_service(new)
            if errors:
                raise self._reject(errors)
            if _strip_volatile(new) == _strip_volatile(current):
                return current  # a no-op write changes nothing, not even the resourceVersion
            new_meta = new["metadata"]
            if new.get("spec") != current.get("spec"):
                new_meta["generation"] = int(meta.get("generation") or 0) + 1
            new_meta["resourceVersion"] = str(int(meta.get("resourceVersion") or 0) + 1)
            new, revisions = reconcile(new, self.revisions())
            self._write(new, revisions)
            return new

    def _create_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self._locked():
            if self.store.exists(self.key):
                raise AlreadyExistsError(
                    f"inferenceservices.serving.kserve.io {self.name!r} already exists "
                    f"({self.path})"
                )
            new = copy.deepcopy(obj)
            new.pop("status", None)
            errors = validate_inference_service(new)
            if errors:
                raise self._reject(errors)
            meta = new.setdefault("metadata", {})
            meta.update(name=self.name, namespace=self.namespace, generation=1,
                        resourceVersion="1", creationTimestamp=now_rfc3339(),
                        uid=str(uuid.uuid4()))
            new, revisions = reconcile(new, [])
            self._write(new, revisions)
            return new

    def delete(self) -> None:
        """Delete the InferenceService and its revisions (no error when missing)."""
        with self._locked():
            self.store.delete(self.key)
            self.store.delete(self.revisions_key)


# -- the gateway ---------------------------------------------------------------------------------


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
    on 127.0.0.1 (one "pod" per model); revisions with the same storageUri share it.

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
    """

    def __init__(self, backend: LocalRolloutBackend, *, model_name: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, cache_dir: str | Path | None = None,
                 request_timeout: float = 30.0, logger_url: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.model_name = model_name or backend.name
        self.host = host
        self.port = port
        self.request_timeout = request_timeout
        self.logger_url = logger_url
        self.clock = clock
        self._own_cache = cache_dir is None
        self.cache_dir = Path(cache_dir) if cache_dir else Path(
            tempfile.mkdtemp(prefix="driftloop-gateway-"))
        self._lock = threading.Lock()  # routes, split and servers: held briefly
        self._refresh_lock = threading.Lock()  # one refresh (maybe loading models) at a time
        self._file_key: bytes | None = None
        self._routes: dict[str, str] = {}  # revision -> storageUri
        self._split = _Split({})
        from prometheus_client import CollectorRegistry

        #: The gateway's own Prometheus registry, served at ``/metrics``.
        self.registry = CollectorRegistry()
        self._servers: dict[str, RunningServer] = {}
        self._problem: str | None = None
        self._server: RunningServer | None = None
        self._client: httpx.AsyncClient | None = None
        #: storageUris in the order they were loaded (each appears once).
        self.loads: list[str] = []
        #: Requests forwarded per revision.
        self.served: dict[str, int] = {}
        #: Events the payload logger could not deliver.
        self.log_failures = 0

    # -- life cycle ------------------------------------------------------------------

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
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for srv in servers:
            srv.stop()
        if self._own_cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- routing -----------------------------------------------------------------------

    def _stat(self) -> bytes | None:
        # The content itself (a few KB): a change of size, inode or mtime can be missed
        # (canaryTrafficPercent 10 -> 50 keeps the size; inodes are reused; coarse mtimes).
        try:
            return self.backend.path.read_bytes()
        except FileNotFoundError:
            return None

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
        if state.deployment_mode != SERVERLESS:
            raise RolloutError(f"{self.backend.where}: the local gateway only simulates "
                               "Serverless mode")
        by_name = {rev["name"]: rev.get("storageUri") for rev in self.backend.revisions()}
        shares = {rev: pct for rev, pct in state.traffic_by_revision().items() if pct > 0}
        routes: dict[str, str] = {}
        for revision in shares:
            uri = by_name.get(revision)
            if not uri:
                raise RolloutError(f"{self.backend.where}: traffic names revision {revision!r}, "
                                   "which has no record in the revisions file")
            self._ensure_server(uri)
            routes[revision] = uri
        if not routes:
            raise RolloutError(f"{self.backend.where}: no revision receives traffic")
        with self._lock:
            if shares != self._split.weights or routes != self._routes:
                self._split = _Split(shares)
                log.info("gateway %s: split %s", self.model_name, shares)
            self._routes = routes
        self._file_key = key

    def _materialize(self, uri: str) -> Path:
        if uri.startswith("gs://"):
            target = self.cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:16]
            if not target.is_dir():
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                store = open_store(uri)
                partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.cache_dir))
                for key in store.list():
                    dest = partial / key
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(store.read_bytes(key))
                partial.rename(target)
            return target
        if "://" in uri and not uri.startswith("file://"):
            raise RolloutError(f"local gateway: cannot load storageUri {uri}: only local "
                               "folders, file:// and gs:// are supported")
        return Path(uri.removeprefix("file://"))

    def _ensure_server(self, uri: str) -> RunningServer:
        with self._lock:
            server = self._servers.get(uri)
        if server is not None:
            return server
        from driftloop.serving.predictor import DriftloopModel
        from driftloop.serving.server import serve

        model = DriftloopModel(self.model_name, model_dir=self._materialize(uri))
        server = serve([model])
        with self._lock:
            self._servers[uri] = server
        self.loads.append(uri)
        log.info("gateway %s: loaded %s (version %s) on %s", self.model_name, uri,
                 model.version, server.url)
        return server

    def _version_of(self, revision: str) -> str:
        """The registry version a revision serves (the last part of its storageUri)."""
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
            return revision, self._servers[self._routes[revision]]

    # -- HTTP ------------------------------------------------------------------------------

    async def _log_pair(self, request: bytes, response: bytes, revision: str) -> None:
        """Post one inference's request and response to the logger URL (KServe's logger)."""
        from driftloop.serving.sink import REQUEST_TYPE, RESPONSE_TYPE

        assert self._client is not None and self.logger_url is not None
        ce_id = uuid.uuid4().hex
        stamp = dt.datetime.fromtimestamp(self.clock(), dt.UTC).isoformat().replace(
            "+00:00", "Z")
        for ce_type, content in ((REQUEST_TYPE, request), (RESPONSE_TYPE, response)):
            headers = {"Ce-Id": ce_id, "Ce-Type": ce_type, "Ce-Specversion": "1.0",
                       "Ce-Source": f"http://localhost/{revision}", "Ce-Time": stamp,
                       "Ce-Inferenceservicename": self.backend.name,
                       "Ce-Namespace": self.backend.namespace, "Ce-Component": "predictor",
                       "Ce-Endpoint": revision, "Content-Type": "application/json"}
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
            picked = gateway._pick()
            if picked is None:
                return JSONResponse({"error": gateway._problem or "no revision is ready"},
                                    status_code=503)
            revision, server = picked
            version = gateway._version_of(revision)
            began = time.perf_counter()
            assert gateway._client is not None
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() in ("content-type", "accept", "ce-id", "ce-type",
                                        "ce-source", "ce-specversion")}
            body = await request.body()
            try:
                answer = await gateway._client.request(
                    request.method, f"{server.url}{path}", params=request.query_params,
                    content=body, headers=headers)
            except httpx.HTTPError as exc:  # the revision did not answer: a 502 it served
                gateway.count(version, 502, time.perf_counter() - began)
                return JSONResponse({"error": f"revision {revision}: {exc}"}, status_code=502)
            if request.method == "POST" and path.endswith((":predict", "/infer")):
                gateway.count(version, answer.status_code, time.perf_counter() - began)
            if (gateway.logger_url and request.method == "POST" and answer.status_code == 200
                    and path.endswith((":predict", "/infer"))):
                await gateway._log_pair(body, answer.content, revision)
            out = {"x-driftloop-revision": revision}
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
    "LocalGateway",
    "LocalRolloutBackend",
    "reconcile",
    "revision_template",
]
