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

KServe's Standard (formerly RawDeployment) and ModelMesh modes ignore
``canaryTrafficPercent``; every operation refuses such a service before writing anything
(:class:`~driftloop.rollout.errors.UnsupportedDeploymentMode`). Knative mode has two
names, ``Serverless`` and (since KServe 0.16) ``Knative``; both are accepted, and the mode
is read the way KServe reads it (:func:`~driftloop.rollout.inference_service.deployment_mode`).

**Each step waits until it is in effect.** The API server accepts a write before KServe
and Knative act on it, and some writes it accepts never take effect (a ``storageUri`` the
model server cannot load; one with a scheme the controller refuses). After every write a
step polls the status (every :attr:`RolloutBackend.poll_interval` seconds, at most
:attr:`RolloutBackend.ready_timeout` seconds) until its new revision is ready and the
traffic is the split it asked for (:func:`~driftloop.rollout.readiness.judge`), and raises
:class:`~driftloop.rollout.errors.RevisionFailed` with the condition's reason and message
when the status reports a failure, or
:class:`~driftloop.rollout.errors.RolloutTimeout` naming what it still waited for. Rolling
back is the rollout policy's decision (:mod:`driftloop.rollout.progressive`). A step that
finds its change already in place still waits, so re-running a step that timed out waits
for the same outcome again.

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
    RevisionFailed,
    RolloutError,
    RolloutRejected,  # noqa: F401 - kept importable for rollout/kube.py
    RolloutTimeout,
)
from driftloop.rollout.inference_service import (
    DEPLOYMENT_MODE_ANNOTATION,
    GROUP,  # noqa: F401 - kept importable for rollout/kube.py
    PLURAL,  # noqa: F401 - kept importable for rollout/kube.py
    PREVIOUS_URI_ANNOTATION,
    TEMPLATE_GENERATION_ANNOTATION,
    VERSION,  # noqa: F401 - kept importable for rollout/kube.py
    ServiceState,
    build_inference_service,
    check_serverless,
    merge_patch,
    mode_annotation_fix,
    revision_template,
)
from driftloop.rollout.readiness import Expectation, judge, unready_conditions

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


#: How long a step waits for its write to take effect by default: Knative gives a revision
#: ``progress-deadline`` 600 s to become ready before it reports the revision failed
#: (knative.dev/serving v0.48.1 config/core/configmaps/deployment.yaml); a little more, so
#: that its reason arrives before our timeout.
DEFAULT_READY_TIMEOUT = 720.0
#: Seconds between two reads of the status while a step waits.
DEFAULT_POLL_INTERVAL = 2.0


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
        ready_timeout: Seconds a step waits for its write to take effect (0: the status is
            judged once, for backends whose controller answers at once).
        poll_interval: Seconds between two reads of the status while waiting.
        sleep: The sleep function (tests pass a recorder).
        clock: The monotonic clock the timeout is measured on (tests pass a fake).
    """

    def __init__(self, name: str, namespace: str = "default", *, template: Any = None,
                 max_conflict_retries: int = 5, ready_timeout: float = DEFAULT_READY_TIMEOUT,
                 poll_interval: float = DEFAULT_POLL_INTERVAL,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ready_timeout < 0 or poll_interval <= 0:
            raise ValueError("ready_timeout must be >= 0 and poll_interval > 0")
        self.name = name
        self.namespace = namespace
        self.template = template
        self.max_conflict_retries = max_conflict_retries
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self._sleep = sleep
        self._clock = clock
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

    def wait_until_reconciled(self, timeout: float | None = None,
                              poll: float | None = None) -> ServiceState:
        """Poll until the current spec is in effect: ready, and the traffic as specified.

        What every step already waits for after its own write; for a caller that changed
        the object some other way. Does not compare ``status.observedGeneration`` with
        ``metadata.generation``: KServe copies the former from the Knative Service, another
        object's counter (see :mod:`driftloop.rollout.readiness`). Without knowing the
        revision before a change this cannot tell a status that lags behind a new
        template from a settled one.

        Args:
            timeout: Seconds (default :attr:`ready_timeout`).
            poll: Seconds between reads (default :attr:`poll_interval`).

        Raises:
            RevisionFailed: The status reports a failure.
            RolloutTimeout: Not in effect within ``timeout`` seconds.
        """
        return self._await("wait", Expectation(self.get(), new_revision=False),
                           timeout=timeout, poll=poll)

    def _diagnosis(self) -> str:
        """More about a step that timed out (a backend may read events); "" by default."""
        return ""

    def _await(self, action: str, expect: Expectation, *, timeout: float | None = None,
               poll: float | None = None) -> ServiceState:
        """Read the status until ``expect`` is met; raise when it fails or time runs out."""
        timeout = self.ready_timeout if timeout is None else timeout
        poll = self.poll_interval if poll is None else poll
        deadline = self._clock() + timeout
        while True:
            state = self.get()
            progress = judge(state, expect)
            if progress.done:
                return state
            if progress.failed:
                what = f" {progress.revision}" if progress.revision else ""
                raise RevisionFailed(
                    f"{self.where}: {action}: the rollout failed: revision{what} is not ready: "
                    f"{progress.reason}: {progress.message}".rstrip(": "),
                    reason=progress.reason, detail=progress.message, revision=progress.revision)
            left = deadline - self._clock()
            if left <= 0:
                conditions = unready_conditions(state)
                hint = ""
                if expect.new_revision and "new revision" in progress.waiting_for:
                    hint = ("; KServe's controller made no revision for the change: it may "
                            "refuse the spec at reconcile time (e.g. an unsupported storageUri "
                            "scheme), which only its events show (kubectl describe "
                            "inferenceservice)")
                diagnosis = self._diagnosis()
                raise RolloutTimeout(
                    f"{self.where}: {action}: not in effect after {timeout:g} s: still waiting "
                    f"for {progress.waiting_for}"
                    + (f"; conditions: {conditions}" if conditions else "") + hint
                    + (f"; {diagnosis}" if diagnosis else ""),
                    reason="Timeout", detail=progress.waiting_for,
                    revision=state.latest_created_revision)
            log.info("%s: %s: waiting for %s", self.where, action, progress.waiting_for)
            self._sleep(min(poll, left))

    def _expect(self, before: dict[str, Any], after: dict[str, Any], *,
                pin: bool = False) -> Expectation:
        """What a write that turned ``before`` into ``after`` waits for."""
        return Expectation(ServiceState.from_object(before),
                           new_revision=revision_template(before) != revision_template(after),
                           pin=pin)

    # -- writing --------------------------------------------------------------------

    def _update(self, action: str, compute: PatchFn
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """Read, compute a patch, send it with the resourceVersion; recompute on a conflict.

        A patch also renames a legacy deployment mode annotation when KServe 0.16 would
        refuse it otherwise (:func:`~driftloop.rollout.inference_service.mode_annotation_fix`),
        and one that changes the revision template records the generation it makes in
        :data:`~driftloop.rollout.inference_service.TEMPLATE_GENERATION_ANNOTATION` (so the
        change is a new revision, always).

        Returns:
            The object after the step, the object read before it, and the patch sent (None
            when the step was already in place).
        """
        for attempt in range(self.max_conflict_retries + 1):
            obj = self._read_object()
            check_serverless(obj, self.where)
            patch = compute(obj)
            if patch is None:
                log.info("%s: %s: already in place, nothing sent", self.where, action)
                return obj, obj, None
            patch = copy.deepcopy(patch)
            annotations = patch.setdefault("metadata", {}).setdefault("annotations", {})
            fix = mode_annotation_fix(obj)
            if fix is not None:
                annotations[DEPLOYMENT_MODE_ANNOTATION] = fix
            if revision_template(merge_patch(obj, patch)) != revision_template(obj):
                generation = int((obj.get("metadata") or {}).get("generation") or 0)
                annotations[TEMPLATE_GENERATION_ANNOTATION] = str(generation + 1)
            if not annotations:
                del patch["metadata"]["annotations"]
            if not patch["metadata"]:
                del patch["metadata"]
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
            return new, obj, patch
        raise RolloutError(
            f"{self.where}: {action}: the object changed under us {self.max_conflict_retries + 1} "
            "times in a row (409 Conflict each time); try again"
        )

    def _step(self, action: str, compute: PatchFn) -> ServiceState:
        """One write and its wait (also when the change was already in place)."""
        new, before, _ = self._update(action, compute)
        return self._await(action, self._expect(before, new))

    def ensure(self, storage_uri: str) -> ServiceState:
        """Create the InferenceService serving ``storage_uri`` unless it exists.

        An existing service is left as it is (its state is returned): use the rollout
        steps to change what it serves. A new one is waited for until it serves.

        Raises:
            UnsupportedDeploymentMode: The existing service runs in another mode.
            RolloutRejected: The API server refused the new object.
            RolloutNotReady: The new service did not become ready.
        """
        _check_uri(storage_uri)
        try:
            obj = self._read_object()
        except InferenceServiceNotFound:
            body = build_inference_service(self.name, self.namespace, storage_uri,
                                           self.template)
            try:
                obj = self._create_object(body)
            except AlreadyExistsError:  # created by someone else since our read
                obj = self._read_object()
            else:
                self.applied.append(AppliedPatch("create", body))
                log.info("%s: created serving %s", self.where, storage_uri)
                check_serverless(obj, self.where)
                return self._await(f"create serving {storage_uri}",
                                   Expectation(None, new_revision=True))
        check_serverless(obj, self.where)
        return ServiceState.from_object(obj)

    def set_canary(self, storage_uri: str, percent: int) -> ServiceState:
        """Serve ``storage_uri`` as a canary on ``percent`` % of the traffic.

        Patches ``spec.predictor.model.storageUri`` and ``spec.predictor.canaryTrafficPercent``
        (and records the stable URI in :data:`PREVIOUS_URI_ANNOTATION`), then waits until
        the canary's revision is ready and receives its share. Calling it again for the
        same canary only changes the percentage (or sends nothing). 100 rolls the model out
        at once (no ``canaryTrafficPercent``).

        Raises:
            RolloutError: ``storage_uri`` is already the rolled-out model, or it is the
                stable model of a canary in progress (use :meth:`rollback`).
            RolloutNotReady: The canary did not take effect (its revision failed, or the
                timeout passed); the service is left as it is for the caller to roll back.
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

        return self._step(f"canary {storage_uri} at {percent}%", compute)

    def set_traffic(self, percent: int) -> ServiceState:
        """Give the canary in progress ``percent`` % of the traffic; 100 promotes it.

        Promoting removes ``canaryTrafficPercent``: the latest revision takes all traffic
        and becomes the rolled-out revision. Sends nothing when the share is already set.
        Waits until the traffic is split so.

        Raises:
            RolloutError: No canary is in progress (and ``percent`` is below 100).
            RolloutNotReady: The split did not take effect.
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

        return self._step(f"traffic {percent}%", compute)

    def promote(self) -> ServiceState:
        """Roll the canary out to 100% (same as ``set_traffic(100)``)."""
        return self.set_traffic(100)

    def rollback(self) -> ServiceState:
        """Send all traffic back to the previous model and make it the rolled-out model.

        Three patches, each sent only when needed, each waited for: ``canaryTrafficPercent:
        0`` (Knative pins all traffic to the previously rolled-out revision at once; the
        wait asks only for that, since the latest revision may be the one that failed),
        then ``storageUri`` = the previous URI (a new revision serves the old model, still
        on 0%), then ``canaryTrafficPercent`` removed (that revision takes 100%). Works
        during a canary and after a promotion; a rollback that was interrupted resumes.

        Raises:
            RolloutError: No previous storageUri is recorded (nothing to roll back to).
            RolloutNotReady: A patch did not take effect (the previous model no longer
                becomes ready, or the timeout passed).
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

        state: ServiceState | None = None
        for _ in range(4):  # at most three patches, then a read that finds nothing to do
            new, before, patch = self._update("rollback", compute)
            pin = patch is not None and patch.get("spec") == _predictor_patch(
                canaryTrafficPercent=0)["spec"]
            state = self._await("rollback", self._expect(before, new, pin=pin))
            if patch is None:
                break
        assert state is not None
        return state

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (nothing by default)."""

    def __enter__(self) -> RolloutBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
