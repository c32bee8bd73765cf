"""The KServe InferenceService object: its names, its template, and the helpers that read it.

Everything here works on the plain dict an API server returns (camelCase keys) and needs
neither a cluster nor a backend:

* the API coordinates (:data:`GROUP`, :data:`VERSION`, :data:`PLURAL`, ...), the
  annotations a rollout reads and writes, and :data:`DEFAULT_TEMPLATE`;
* :class:`ServiceState` (with :class:`TrafficTarget`): what a service serves, read from
  its spec, annotations and status -- including which model is stable while a canary is in
  progress (see "Which model is stable" in :mod:`driftloop.rollout.base`);
* the object helpers: :func:`build_inference_service`, :func:`merge_patch` (RFC 7386),
  :func:`deployment_mode` / :func:`check_serverless` and
  :func:`validate_inference_service` (what KServe's CRD schema and webhook refuse).

Its own module because more than the rollout interface (:mod:`driftloop.rollout.base`)
needs the object: the local stand-ins of KServe's controller and Knative's traffic split,
the Kubernetes API stand-in of the tests and the manifests checks build, validate and read
it without any rollout step.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from driftloop.rollout.errors import UnsupportedDeploymentMode

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

