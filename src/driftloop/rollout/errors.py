"""The errors a rollout step raises, whichever backend carries it out.

Each one matches an answer of the Kubernetes API (404, 400/422, 403, 409), KServe's refusal
of a service that cannot split traffic, or a rollout whose status never showed it taking
effect, so both backends report the same failure the same way and callers catch one type
per cause. Their own module because the InferenceService helpers
(:mod:`driftloop.rollout.inference_service`), the status judge
(:mod:`driftloop.rollout.readiness`) and the rollout interface
(:mod:`driftloop.rollout.base`) all raise them, and the helpers sit below the interface.
"""

from __future__ import annotations

from driftloop.errors import DriftloopError


class RolloutError(DriftloopError):
    """A rollout step cannot be carried out (the message names the InferenceService)."""


class InferenceServiceNotFound(RolloutError):
    """The InferenceService does not exist (HTTP 404)."""


class RolloutRejected(RolloutError):
    """The API server (or its admission webhook) refused the object (HTTP 400/422)."""


class AdmissionDenied(RolloutRejected):
    """An admission webhook denied the request (KServe's validator answers 403 Forbidden).

    Not a missing permission: the request reached the webhook, which refused the object
    itself (e.g. KServe 0.16's "update rejected: deploymentMode cannot be changed").

    Attributes:
        webhook: The webhook's name as the API server quotes it, e.g.
            ``inferenceservice.kserve-webhook-server.validator``.
        reason: What the webhook said, without the API server's prefix.
    """

    def __init__(self, message: str, *, webhook: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.webhook = webhook
        self.reason = reason


class PermissionDenied(RolloutError):
    """The API server's authorizer refused the request (HTTP 403 from RBAC, or 401)."""


class UnsupportedDeploymentMode(RolloutError):
    """The InferenceService runs in Standard (RawDeployment) or ModelMesh mode.

    Only Knative mode (``Serverless``, called ``Knative`` since KServe 0.16) honours
    ``canaryTrafficPercent``.
    """


class ConflictError(RolloutError):
    """A write carried a stale ``metadata.resourceVersion`` (HTTP 409 Conflict)."""


class AlreadyExistsError(RolloutError):
    """A create found an object of that name (HTTP 409 AlreadyExists)."""


class RolloutNotReady(RolloutError):
    """A write was accepted but the status never showed the rollout taking effect.

    Attributes:
        reason: The failing condition's (or model status') ``reason``, "" if none.
        detail: Its ``message``, "" if none.
        revision: The revision that did not become ready, if known.
    """

    def __init__(self, message: str, *, reason: str = "", detail: str = "",
                 revision: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.detail = detail
        self.revision = revision


class RevisionFailed(RolloutNotReady):
    """The status reports a failure: a condition ``False`` or a model that failed to load."""


class RolloutTimeout(RolloutNotReady):
    """The status did not reach the requested state within the step's timeout."""
