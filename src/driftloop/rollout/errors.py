"""The errors a rollout step raises, whichever backend carries it out.

Each one matches an answer of the Kubernetes API (404, 400/422, 409) or KServe's refusal of a
RawDeployment service, so both backends report the same failure the same way and callers
catch one type per cause. Their own module because the InferenceService helpers
(:mod:`driftloop.rollout.inference_service`) and the rollout interface
(:mod:`driftloop.rollout.base`) both raise them, and the helpers sit below the interface.
"""

from __future__ import annotations

from driftloop.errors import DriftloopError


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
