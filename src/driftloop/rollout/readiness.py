"""Has a rollout step taken effect? KServe's status, read the way KServe means it.

The API server answers a write at once; KServe's controller and Knative act on it later
and report in ``status``. A step is in effect when its new revision (if it made one) is
ready and the traffic is the split it asked for. What the status offers for that, in
Knative mode (KServe v0.20.0 pkg/apis/serving/v1beta1/inference_service_status.go,
``PropagateStatus``; knative.dev/serving v0.48.1 pkg/apis/serving/v1):

* ``components.predictor.latestCreatedRevision`` / ``latestReadyRevision``: Knative's
  names of the newest revision and the newest ready one. A change of the revision
  template (:func:`~driftloop.rollout.inference_service.revision_template`) makes a new
  revision: until ``latestCreatedRevision`` differs from the one before the write, the
  status still describes the old spec.
* ``components.predictor.traffic``: the split Knative applies -- the target with
  ``latestRevision: true`` is on the latest *ready* revision with ``canaryTrafficPercent``,
  the ``prev`` target on ``latestRolledoutRevision`` with the rest.
* ``conditions``: ``Ready`` (= ``PredictorReady`` and ``IngressReady``); ``PredictorReady``
  and ``PredictorConfigurationReady`` carry the Knative Service's reason and message, e.g.
  ``RevisionFailed``: 'Revision "x-predictor-00002" failed with message: ...'
  (configuration_lifecycle.go ``MarkLatestCreatedFailed``); KServe's own failure to
  update the Knative Service is ``PredictorReady`` False ``ReconcileFailed``.
* ``modelStatus``: ``transitionStatus`` ``BlockedByFailedLoad`` (the storage initializer
  or the model server of the latest revision failed: ``lastFailureInfo`` says why, reason
  ``ModelLoadFailed``) or ``InvalidSpec`` (e.g. no runtime for the model format).

Not usable: ``status.observedGeneration``. KServe copies it from the predictor's Knative
Service (``ss.ObservedGeneration = serviceStatus.ObservedGeneration``), whose generation
counts that object's spec changes, not the InferenceService's: a metadata change bumps
only the Knative Service's, a change of a field Knative mode ignores only ours. Comparing
it with ``metadata.generation`` answers "reconciled" too early or never.

Nothing in the status at all: an unsupported ``storageUri`` scheme (the controller stops
before creating a revision and only records an event), so a step waits for its timeout
and says what it was waiting for.
"""

from __future__ import annotations

from dataclasses import dataclass

from driftloop.rollout.inference_service import Condition, ServiceState

#: Conditions whose ``False`` means the service (or its latest revision) failed.
FAILURE_CONDITIONS = ("PredictorReady", "PredictorConfigurationReady", "LatestDeploymentReady",
                      "PredictorRouteReady", "RoutesReady", "IngressReady", "Ready")
#: ``modelStatus.transitionStatus`` values that mean the model of the spec cannot serve.
MODEL_FAILURES = ("BlockedByFailedLoad", "InvalidSpec")


@dataclass(frozen=True)
class Expectation:
    """What one write waits for.

    Attributes:
        before: The state read just before the write (None: the object was created).
        new_revision: The write changed the revision template, so Knative makes a new
            revision; the status describes the write once ``latestCreatedRevision`` moved.
        pin: The first write of a rollback (``canaryTrafficPercent: 0``): only the traffic
            must be back on the rolled-out revision; the latest revision need not be
            ready (it may be the one that failed).
    """

    before: ServiceState | None
    new_revision: bool
    pin: bool = False

    @property
    def revision_before(self) -> str | None:
        """``latestCreatedRevision`` before the write."""
        return self.before.latest_created_revision if self.before is not None else None


@dataclass(frozen=True)
class Progress:
    """The judgement of one status read.

    Attributes:
        done: The write is in effect.
        failed: The status reports a failure (``reason``, ``message``).
        waiting_for: What is still missing, in words ("" when done or failed).
        reason: The failure's reason (a condition's or ``lastFailureInfo``'s).
        message: Its message.
        revision: The revision concerned, if known.
    """

    done: bool = False
    failed: bool = False
    waiting_for: str = ""
    reason: str = ""
    message: str = ""
    revision: str | None = None


def _same(a: Condition | None, b: Condition | None) -> bool:
    return a is not None and b is not None and (a.status, a.reason, a.message) == (
        b.status, b.reason, b.message)


def _failure(state: ServiceState, expect: Expectation, created_new: bool) -> Progress | None:
    before = expect.before
    latest_failing = (state.latest_created_revision is not None
                      and state.latest_created_revision != state.latest_ready_revision)
    if expect.new_revision and not created_new:
        latest_failing = False  # still the old spec's revision: not ours to judge
    for kind in FAILURE_CONDITIONS:
        condition = state.condition(kind)
        if condition is None or condition.status != "False":
            continue
        old = before.condition(kind) if before is not None else None
        # new since the write, or the latest revision (ours once it moved) is failing
        if (not _same(condition, old) and (created_new or not expect.new_revision)) \
                or latest_failing:
            return Progress(failed=True, reason=condition.reason or f"{kind} False",
                            message=condition.message,
                            revision=state.latest_created_revision)
    if state.transition_status in MODEL_FAILURES:
        now = (state.transition_status, state.failure_reason, state.failure_message)
        then = ((before.transition_status, before.failure_reason, before.failure_message)
                if before is not None else None)
        if now != then:
            return Progress(failed=True, reason=state.failure_reason or state.transition_status,
                            message=state.failure_message or f"model status "
                            f"{state.transition_status}", revision=state.latest_created_revision)
    return None


def judge(state: ServiceState, expect: Expectation) -> Progress:
    """Judge one read of the status against what a write expects.

    A failure counts only once the status describes the write (after a template change:
    a new ``latestCreatedRevision``) and only when it is new since the write or concerns
    the latest revision, so a rollback is not blamed for the failure it is undoing. The
    first write of a rollback (``pin``) waits for the traffic only.
    """
    created_new = (state.latest_created_revision is not None
                   and state.latest_created_revision != expect.revision_before)
    if not expect.pin:
        failure = _failure(state, expect, created_new)
        if failure is not None:
            return failure
    if expect.new_revision and not created_new:
        return Progress(waiting_for=(
            "a new revision for the changed spec (latestCreatedRevision is still "
            f"{state.latest_created_revision or 'unset'})"))
    shares = state.traffic_by_revision()
    if expect.pin:
        rolled = state.latest_rolled_out_revision
        if rolled is not None and shares.get(rolled) == 100:
            return Progress(done=True)
        return Progress(waiting_for=f"all traffic on the rolled-out revision {rolled} "
                                    f"(traffic is {shares or 'empty'})")
    if state.latest_created_revision != state.latest_ready_revision:
        return Progress(waiting_for=f"revision {state.latest_created_revision} to become ready "
                                    f"(latest ready: {state.latest_ready_revision})")
    if not state.traffic_matches_spec:
        return Progress(waiting_for=f"{state.wanted_latest_percent}% of the traffic on "
                                    f"{state.latest_ready_revision} (traffic is "
                                    f"{shares or 'empty'})")
    if not state.ready:
        return Progress(waiting_for="the Ready condition (" + (
            str(state.condition("Ready") or "no Ready condition yet")) + ")")
    return Progress(done=True)


def unready_conditions(state: ServiceState) -> str:
    """The conditions that are not True, for a message ("" when all are)."""
    return "; ".join(str(c) for c in state.conditions if c.status != "True")
