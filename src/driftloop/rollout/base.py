"""The rollout interface and the InferenceService helpers both backends share.

A rollout moves the traffic of one KServe ``InferenceService`` between two model versions
the way KServe's Serverless (Knative) mode does it:

* :meth:`RolloutBackend.set_canary` writes the canary's ``storageUri`` into
  ``spec.predictor.model.storageUri`` and sets ``spec.predictor.canaryTrafficPercent``. The
  new spec becomes the latest revision and receives that share of the traffic; the
  previously rolled-out revision keeps the rest.
* :meth:`RolloutBackend.set_traffic` advances (or reduces) the canary's share; 100 promotes
  it by removing ``canaryTrafficPercent`` (the latest revision then takes all traffic and
  becomes the rolled-out revision).
* :meth:`RolloutBackend.rollback` sets ``canaryTrafficPercent: 0`` first, which pins all
  traffic to the previously rolled-out revision at once, then restores the previous
  ``storageUri`` (so the next revision serves the old model again) and finally removes
  ``canaryTrafficPercent``. Each step is one PATCH, and a rollback interrupted half-way
  continues from where it stopped when called again.

KServe's RawDeployment mode ignores ``canaryTrafficPercent``; every operation refuses such a
service before writing anything (:class:`UnsupportedDeploymentMode`).

**Which model is stable.** The status of an InferenceService names revisions, not storage
URIs, so the backends record the rolled-out model's URI in the annotation
:data:`PREVIOUS_URI_ANNOTATION` whenever they change ``storageUri`` (always in the same
write, so the annotation never creates a revision of its own). While a canary is in
progress (``canaryTrafficPercent`` below 100 and the spec's URI differs from the
annotation), the annotation is the stable model and the spec's URI is the canary; otherwise
the spec's URI is the stable model and the annotation is what :meth:`RolloutBackend.rollback`
returns to.

**Idempotence and concurrent writers.** Every step reads the object, computes the merge
patch that brings it to the requested state (nothing when it is already there: no PATCH is
sent) and sends it with ``metadata.resourceVersion``, so a write based on a stale read is
refused (409 Conflict) and recomputed from a fresh read (at most
:attr:`RolloutBackend.max_conflict_retries` times).

Implementations: :class:`driftloop.rollout.kube.KubeRolloutBackend` (the Kubernetes API)
and :class:`driftloop.rollout.local.LocalRolloutBackend` (a YAML file in a local folder).
"""

from __future__ import annotations

import copy
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from driftloop.errors import DriftloopError
from driftloop.models.registry import Registry

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"

DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
SERVERLESS = "Serverless"
RAW_DEPLOYMENT = "RawDeployment"
#: KServe tags the latest revision's traffic target "latest" only when this is "true".
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
#: The storageUri that was rolled out (served 100%) before the spec's storageUri was set.
PREVIOUS_URI_ANNOTATION = "driftloop.io/previous-storage-uri"

#: KServe's webhook accepts these schemes (and plain local paths) in ``storageUri``.
SUPPORTED_STORAGE_URI_PREFIXES = ("gs://", "s3://", "pvc://", "file://", "https://", "http://",
                                  "hdfs://", "webhdfs://", "oci://", "hf://")
#: KServe's InferenceService name rule (a DNS-1035 label).
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 63

#: The InferenceService template used when none is given: our predictor as a KServe
#: ServingRuntime (``runtime``) for the sklearn model format, Serverless mode, one replica.
DEFAULT_TEMPLATE: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": KIND,
    "metadata": {
        "annotations": {DEPLOYMENT_MODE_ANNOTATION: SERVERLESS},
        "labels": {"app.kubernetes.io/part-of": "driftloop"},
    },
    "spec": {
        "predictor": {
            "minReplicas": 1,
            "model": {
                "modelFormat": {"name": "sklearn"},
                "runtime": "driftloop-predictor",
                "protocolVersion": "v1",
            },
        },
    },
}

log = logging.getLogger(__name__)


# -- errors -------------------------------------------------------------------------------


class RolloutError(DriftloopError):
    """A rollout step cannot be carried out (the message names the InferenceService)."""


class InferenceServiceNotFound(RolloutError):
    """The InferenceService does not exist (HTTP 404)."""


class RolloutRejected(RolloutError):
    """The API server (or its admission webhook) refused the object (HTTP 400/422)."""


class UnsupportedDeploymentMode(RolloutError):
    """The InferenceService runs in RawDeployment mode, which ignores canaryTrafficPercent."""


class ConflictError(RolloutError):
    """A write carried a stale ``metadata.resourceVersion`` (HTTP 409 Conflict)."""


class AlreadyExistsError(RolloutError):
    """A create found an object of that name (HTTP 409 AlreadyExists)."""


# -- state --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficTarget:
    """One entry of ``status.components.predictor.traffic`` (a Knative traffic target).

    Attributes:
        revision_name: The Knative revision.
        percent: Its share of the requests (0-100).
        tag: ``"prev"`` for the previously rolled-out revision during a canary, ``"latest"``
            with tag routing enabled, else None.
        latest_revision: Whether the target follows the latest ready revision.
    """

    revision_name: str
    percent: int
    tag: str | None = None
    latest_revision: bool = False

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrafficTarget:
        """Parse one Knative ``TrafficTarget`` dict (camelCase keys)."""
        return cls(
            revision_name=str(raw.get("revisionName") or ""),
            percent=int(raw.get("percent") or 0),
            tag=raw.get("tag") or None,
            latest_revision=bool(raw.get("latestRevision", False)),
        )


@dataclass(frozen=True)
class ServiceState:
    """What an InferenceService serves, read from its spec, annotations and status.

    Attributes:
        name: The InferenceService's name.
        namespace: Its namespace.
        storage_uri: The stable model: the previous URI while a canary is in progress,
            else the spec's URI.
        canary_storage_uri: The canary's URI (the spec's) while a canary is in progress.
        spec_storage_uri: ``spec.predictor.model.storageUri`` (the latest revision's model).
        previous_storage_uri: The annotation :data:`PREVIOUS_URI_ANNOTATION` (the rollback
            target), if set.
        canary_traffic_percent: ``spec.predictor.canaryTrafficPercent``, None when absent.
        traffic: ``status.components.predictor.traffic``.
        latest_created_revision: Status: the newest revision.
        latest_ready_revision: Status: the newest ready revision.
        latest_rolled_out_revision: Status: the last revision that got 100%.
        previous_rolled_out_revision: Status: the one rolled out before it.
        ready: Whether the ``Ready`` condition is ``True``.
        reconciled: Whether the status describes the current spec
            (``status.observedGeneration == metadata.generation``).
        resource_version: ``metadata.resourceVersion``.
        generation: ``metadata.generation``.
        deployment_mode: ``Serverless`` or ``RawDeployment`` (annotation, else status).
        url: ``status.url``, if any.
    """

    name: str
    namespace: str
    storage_uri: str | None
    canary_storage_uri: str | None
    spec_storage_uri: str | None
    previous_storage_uri: str | None
    canary_traffic_percent: int | None
    traffic: tuple[TrafficTarget, ...] = ()
    latest_created_revision: str | None = None
    latest_ready_revision: str | None = None
    latest_rolled_out_revision: str | None = None
    previous_rolled_out_revision: str | None = None
    ready: bool = False
    reconciled: bool = False
    resource_version: str | None = None
    generation: int | None = None
    deployment_mode: str = SERVERLESS
    url: str | None = None

    @property
    def canary_in_progress(self) -> bool:
        """Whether a canary shares the traffic with a different, stable model."""
        return self.canary_storage_uri is not None

    @property
    def traffic_matches_spec(self) -> bool:
        """Whether the latest revision's traffic is what ``canaryTrafficPercent`` asks for.

        KServe gives the latest revision ``canaryTrafficPercent`` (all of it when the field
        is absent, or when nothing was rolled out before); False while the status lags.
        """
        latest = [t for t in self.traffic if t.latest_revision]
        if len(latest) != 1 or latest[0].revision_name != self.latest_ready_revision:
            return False
        wanted = self.canary_traffic_percent
        if wanted is None or self.latest_rolled_out_revision is None:
            wanted = 100
        return latest[0].percent == wanted

    def traffic_by_revision(self) -> dict[str, int]:
        """Return each revision's total share (a revision may appear in several targets)."""
        shares: dict[str, int] = {}
        for target in self.traffic:
            shares[target.revision_name] = shares.get(target.revision_name, 0) + target.percent
        return shares

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (for run artifacts)."""
        out = asdict(self)
        out["traffic"] = [asdict(t) for t in self.traffic]
        return out

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ServiceState:
        """Read the state from an InferenceService dict (camelCase, as the API returns it)."""
        meta = obj.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        predictor = (obj.get("spec") or {}).get("predictor") or {}
        model = predictor.get("model") or {}
        spec_uri = model.get("storageUri")
        canary = predictor.get("canaryTrafficPercent")
        canary = int(canary) if canary is not None else None
        previous = annotations.get(PREVIOUS_URI_ANNOTATION) or None
        in_canary = (
            canary is not None and canary < 100 and previous is not None and previous != spec_uri
        )
        status = obj.get("status") or {}
        component = (status.get("components") or {}).get("predictor") or {}
        conditions = status.get("conditions") or []
        generation = meta.get("generation")
        observed = status.get("observedGeneration")
        return cls(
            name=str(meta.get("name") or ""),
            namespace=str(meta.get("namespace") or ""),
            storage_uri=previous if in_canary else spec_uri,
            canary_storage_uri=spec_uri if in_canary else None,
            spec_storage_uri=spec_uri,
            previous_storage_uri=previous,
            canary_traffic_percent=canary,
            traffic=tuple(TrafficTarget.from_dict(t) for t in component.get("traffic") or []),
            latest_created_revision=component.get("latestCreatedRevision") or None,
            latest_ready_revision=component.get("latestReadyRevision") or None,
            latest_rolled_out_revision=component.get("latestRolledoutRevision") or None,
            previous_rolled_out_revision=component.get("previousRolledoutRevision") or None,
            ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
            reconciled=generation is not None and observed is not None
            and int(observed) >= int(generation),
            resource_version=meta.get("resourceVersion"),
            generation=int(generation) if generation is not None else None,
            deployment_mode=deployment_mode(obj),
            url=status.get("url"),
        )


# -- object helpers -------------------------------------------------------------------------


def to_plain(obj: Any) -> dict[str, Any]:
    """Return ``obj`` as a plain camelCase dict.

    Accepts a dict (deep-copied) or a kserve/kubernetes model object such as
    ``kserve.V1beta1InferenceService``, converted with the Kubernetes client's
    ``sanitize_for_serialization`` (the dict a cluster expects).
    """
    if isinstance(obj, Mapping):
        return copy.deepcopy(dict(obj))
    from kubernetes.client import ApiClient

    plain = ApiClient().sanitize_for_serialization(obj)
    if not isinstance(plain, dict):
        raise TypeError(f"expected an InferenceService object, got {type(obj).__name__}")
    return plain


def build_inference_service(
    name: str,
    namespace: str,
    storage_uri: str,
    template: Any = None,
    *,
    runtime: str | None = None,
    image: str | None = None,
) -> dict[str, Any]:
    """Return an InferenceService dict for ``storage_uri`` built from a template.

    Args:
        name: ``metadata.name`` (a DNS-1035 label).
        namespace: ``metadata.namespace``.
        storage_uri: ``spec.predictor.model.storageUri``: the registry version folder
            (``store.url("models/<model>/<version>")``), e.g. ``gs://bucket/p/models/m/v1``.
        template: A dict or kserve model object; default :data:`DEFAULT_TEMPLATE`.
        runtime: Overrides ``spec.predictor.model.runtime`` (a ServingRuntime's name).
        image: Overrides the predictor container image (``spec.predictor.model.image``,
            merged by KServe over the runtime's container).

    Returns:
        The object, with the annotations ``serving.kserve.io/deploymentMode: Serverless``
        and :data:`PREVIOUS_URI_ANNOTATION` set to ``storage_uri``.

    Raises:
        UnsupportedDeploymentMode: The template asks for RawDeployment.
    """
    obj = to_plain(DEFAULT_TEMPLATE if template is None else template)
    obj.setdefault("apiVersion", API_VERSION)
    obj.setdefault("kind", KIND)
    meta = obj.setdefault("metadata", {})
    meta["name"] = name
    meta["namespace"] = namespace
    annotations = meta.setdefault("annotations", {})
    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION, SERVERLESS)
    if mode != SERVERLESS:
        raise UnsupportedDeploymentMode(
            f"InferenceService template for {namespace}/{name}: {DEPLOYMENT_MODE_ANNOTATION} is "
            f"{mode!r}; a canary rollout needs {SERVERLESS!r} (KServe ignores "
            "canaryTrafficPercent in RawDeployment mode)"
        )
    annotations[DEPLOYMENT_MODE_ANNOTATION] = SERVERLESS
    annotations[PREVIOUS_URI_ANNOTATION] = storage_uri
    predictor = obj.setdefault("spec", {}).setdefault("predictor", {})
    predictor.pop("canaryTrafficPercent", None)
    model = predictor.setdefault("model", {})
    model.setdefault("modelFormat", {"name": "sklearn"})
    model["storageUri"] = storage_uri
    if runtime is not None:
        model["runtime"] = runtime
    if image is not None:
        model["image"] = image
    obj.pop("status", None)
    return obj


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch and return the result (inputs are not modified).

    Objects merge key by key, ``null`` deletes a key, anything else (lists included)
    replaces the target value.
    """
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def deployment_mode(obj: Mapping[str, Any]) -> str:
    """Return the deployment mode: the annotation, else ``status.deploymentMode``.

    An InferenceService with neither is treated as Serverless (KServe's default mode).
    """
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION) or (obj.get("status") or {}).get(
        "deploymentMode"
    )
    return str(mode) if mode else SERVERLESS


def check_serverless(obj: Mapping[str, Any], where: str) -> None:
    """Raise :class:`UnsupportedDeploymentMode` unless the service runs in Serverless mode."""
    mode = deployment_mode(obj)
    if mode != SERVERLESS:
        raise UnsupportedDeploymentMode(
            f"{where} runs in {mode} mode: KServe ignores canaryTrafficPercent in "
            f"{RAW_DEPLOYMENT} mode, so it cannot split traffic for a canary; use "
            f"{DEPLOYMENT_MODE_ANNOTATION}: {SERVERLESS} (Knative)"
        )


def _storage_uri_error(uri: Any) -> str | None:
    if not isinstance(uri, str) or not uri.strip():
        return "Required value"
    if "://" in uri and not uri.startswith(SUPPORTED_STORAGE_URI_PREFIXES):
        return (
            f"storageUri, must be one of: [{', '.join(SUPPORTED_STORAGE_URI_PREFIXES)}] or be "
            f"an absolute or relative local path. StorageUri [{uri}] is not supported"
        )
    return None


def validate_inference_service(obj: Any) -> list[str]:
    """Check what KServe's CRD schema and admission webhook check for our fields.

    Returns:
        ``"<field path>: <problem>"`` strings; empty when the object is valid.
    """
    if not isinstance(obj, Mapping):
        return ["<body>: expected an object"]
    errors: list[str] = []
    if obj.get("apiVersion") != API_VERSION:
        errors.append(f"apiVersion: Unsupported value: {obj.get('apiVersion')!r}: "
                      f"supported values: {API_VERSION!r}")
    if obj.get("kind") != KIND:
        errors.append(f"kind: Unsupported value: {obj.get('kind')!r}: supported values: {KIND!r}")
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or len(name) > MAX_NAME_LENGTH:
        errors.append(
            f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1035 label of at most "
            f"{MAX_NAME_LENGTH} characters (regex {NAME_PATTERN.pattern})"
        )
    spec = obj.get("spec")
    predictor = spec.get("predictor") if isinstance(spec, Mapping) else None
    if not isinstance(predictor, Mapping):
        errors.append("spec.predictor: Required value")
        return errors
    model = predictor.get("model")
    if not isinstance(model, Mapping):
        errors.append("spec.predictor.model: Required value")
    else:
        fmt = model.get("modelFormat")
        if not isinstance(fmt, Mapping) or not fmt.get("name"):
            errors.append("spec.predictor.model.modelFormat.name: Required value")
        problem = _storage_uri_error(model.get("storageUri"))
        if problem is not None:
            errors.append(f"spec.predictor.model.storageUri: {problem}")
    if "canaryTrafficPercent" in predictor:
        value = predictor["canaryTrafficPercent"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            errors.append(
                f"spec.predictor.canaryTrafficPercent: Invalid value: {value!r}: "
                "TrafficPercent must be between [0, 100]"
            )
    return errors


def version_storage_uri(registry: Registry, version: str) -> str:
    """Return the ``storageUri`` of a registered version: its folder in the store.

    ``gs://bucket/prefix/models/<model>/<version>`` on a cluster (KServe's storage
    initializer copies it to ``/mnt/models``), a local folder path for the local backend.

    Raises:
        RegistryError: The version is not registered.
    """
    registry.metadata(version)  # raises a RegistryError naming the known versions
    return registry.store.url(f"{registry.prefix}/{version}")


def check_percent(percent: Any) -> int:
    """Return ``percent`` if it is an int in 0..100; raise ValueError otherwise."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"traffic percent must be an integer in 0..100, got {percent!r}")
    return percent


def _check_uri(storage_uri: Any) -> str:
    if not isinstance(storage_uri, str) or not storage_uri.strip():
        raise ValueError(f"storage_uri must be a non-empty string, got {storage_uri!r}")
    return storage_uri


def _predictor_patch(**fields: Any) -> dict[str, Any]:
    return {"spec": {"predictor": fields}}


# -- the interface ----------------------------------------------------------------------------

#: Computes the merge patch that moves an object towards a target; None when it is there.
PatchFn = Callable[[dict[str, Any]], dict[str, Any] | None]


@dataclass
class AppliedPatch:
    """A merge patch a backend sent (in order), for logs, artifacts and tests."""

    action: str
    patch: dict[str, Any]
    resource_version: str | None = None


class RolloutBackend(ABC):
    """Canary steps on one InferenceService; subclasses provide read, patch and create.

    Args:
        name: The InferenceService's name.
        namespace: Its namespace.
        template: The InferenceService template :meth:`ensure` creates from (a dict or a
            kserve model object); default :data:`DEFAULT_TEMPLATE`.
        max_conflict_retries: How many times a step is recomputed after a 409 Conflict.
    """

    def __init__(self, name: str, namespace: str = "default", *, template: Any = None,
                 max_conflict_retries: int = 5) -> None:
        self.name = name
        self.namespace = namespace
        self.template = template
        self.max_conflict_retries = max_conflict_retries
        self.applied: list[AppliedPatch] = []

    # -- primitives ---------------------------------------------------------------

    @abstractmethod
    def _read_object(self) -> dict[str, Any]:
        """Return the object; raise :class:`InferenceServiceNotFound` when it is missing."""

    @abstractmethod
    def _patch_object(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply a merge patch and return the new object.

        Raises:
            ConflictError: ``patch["metadata"]["resourceVersion"]`` is stale.
            RolloutRejected: The result is not a valid InferenceService.
            InferenceServiceNotFound: The object is gone.
        """

    @abstractmethod
    def _create_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create the object and return it; raise :class:`AlreadyExistsError` if it exists."""

    @property
    def where(self) -> str:
        """``InferenceService <namespace>/<name>`` plus where it lives (for messages)."""
        return f"InferenceService {self.namespace}/{self.name}"

    # -- reading --------------------------------------------------------------------

    def get(self) -> ServiceState:
        """Return the current state.

        Raises:
            InferenceServiceNotFound: The InferenceService does not exist.
        """
        return ServiceState.from_object(self._read_object())

    def get_object(self) -> dict[str, Any]:
        """Return the whole InferenceService object as a dict."""
        return self._read_object()

    def wait_until_reconciled(self, timeout: float = 300.0, poll: float = 2.0) -> ServiceState:
        """Poll until the status describes the current spec and the service is ready.

        Waits for: ``Ready`` true, ``status.observedGeneration >= metadata.generation``, the
        latest created revision ready, and the latest revision's traffic equal to what
        ``canaryTrafficPercent`` asks for. On a cluster KServe and Knative update the status
        asynchronously; the local backend and the test stand-in reconcile at once, so this
        returns on the first read there.

        Raises:
            RolloutError: Not reconciled and ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.get()
            if (state.ready and state.reconciled and state.traffic_matches_spec
                    and state.latest_created_revision == state.latest_ready_revision):
                return state
            if time.monotonic() >= deadline:
                raise RolloutError(
                    f"{self.where}: not reconciled and ready after {timeout:g} s "
                    f"(generation {state.generation}, ready={state.ready}, "
                    f"latest created {state.latest_created_revision}, "
                    f"latest ready {state.latest_ready_revision})"
                )
            time.sleep(poll)

    # -- writing --------------------------------------------------------------------

    def _update(self, action: str, compute: PatchFn) -> tuple[dict[str, Any], bool]:
        """Read, compute a patch, send it with the resourceVersion; recompute on a conflict.

        Returns:
            The object after the step, and whether a patch was sent.
        """
        for attempt in range(self.max_conflict_retries + 1):
            obj = self._read_object()
            check_serverless(obj, self.where)
            patch = compute(obj)
            if patch is None:
                log.info("%s: %s: already in place, nothing sent", self.where, action)
                return obj, False
            version = (obj.get("metadata") or {}).get("resourceVersion")
            body = copy.deepcopy(patch)
            if version is not None:  # a precondition: a stale write gets 409 Conflict
                body.setdefault("metadata", {})["resourceVersion"] = version
            try:
                new = self._patch_object(body)
            except ConflictError:
                log.info("%s: %s: conflict at resourceVersion %s (attempt %d), re-reading",
                         self.where, action, version, attempt + 1)
                continue
            self.applied.append(AppliedPatch(action, patch, version))
            log.info("%s: %s: patched %s", self.where, action, patch)
            return new, True
        raise RolloutError(
            f"{self.where}: {action}: the object changed under us {self.max_conflict_retries + 1} "
            "times in a row (409 Conflict each time); try again"
        )

    def ensure(self, storage_uri: str) -> ServiceState:
        """Create the InferenceService serving ``storage_uri`` unless it exists.

        An existing service is left as it is (its state is returned): use the rollout
        steps to change what it serves.

        Raises:
            UnsupportedDeploymentMode: The existing service runs in RawDeployment mode.
            RolloutRejected: The API server refused the new object.
        """
        _check_uri(storage_uri)
        try:
            obj = self._read_object()
        except InferenceServiceNotFound:
            body = build_inference_service(self.name, self.namespace, storage_uri,
                                           self.template)
            try:
                obj = self._create_object(body)
                self.applied.append(AppliedPatch("create", body))
                log.info("%s: created serving %s", self.where, storage_uri)
            except AlreadyExistsError:  # created by someone else since our read
                obj = self._read_object()
        check_serverless(obj, self.where)
        return ServiceState.from_object(obj)

    def set_canary(self, storage_uri: str, percent: int) -> ServiceState:
        """Serve ``storage_uri`` as a canary on ``percent`` % of the traffic.

        Patches ``spec.predictor.model.storageUri`` and ``spec.predictor.canaryTrafficPercent``
        (and records the stable URI in :data:`PREVIOUS_URI_ANNOTATION`). Calling it again
        for the same canary only changes the percentage (or sends nothing). 100 rolls the
        model out at once (no ``canaryTrafficPercent``).

        Raises:
            RolloutError: ``storage_uri`` is already the rolled-out model, or it is the
                stable model of a canary in progress (use :meth:`rollback`).
            ValueError: ``percent`` is not in 0..100.
        """
        _check_uri(storage_uri)
        wanted = None if check_percent(percent) == 100 else percent

        def compute(obj: dict[str, Any]) -> dict[str, Any] | None:
            state = ServiceState.from_object(obj)
            if state.canary_storage_uri == storage_uri:
                if state.canary_traffic_percent == wanted:
                    return None
                return _predictor_patch(canaryTrafficPercent=wanted)
            if state.spec_storage_uri == storage_uri:
                if wanted is None and state.canary_traffic_percent in (None, 100):
                    return None
                raise RolloutError(
                    f"{self.where}: {storage_uri} is already the rolled-out model (no canary "
                    "in progress); a canary needs a different storageUri"
                )
            if state.canary_in_progress and storage_uri == state.storage_uri:
                raise RolloutError(
                    f"{self.where}: {storage_uri} is the stable model of the canary in progress "
                    f"({state.canary_storage_uri}); call rollback() to abandon the canary"
                )
            return {
                "metadata": {"annotations": {PREVIOUS_URI_ANNOTATION: state.storage_uri}},
                "spec": {"predictor": {"model": {"storageUri": storage_uri},
                                       "canaryTrafficPercent": wanted}},
            }

        obj, _ = self._update(f"canary {storage_uri} at {percent}%", compute)
        return ServiceState.from_object(obj)

    def set_traffic(self, percent: int) -> ServiceState:
        """Give the canary in progress ``percent`` % of the traffic; 100 promotes it.

        Promoting removes ``canaryTrafficPercent``: the latest revision takes all traffic
        and becomes the rolled-out revision. Sends nothing when the share is already set.

        Raises:
            RolloutError: No canary is in progress (and ``percent`` is below 100).
            ValueError: ``percent`` is not in 0..100.
        """
        wanted = None if check_percent(percent) == 100 else percent

        def compute(obj: dict[str, Any]) -> dict[str, Any] | None:
            state = ServiceState.from_object(obj)
            current = None if state.canary_traffic_percent == 100 else state.canary_traffic_percent
            if not state.canary_in_progress and wanted is not None:
                raise RolloutError(
                    f"{self.where}: no canary in progress ({state.spec_storage_uri} is the "
                    "rolled-out model); start one with set_canary(storage_uri, percent)"
                )
            if current == wanted:
                return None
            return _predictor_patch(canaryTrafficPercent=wanted)

        obj, _ = self._update(f"traffic {percent}%", compute)
        return ServiceState.from_object(obj)

    def promote(self) -> ServiceState:
        """Roll the canary out to 100% (same as ``set_traffic(100)``)."""
        return self.set_traffic(100)

    def rollback(self) -> ServiceState:
        """Send all traffic back to the previous model and make it the rolled-out model.

        Three patches, each sent only when needed: ``canaryTrafficPercent: 0`` (Knative
        pins all traffic to the previously rolled-out revision at once), then
        ``storageUri`` = the previous URI (the next revision serves the old model, still on
        0%), then ``canaryTrafficPercent`` removed (that revision takes 100%). Works during
        a canary and after a promotion; a rollback that was interrupted resumes.

        Raises:
            RolloutError: No previous storageUri is recorded (nothing to roll back to).
        """

        def compute(obj: dict[str, Any]) -> dict[str, Any] | None:
            state = ServiceState.from_object(obj)
            previous = state.previous_storage_uri
            if previous is None:
                raise RolloutError(
                    f"{self.where}: nothing to roll back to: annotation "
                    f"{PREVIOUS_URI_ANNOTATION} is not set (no rollout was started by driftloop)"
                )
            if state.spec_storage_uri != previous:
                if state.canary_traffic_percent != 0:
                    return _predictor_patch(canaryTrafficPercent=0)
                return _predictor_patch(model={"storageUri": previous})
            if state.canary_traffic_percent not in (None, 100):
                return _predictor_patch(canaryTrafficPercent=None)
            return None

        obj: dict[str, Any] | None = None
        for _ in range(4):  # at most three patches, then a read that finds nothing to do
            obj, patched = self._update("rollback", compute)
            if not patched:
                break
        assert obj is not None
        return ServiceState.from_object(obj)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (nothing by default)."""

    def __enter__(self) -> RolloutBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
