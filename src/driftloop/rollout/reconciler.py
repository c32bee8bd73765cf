"""A stand-in for KServe's InferenceService controller and Knative Serving (a pure function).

:func:`reconcile` takes an InferenceService after a spec change and the predictor's
revisions so far, and returns the object with the ``status`` KServe and Knative would write
(traffic, latest created/ready/rolled-out revisions, previous rolled-out revision, the
conditions, the model status) plus the revisions, one appended when the predictor's
template changed (:func:`~driftloop.rollout.inference_service.revision_template`).

KServe semantics simulated (v0.20.0 ``reconcilers/knative/ksvc_reconciler.go`` and
``InferenceServiceStatus.PropagateStatus`` in ``inference_service_status.go``): with
``canaryTrafficPercent = p`` the latest ready revision gets ``p`` % and the last rolled-out
revision (tag ``prev``) the rest; without it (or with 100) the latest ready revision gets
100 % and becomes ``latestRolledoutRevision`` (the one before becomes
``previousRolledoutRevision``); ``p = 0`` right after a promotion moves
``latestRolledoutRevision`` back to the previous one, so all traffic returns to it.
``status.observedGeneration`` counts the Knative Service's spec changes (a new revision
template or new traffic), as KServe copies it from there.

Failures simulated when asked (``failing``): a revision whose model never loads is
created but never becomes ready -- Knative keeps routing to the latest *ready* revision,
the conditions read ``RevisionFailed`` with Knative's message and ``modelStatus`` reads
``BlockedByFailedLoad`` / ``ModelLoadFailed``, i.e. the state after Knative's progress
deadline. And what KServe's controller refuses at reconcile time
(:func:`~driftloop.rollout.admission.controller_problems`): an unsupported ``storageUri``
scheme changes nothing in the status; a ``canaryTrafficPercent`` outside 0..100 makes
``PredictorReady`` False with reason ``ReconcileFailed``.

Not simulated: the intermediate states (a revision deploying, a model loading: the status
is written in the same step as the spec), scale-to-zero, garbage collection of old
revisions, and transformers/explainers.

Its own module because two callers must simulate the controller identically: the local
rollout backend (:class:`~driftloop.rollout.local.LocalRolloutBackend`) after each write of
its YAML file, and the test stand-in of the Kubernetes API after each PATCH. It reads no
files and keeps no state.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from driftloop.rollout.admission import controller_problems
from driftloop.rollout.inference_service import (
    TAG_ROUTING_ANNOTATION,
    deployment_mode,
    is_knative,
    reported_deployment_mode,
    revision_template,
)

__all__ = ["DOMAIN", "Failing", "now_rfc3339", "reconcile", "revision_template"]

#: The route domain of the simulated cluster (``status.url``).
DOMAIN = "example.com"
_CONDITIONS = ("IngressReady", "LatestDeploymentReady", "PredictorConfigurationReady",
               "PredictorReady", "PredictorRouteReady", "Ready", "RoutesReady")
#: Given a revision's ``storageUri``, the model server's error when that model never loads
#: (None: it loads).
Failing = Callable[[str | None], str | None]


def now_rfc3339() -> str:
    """Return the current UTC time as Kubernetes writes it (``2026-01-01T10:00:00Z``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _knative_traffic(canary: int | None, component: Mapping[str, Any], tag_latest: bool,
                     host: str) -> list[dict[str, Any]]:
    """KServe's route for the Knative service, resolved as Knative reports it in status.

    Knative resolves ``latestRevision: true`` to the latest *ready* revision and gives a
    tagged target its own URL (``{tag}-{route}``).
    """
    latest = component.get("latestReadyRevision") or ""
    if not latest:
        return []  # nothing ready to route to
    rolled_out = component.get("latestRolledoutRevision") or ""
    first: dict[str, Any] = {"revisionName": latest, "latestRevision": True}
    if tag_latest:
        first.update(tag="latest", url=f"http://latest-{host}")
    if canary is not None and rolled_out:
        targets = [{**first, "percent": canary}]
        if canary < 100:
            targets.append({"tag": "prev", "revisionName": rolled_out, "latestRevision": False,
                            "percent": 100 - canary, "url": f"http://prev-{host}"})
        return targets
    return [{**first, "percent": 100}]


def _propagate(component: dict[str, Any], traffic: Sequence[Mapping[str, Any]]) -> bool:
    """KServe's ``PropagateStatus`` bookkeeping of rolled-out revisions; True if it moved."""
    before = component.get("latestRolledoutRevision")
    latest_ready = component.get("latestReadyRevision")
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


def _condition(kind: str, status: str, stamp: str, reason: str = "",
               message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": stamp}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def _failed_conditions(revision: str, reason: str, message: str,
                       stamp: str) -> list[dict[str, Any]]:
    """The conditions once the latest revision failed (or KServe could not reconcile).

    Knative (v0.48.1 pkg/apis/serving/v1): the Configuration's ``MarkLatestCreatedFailed``
    ("RevisionFailed", 'Revision %q failed with message: %s.') reaches the Service's
    ``ConfigurationsReady`` and ``Ready``; KServe copies those into ``PredictorReady`` and
    ``PredictorConfigurationReady``, ``LatestDeploymentReady`` reads
    "PredictorConfigurationReady not ready" and the living ``Ready`` takes the reason of
    its failing dependent (knative.dev/pkg apis/condition_set.go).
    """
    false = {"PredictorReady", "PredictorConfigurationReady", "LatestDeploymentReady", "Ready"}
    out = []
    for kind in _CONDITIONS:
        if kind not in false:
            out.append(_condition(kind, "True", stamp))
        elif kind == "LatestDeploymentReady":
            out.append(_condition(kind, "False", stamp, "PredictorConfigurationReady not ready"))
        else:
            out.append(_condition(kind, "False", stamp, reason, message))
    return out


def _ksvc_generation(old_status: Mapping[str, Any], template_changed: bool,
                     traffic: Sequence[Mapping[str, Any]],
                     old_component: Mapping[str, Any]) -> int:
    """The Knative Service's generation: +1 for each change of its template or traffic."""
    old = int(old_status.get("observedGeneration") or 0)
    if old == 0 or template_changed or list(traffic) != list(old_component.get("traffic") or []):
        return old + 1
    return old


def reconcile(obj: Mapping[str, Any], revisions: Sequence[Mapping[str, Any]], *,
              now: str | None = None, failing: Failing | None = None
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Simulate KServe's controller and Knative after a spec change (a pure function).

    Args:
        obj: The InferenceService after the change; its old ``status`` carries the
            rolled-out revision bookkeeping.
        revisions: The predictor's revisions so far, oldest first (dicts with ``name``,
            ``storageUri``, ``template``, ``generation`` and ``ready``).
        now: The condition timestamp (default: the current time).
        failing: Tells which models never load (see :data:`Failing`); default: all load.

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
    old_status = new.get("status") or {}
    old = (old_status.get("components") or {}).get("predictor") or {}
    stamp = now or now_rfc3339()
    host = f"{name}.{namespace}.{DOMAIN}"
    mode = deployment_mode(new)
    problems = dict(controller_problems(new))
    if "storageUri" in problems:  # the controller stops before the Knative Service
        kept = copy.deepcopy(dict(old_status))
        if not kept.get("conditions"):  # InitializeConditions, then the error
            kept["conditions"] = [_condition(c, "Unknown", stamp)
                                  for c in ("IngressReady", "PredictorReady", "Ready")]
        kept.setdefault("deploymentMode", reported_deployment_mode(new))
        new["status"] = kept
        return new, revs
    status: dict[str, Any] = {
        "deploymentMode": old_status.get("deploymentMode") or reported_deployment_mode(new),
        "url": f"http://{host}",
        "address": {"url": f"http://{name}-predictor.{namespace}.svc.cluster.local"},
        "conditions": [_condition(c, "True", stamp) for c in _CONDITIONS],
        "modelStatus": {"transitionStatus": "UpToDate",
                        "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"}},
    }
    if not is_knative(mode):  # one Deployment, rolled over in place: no revisions, no split
        status["observedGeneration"] = generation
        status["components"] = {"predictor": {"url": f"http://{name}-predictor.{namespace}"
                                                     f".{DOMAIN}"}}
        new["status"] = status
        return new, revs
    if "traffic" in problems:  # Knative refused the traffic: nothing else moved
        kept = copy.deepcopy(dict(old_status))
        conditions = [c for c in kept.get("conditions") or []
                      if c.get("type") not in ("PredictorReady", "Ready")]
        message = problems["traffic"]
        conditions += [_condition("PredictorReady", "False", stamp, "ReconcileFailed", message),
                       _condition("Ready", "False", stamp, "ReconcileFailed", message)]
        kept["conditions"] = sorted(conditions, key=lambda c: c["type"])
        new["status"] = kept
        return new, revs
    template = revision_template(new)
    template_changed = not revs or revs[-1].get("template") != template
    if template_changed:
        uri = (predictor.get("model") or {}).get("storageUri")
        error = failing(uri) if failing is not None else None
        revs.append({
            "name": f"{name}-predictor-{len(revs) + 1:05d}",
            "storageUri": uri,
            "generation": generation,
            "template": template,
            "ready": error is None,
            **({"error": error} if error is not None else {}),
        })
    latest = revs[-1]
    ready = [r for r in revs if r.get("ready", True)]
    component: dict[str, Any] = {
        "latestCreatedRevision": latest["name"],
        "latestReadyRevision": ready[-1]["name"] if ready else "",
        "latestRolledoutRevision": old.get("latestRolledoutRevision") or "",
        "previousRolledoutRevision": old.get("previousRolledoutRevision") or "",
    }
    canary = predictor.get("canaryTrafficPercent")
    tag_latest = (meta.get("annotations") or {}).get(TAG_ROUTING_ANNOTATION) == "true"
    traffic = _knative_traffic(canary, component, tag_latest, f"{name}-predictor.{namespace}."
                               f"{DOMAIN}")
    for _ in range(4):  # the controller reconciles again whenever the status moved
        if not _propagate(component, traffic):
            break
        traffic = _knative_traffic(canary, component, tag_latest,
                                   f"{name}-predictor.{namespace}.{DOMAIN}")
    component["traffic"] = traffic
    component["url"] = f"http://{name}-predictor.{namespace}.{DOMAIN}"
    if not latest.get("ready", True):
        error = str(latest.get("error") or "")
        deployment = f"{latest['name']}-deployment"
        status["conditions"] = _failed_conditions(
            latest["name"], "RevisionFailed",
            f'Revision "{latest["name"]}" failed with message: ReplicaSet "{deployment}" has '
            "timed out progressing..", stamp)
        status["modelStatus"] = {
            "transitionStatus": "BlockedByFailedLoad",
            "states": {"activeModelState": "Loaded" if ready else "",
                       "targetModelState": "FailedToLoad"},
            "lastFailureInfo": {"location": deployment, "reason": "ModelLoadFailed",
                                "message": error, "exitCode": 1,
                                "modelRevisionName": latest["name"]},
        }
    status["observedGeneration"] = _ksvc_generation(old_status, template_changed, traffic, old)
    status["components"] = {"predictor": {k: v for k, v in component.items() if v != ""}}
    new["status"] = status
    return new, revs
