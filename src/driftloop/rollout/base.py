"""The rollout interface both backends implement: the canary steps on one InferenceService.

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
service before writing anything
(:class:`~driftloop.rollout.errors.UnsupportedDeploymentMode`).

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
The object these steps read and patch (its constants, :class:`ServiceState`, the template
and validation) is in :mod:`driftloop.rollout.inference_service`, the errors in
:mod:`driftloop.rollout.errors`.
"""

from __future__ import annotations

import copy
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from driftloop.models.registry import Registry
from driftloop.rollout.errors import (
    AlreadyExistsError,
    ConflictError,
    InferenceServiceNotFound,
    RolloutError,
    RolloutRejected,  # noqa: F401 - kept importable for rollout/kube.py
)
from driftloop.rollout.inference_service import (
    GROUP,  # noqa: F401 - kept importable for rollout/kube.py
    PLURAL,  # noqa: F401 - kept importable for rollout/kube.py
    PREVIOUS_URI_ANNOTATION,
    VERSION,  # noqa: F401 - kept importable for rollout/kube.py
    ServiceState,
    build_inference_service,
    check_serverless,
)

log = logging.getLogger(__name__)


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
            kserve model object); default
            :data:`~driftloop.rollout.inference_service.DEFAULT_TEMPLATE`.
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
