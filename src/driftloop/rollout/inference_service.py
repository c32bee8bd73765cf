"""The KServe InferenceService object: its names, its template, and the helpers that read it.

Everything here works on the plain dict an API server returns (camelCase keys) and needs
neither a cluster nor a backend:

* the API coordinates (:data:`GROUP`, :data:`VERSION`, :data:`PLURAL`, ...), the
  annotations a rollout reads and writes, and :data:`DEFAULT_TEMPLATE`;
* :class:`ServiceState` (with :class:`TrafficTarget`): what a service serves, read from
  its spec, annotations and status -- including which model is stable while a canary is in
  progress (see "Which model is stable" in :mod:`driftloop.rollout.base`);
* the object helpers: :func:`build_inference_service`, :func:`merge_patch` (RFC 7386),
  :func:`revision_template` (what makes a new Knative revision);
* the deployment mode read the way KServe reads it (:func:`deployment_mode`,
  :func:`check_serverless`, :func:`mode_annotation_fix`);
* ``validate_inference_service``: what admission refuses, importable from here (the
  rules, and what a cluster accepts but fails at reconcile time, are in
  :mod:`driftloop.rollout.admission`).

Its own module because more than the rollout interface (:mod:`driftloop.rollout.base`)
needs the object: the local stand-ins of KServe's controller and Knative's traffic split,
the Kubernetes API stand-in of the tests and the manifests checks build, validate and read
it without any rollout step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from driftloop.rollout.admission import validate_inference_service  # noqa: F401 - its home
from driftloop.rollout.errors import UnsupportedDeploymentMode
from driftloop.rollout.names import (
    API_VERSION,
    DEPLOYMENT_MODE_ANNOTATION,
    GROUP,  # noqa: F401 - the API coordinates are importable from here
    KIND,
    PLURAL,  # noqa: F401
    VERSION,  # noqa: F401
)

# The deployment mode names (KServe v0.20.0 pkg/constants/constants.go, DeploymentModeType).
# v0.16 renamed Serverless to Knative and RawDeployment to Standard; the old names stay
# accepted ("deprecated") and ParseDeploymentMode maps them to the new ones.
#: Knative mode's name up to KServe 0.15 (the only one 0.15 knows): what we write.
SERVERLESS = "Serverless"
#: Knative mode's name since KServe 0.16 (``status.deploymentMode``; the annotation too
#: since 0.17, whose mutating webhook rewrites ``Serverless`` to it).
KNATIVE = "Knative"
RAW_DEPLOYMENT = "RawDeployment"
STANDARD = "Standard"
MODEL_MESH = "ModelMesh"
#: The old name -> the new one (constants.ParseDeploymentMode).
LEGACY_MODE_NAMES = {SERVERLESS: KNATIVE, RAW_DEPLOYMENT: STANDARD}
#: The mode names GetDeploymentMode takes from the annotation (after the legacy mapping).
KNOWN_MODES = frozenset({KNATIVE, STANDARD, MODEL_MESH})
#: KServe tags the latest revision's traffic target "latest" only when this is "true".
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
#: The storageUri that was rolled out (served 100%) before the spec's storageUri was set.
PREVIOUS_URI_ANNOTATION = "driftloop.io/previous-storage-uri"
#: The ``metadata.generation`` a driftloop write of the revision template produced. KServe
#: copies annotations onto the Knative revision template, so every such write is a template
#: Knative has not seen, i.e. a new revision -- also a write back to the template of a
#: revision that exists (after a canary whose storageUri KServe's controller refused and
#: never passed to Knative). A step can then wait for "a new revision" without exception.
TEMPLATE_GENERATION_ANNOTATION = "driftloop.io/template-generation"

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
class Condition:
    """One entry of ``status.conditions`` (a Knative ``apis.Condition``).

    KServe's InferenceService conditions (v0.20.0 pkg/apis/serving/v1beta1/
    inference_service_status.go): ``Ready`` is the "living" aggregate of ``PredictorReady``
    and ``IngressReady``; ``PredictorReady``, ``PredictorRouteReady`` and
    ``PredictorConfigurationReady`` are the predictor's Knative Service's ``Ready``,
    ``RoutesReady`` and ``ConfigurationsReady`` copied with their reason and message
    (``PropagateStatus``); ``LatestDeploymentReady`` and ``RoutesReady`` aggregate the
    components.
    """

    type: str
    status: str
    reason: str = ""
    message: str = ""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Condition:
        """Parse one condition dict."""
        return cls(str(raw.get("type") or ""), str(raw.get("status") or "Unknown"),
                   str(raw.get("reason") or ""), str(raw.get("message") or ""))

    def __str__(self) -> str:
        text = f"{self.type}={self.status}"
        if self.reason:
            text += f" ({self.reason}"
            text += f": {self.message})" if self.message else ")"
        elif self.message:
            text += f" ({self.message})"
        return text


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
        conditions: ``status.conditions``.
        transition_status: ``status.modelStatus.transitionStatus`` (``UpToDate``,
            ``InProgress``, ``BlockedByFailedLoad``, ``InvalidSpec``), "" when absent.
        failure_reason: ``status.modelStatus.lastFailureInfo.reason``, "" when absent.
        failure_message: ``status.modelStatus.lastFailureInfo.message``, "" when absent.
        observed_generation: ``status.observedGeneration``. In Knative mode KServe copies
            it from the predictor's Knative Service (``PropagateStatus``), a counter of
            that object's own spec changes: it cannot be compared with
            ``metadata.generation`` (see :mod:`driftloop.rollout.readiness`).
        resource_version: ``metadata.resourceVersion``.
        generation: ``metadata.generation``.
        deployment_mode: The mode's name as the object reports it: ``status.deploymentMode``,
            else the annotation, else ``Serverless`` (see :func:`deployment_mode`).
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
    conditions: tuple[Condition, ...] = ()
    transition_status: str = ""
    failure_reason: str = ""
    failure_message: str = ""
    observed_generation: int | None = None
    resource_version: str | None = None
    generation: int | None = None
    deployment_mode: str = SERVERLESS
    url: str | None = None

    @property
    def canary_in_progress(self) -> bool:
        """Whether a canary shares the traffic with a different, stable model."""
        return self.canary_storage_uri is not None

    @property
    def knative(self) -> bool:
        """Whether KServe runs the service in Knative mode (``Serverless`` or ``Knative``)."""
        return is_knative(self.deployment_mode)

    def condition(self, kind: str) -> Condition | None:
        """The condition of type ``kind``, if the status has one."""
        return next((c for c in self.conditions if c.type == kind), None)

    @property
    def wanted_latest_percent(self) -> int:
        """The share KServe gives the latest ready revision for the current spec.

        ``canaryTrafficPercent``, or all of it when the field is absent or nothing was
        rolled out before (KServe v0.20.0 reconcilers/knative/ksvc_reconciler.go: the split
        needs a ``latestRolledoutRevision``).
        """
        wanted = self.canary_traffic_percent
        if wanted is None or self.latest_rolled_out_revision is None:
            return 100
        return wanted

    @property
    def traffic_matches_spec(self) -> bool:
        """Whether the traffic is the split ``canaryTrafficPercent`` asks for.

        The target that follows the latest revision is on the latest ready revision with
        :attr:`wanted_latest_percent`, and the targets add up to 100 (the rest is on the
        ``prev`` target, the last rolled-out revision); False while the status lags.
        """
        latest = [t for t in self.traffic if t.latest_revision]
        if len(latest) != 1 or latest[0].revision_name != self.latest_ready_revision:
            return False
        if sum(t.percent for t in self.traffic) != 100:
            return False
        return latest[0].percent == self.wanted_latest_percent

    @property
    def settled(self) -> bool:
        """Ready, the latest created revision is the latest ready one, traffic as specified.

        What a rollout step waits for once the status describes its write (after a change
        of the revision template that also takes a new ``latestCreatedRevision``:
        :func:`driftloop.rollout.readiness.judge`).
        """
        return (self.ready and self.latest_created_revision is not None
                and self.latest_created_revision == self.latest_ready_revision
                and self.traffic_matches_spec)

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
        out["conditions"] = [asdict(c) for c in self.conditions]
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
        conditions = tuple(Condition.from_dict(c) for c in status.get("conditions") or [])
        model_status = status.get("modelStatus") or {}
        failure = model_status.get("lastFailureInfo") or {}
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
            ready=any(c.type == "Ready" and c.status == "True" for c in conditions),
            conditions=conditions,
            transition_status=str(model_status.get("transitionStatus") or ""),
            failure_reason=str(failure.get("reason") or ""),
            failure_message=str(failure.get("message") or ""),
            observed_generation=int(observed) if observed is not None else None,
            resource_version=meta.get("resourceVersion"),
            generation=int(generation) if generation is not None else None,
            deployment_mode=reported_deployment_mode(obj),
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
        The object, with the annotation :data:`PREVIOUS_URI_ANNOTATION` set to
        ``storage_uri`` and ``serving.kserve.io/deploymentMode`` as the template names
        Knative mode (``Serverless`` by default: the one name every KServe release
        understands; 0.17 and later rewrite it to ``Knative`` on admission).

    Raises:
        UnsupportedDeploymentMode: The template asks for another mode.
    """
    obj = to_plain(DEFAULT_TEMPLATE if template is None else template)
    obj.setdefault("apiVersion", API_VERSION)
    obj.setdefault("kind", KIND)
    meta = obj.setdefault("metadata", {})
    meta["name"] = name
    meta["namespace"] = namespace
    annotations = meta.setdefault("annotations", {})
    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION, SERVERLESS)
    if not is_knative(mode):
        raise UnsupportedDeploymentMode(
            f"InferenceService template for {namespace}/{name}: {DEPLOYMENT_MODE_ANNOTATION} is "
            f"{mode!r}; a canary rollout needs {SERVERLESS!r} or {KNATIVE!r} (KServe ignores "
            "canaryTrafficPercent in Standard/RawDeployment mode)"
        )
    annotations[DEPLOYMENT_MODE_ANNOTATION] = mode
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


#: Annotations and labels KServe does not pass on to the Knative revision template: the
#: default ``serviceAnnotationDisallowedList`` and ``RevisionTemplateLabelDisallowedList``
#: (KServe v0.20.0 pkg/constants/constants.go; a cluster's inferenceservice-config can add
#: to the annotations, which we cannot see).
_NOT_PROPAGATED = frozenset({"autoscaling.knative.dev/min-scale",
                             "autoscaling.knative.dev/max-scale",
                             "internal.serving.kserve.io/storage-initializer-sourceuri",
                             "kubectl.kubernetes.io/last-applied-configuration", "modelFormat"})
_LABELS_NOT_PROPAGATED = frozenset({"networking.knative.dev/visibility"})


def revision_template(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Return what makes up a Knative revision of the predictor.

    Everything under ``spec.predictor`` except ``canaryTrafficPercent`` (that is routing,
    not configuration) plus the labels and annotations, which KServe copies onto the
    Knative Service's revision template (v0.20.0 components/predictor.go buildObjectMeta,
    reconcilers/knative/ksvc_reconciler.go): when any of them changes, Knative creates a
    new revision.
    """
    meta = obj.get("metadata") or {}
    predictor = dict((obj.get("spec") or {}).get("predictor") or {})
    predictor.pop("canaryTrafficPercent", None)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k not in _NOT_PROPAGATED}
    labels = {k: v for k, v in (meta.get("labels") or {}).items()
              if k not in _LABELS_NOT_PROPAGATED}
    return copy.deepcopy({"predictor": predictor, "labels": labels, "annotations": annotations})


# -- the deployment mode ---------------------------------------------------------------------


def parse_deployment_mode(name: str) -> str:
    """A mode name with the legacy names mapped (KServe v0.20.0 constants.ParseDeploymentMode)."""
    return LEGACY_MODE_NAMES.get(name, name)


def is_knative(name: str) -> bool:
    """Whether ``name`` is Knative mode: ``Serverless`` (KServe <= 0.15) or ``Knative``."""
    return parse_deployment_mode(name) == KNATIVE


def reported_deployment_mode(obj: Mapping[str, Any]) -> str:
    """The mode's name as the object shows it: status, else annotation, else ``Serverless``."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    status_mode = (obj.get("status") or {}).get("deploymentMode")
    return str(status_mode or annotations.get(DEPLOYMENT_MODE_ANNOTATION) or SERVERLESS)


def deployment_mode(obj: Mapping[str, Any]) -> str:
    """The mode KServe's controller runs the service in, read the way KServe reads it.

    KServe v0.20.0 ``GetDeploymentMode`` (pkg/controller/v1beta1/inferenceservice/utils/
    utils.go): ``status.deploymentMode`` first (the controller records the mode it chose
    and keeps it), then the annotation if it names a known mode (legacy names mapped),
    else the cluster's ``defaultDeploymentMode``. We cannot read the cluster default, but
    its mutating webhook writes the annotation whenever that default is ``Standard`` or
    ``ModelMesh`` (v0.20.0 inference_service_defaults.go, ``DefaultInferenceService``; 0.15
    does the same with ``RawDeployment``), so a stored object without either is in Knative
    mode. An annotation with a name KServe does not know is returned as it is (KServe
    would use the unknown cluster default: :func:`check_serverless` refuses it).

    Returns:
        ``Knative``, ``Standard``, ``ModelMesh`` or the unknown annotation value.
    """
    status_mode = (obj.get("status") or {}).get("deploymentMode")
    if status_mode:
        return parse_deployment_mode(str(status_mode))
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    if mode is None:
        return KNATIVE
    return parse_deployment_mode(str(mode))


def check_serverless(obj: Mapping[str, Any], where: str) -> None:
    """Raise :class:`UnsupportedDeploymentMode` unless KServe runs the service in Knative mode.

    ``Serverless`` and ``Knative`` are the same mode (the second is its name since KServe
    0.16); ``Standard`` (formerly ``RawDeployment``) and ``ModelMesh`` ignore
    ``canaryTrafficPercent``.
    """
    mode = deployment_mode(obj)
    if mode == KNATIVE:
        return
    reported = reported_deployment_mode(obj)
    named = mode if reported == mode else f"{mode} ({reported})"
    why = ("KServe ignores canaryTrafficPercent there, so it cannot split traffic for a canary"
           if mode in KNOWN_MODES else
           f"{mode!r} is not a mode KServe knows, so it runs the service in the cluster's "
           "default mode, which cannot be read from here")
    raise UnsupportedDeploymentMode(
        f"{where} runs in {named} mode: {why}; use {DEPLOYMENT_MODE_ANNOTATION}: {SERVERLESS} "
        f"or {KNATIVE}"
    )


def mode_annotation_fix(obj: Mapping[str, Any]) -> str | None:
    """The annotation value an update must carry to pass KServe 0.16's webhook, if any.

    KServe 0.16 writes ``status.deploymentMode: Knative`` for a service annotated
    ``Serverless`` but its validating webhook refuses every update whose annotation differs
    from that status ("update rejected: deploymentMode cannot be changed from 'Knative' to
    'Serverless'"; v0.16.0 inference_service_validation.go ``validateDeploymentMode``,
    kserve/kserve#4798). 0.17 fixed it by rewriting the annotation in its mutating webhook
    (inference_service_defaults.go); sending the new name ourselves does the same on 0.16.

    Returns:
        ``status.deploymentMode`` when the annotation is an older name of that same mode;
        None otherwise (nothing to fix, or a real mode change, which is not ours to make).
    """
    status_mode = (obj.get("status") or {}).get("deploymentMode")
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    annotation = annotations.get(DEPLOYMENT_MODE_ANNOTATION)
    if not status_mode or annotation is None or annotation == status_mode:
        return None
    if parse_deployment_mode(str(annotation)) != parse_deployment_mode(str(status_mode)):
        return None
    return str(status_mode)
