"""Rollout backends: move an InferenceService's traffic between a stable model and a canary.

One interface, :class:`~driftloop.rollout.base.RolloutBackend`, two implementations:

* :class:`~driftloop.rollout.kube.KubeRolloutBackend` -- a KServe InferenceService on a
  cluster, through the Kubernetes API (merge patches with a resourceVersion precondition,
  bounded retries). Needs KServe in Serverless (Knative) mode.
* :class:`~driftloop.rollout.local.LocalRolloutBackend` -- the same object as YAML in a
  local folder, with a stand-in of KServe's controller, and
  :class:`~driftloop.rollout.gateway.LocalGateway`, a stand-in of Knative's traffic split that
  serves the split with real predictor servers on 127.0.0.1.

A canary: ``ensure(stable_uri)``, ``set_canary(canary_uri, 10)``, ``set_traffic(50)``,
``set_traffic(100)`` (promote) or ``rollback()``. A model's ``storageUri`` is its registry
version folder (:func:`~driftloop.rollout.base.version_storage_uri`).

Importing this package imports neither kubernetes nor kserve.
"""

from __future__ import annotations

from pathlib import Path

from driftloop.errors import ConfigError
from driftloop.rollout.base import RolloutBackend, version_storage_uri
from driftloop.rollout.errors import (
    AdmissionDenied,
    AlreadyExistsError,
    ConflictError,
    InferenceServiceNotFound,
    PermissionDenied,
    RevisionFailed,
    RolloutError,
    RolloutNotReady,
    RolloutRejected,
    RolloutTimeout,
    UnsupportedDeploymentMode,
)
from driftloop.rollout.inference_service import (
    DEFAULT_TEMPLATE,
    PREVIOUS_URI_ANNOTATION,
    ServiceState,
    TrafficTarget,
    build_inference_service,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_TEMPLATE",
    "PREVIOUS_URI_ANNOTATION",
    "AdmissionDenied",
    "AlreadyExistsError",
    "ConflictError",
    "InferenceServiceNotFound",
    "PermissionDenied",
    "RevisionFailed",
    "RolloutBackend",
    "RolloutError",
    "RolloutNotReady",
    "RolloutRejected",
    "RolloutTimeout",
    "ServiceState",
    "TrafficTarget",
    "UnsupportedDeploymentMode",
    "build_inference_service",
    "default_state_dir",
    "make_backend",
    "version_storage_uri",
]

#: The backend kinds :func:`make_backend` knows.
BACKENDS: tuple[str, ...] = ("local", "kubernetes")
#: The local backend's state folder under a local store (``<store>/rollout``).
STATE_DIR = "rollout"


def default_state_dir(store_uri: str | Path) -> Path:
    """The local backend's default state folder: ``<store>/rollout``.

    Raises:
        ConfigError: The store is not a local folder (a ``gs://`` store has no local
            state folder: give one explicitly, or use the kubernetes backend).
    """
    text = str(store_uri)
    if "://" in text and not text.startswith("file://"):
        raise ConfigError(
            f"store {text}: the local rollout backend keeps its state in a local folder and "
            f"defaults to <store>/{STATE_DIR} only for a local store; pass a state folder "
            "(--state / rollout_state) or use the kubernetes backend"
        )
    return Path(text.removeprefix("file://")) / STATE_DIR


def make_backend(kind: str, *, name: str, namespace: str = "default",
                 state_dir: str | Path | None = None, store_uri: str | Path | None = None,
                 kube_host: str | None = None,
                 ready_timeout: float | None = None) -> RolloutBackend:
    """Return the rollout backend of ``kind`` for InferenceService ``namespace/name``.

    Args:
        kind: ``local`` (YAML in a folder) or ``kubernetes`` (the cluster's API).
        name: The InferenceService's name.
        namespace: Its namespace.
        state_dir: The local backend's state folder (default: ``<store_uri>/rollout``).
        store_uri: The store, for the local backend's default state folder.
        kube_host: An API server URL used without credentials (``kubectl proxy``, tests);
            default: the kubeconfig or the pod's service account.
        ready_timeout: Seconds a kubernetes rollout step waits for the new revision to be
            ready and serving its share (default: the backend's, 720).

    Raises:
        ConfigError: Unknown kind, or no usable state folder for the local backend.
    """
    if not name:
        raise ConfigError("rollout backend: an InferenceService name is required")
    if kind == "local":
        if state_dir is None or str(state_dir) == "":
            if store_uri is None:
                raise ConfigError("local rollout backend: give a state folder or the store")
            state_dir = default_state_dir(store_uri)
        from driftloop.rollout.local import LocalRolloutBackend

        return LocalRolloutBackend(state_dir, name, namespace)
    if kind == "kubernetes":
        from driftloop.rollout.base import DEFAULT_READY_TIMEOUT
        from driftloop.rollout.kube import KubeRolloutBackend, load_api_client

        return KubeRolloutBackend(name, namespace, api_client=load_api_client(host=kube_host),
                                  ready_timeout=DEFAULT_READY_TIMEOUT if ready_timeout is None
                                  else ready_timeout)
    raise ConfigError(f"rollout backend {kind!r}: must be one of {', '.join(BACKENDS)}")
