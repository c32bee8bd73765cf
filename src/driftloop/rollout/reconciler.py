"""A stand-in for KServe's InferenceService controller and Knative Serving (a pure function).

:func:`reconcile` takes an InferenceService after a spec change and the predictor's
revisions so far, and returns the object with the ``status`` KServe and Knative would write
(traffic, latest created/ready/rolled-out revisions, previous rolled-out revision, the
conditions) plus the revisions, one appended when the predictor's template changed
(:func:`revision_template`).

KServe semantics simulated (``pkg/controller/.../knative/ksvc_reconciler.go`` and
``InferenceServiceStatus.PropagateStatus``): with ``canaryTrafficPercent = p`` the latest
revision gets ``p`` % and the last rolled-out revision (tag ``prev``) the rest; without it
(or with 100) the latest revision gets 100 % and becomes ``latestRolledoutRevision`` (the
one before becomes ``previousRolledoutRevision``); ``p = 0`` right after a promotion moves
``latestRolledoutRevision`` back to the previous one, so all traffic returns to it.

Not simulated: revisions become ready at once (no image pulls, no failing revisions),
status is written in the same step as the spec, no scale-to-zero, no garbage collection of
old revisions, and transformers/explainers are ignored.

Its own module because two callers must simulate the controller identically: the local
rollout backend (:class:`~driftloop.rollout.local.LocalRolloutBackend`) after each write of
its YAML file, and the test stand-in of the Kubernetes API after each PATCH. It reads no
files and keeps no state.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from driftloop.rollout.inference_service import (
    SERVERLESS,
    TAG_ROUTING_ANNOTATION,
    deployment_mode,
)

#: The route domain of the simulated cluster (``status.url``).
DOMAIN = "example.com"
#: Annotations that do not reach the Knative revision template.
_NOT_PROPAGATED = frozenset({"kubectl.kubernetes.io/last-applied-configuration"})
_CONDITIONS = ("IngressReady", "LatestDeploymentReady", "PredictorConfigurationReady",
               "PredictorReady", "PredictorRouteReady", "Ready", "RoutesReady")


def now_rfc3339() -> str:
    """Return the current UTC time as Kubernetes writes it (``2026-01-01T10:00:00Z``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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

