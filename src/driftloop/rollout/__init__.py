"""Rollout backends: move an InferenceService's traffic between a stable model and a canary.

One interface, :class:`~driftloop.rollout.base.RolloutBackend`, two implementations:

* :class:`~driftloop.rollout.kube.KubeRolloutBackend` -- a KServe InferenceService on a
  cluster, through the Kubernetes API (merge patches with a resourceVersion precondition,
  bounded retries). Needs KServe in Serverless (Knative) mode.
* :class:`~driftloop.rollout.local.LocalRolloutBackend` -- the same object as YAML in a
  local folder, with a stand-in of KServe's controller, and
  :class:`~driftloop.rollout.local.LocalGateway`, a stand-in of Knative's traffic split that
  serves the split with real predictor servers on 127.0.0.1.

A canary: ``ensure(stable_uri)``, ``set_canary(canary_uri, 10)``, ``set_traffic(50)``,
``set_traffic(100)`` (promote) or ``rollback()``. A model's ``storageUri`` is its registry
version folder (:func:`~driftloop.rollout.base.version_storage_uri`).

Importing this package imports neither kubernetes nor kserve.
"""

from __future__ import annotations

from driftloop.rollout.base import (
    DEFAULT_TEMPLATE,
    PREVIOUS_URI_ANNOTATION,
    AlreadyExistsError,
    ConflictError,
    InferenceServiceNotFound,
    RolloutBackend,
    RolloutError,
    RolloutRejected,
    ServiceState,
    TrafficTarget,
    UnsupportedDeploymentMode,
    build_inference_service,
    version_storage_uri,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "PREVIOUS_URI_ANNOTATION",
    "AlreadyExistsError",
    "ConflictError",
    "InferenceServiceNotFound",
    "RolloutBackend",
    "RolloutError",
    "RolloutRejected",
    "ServiceState",
    "TrafficTarget",
    "UnsupportedDeploymentMode",
    "build_inference_service",
    "version_storage_uri",
]
