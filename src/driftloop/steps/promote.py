"""Announce and promote: the notify step, then the promote step (a canary start).

:func:`run_promote` acts on a verdict over an open registry (compare-and-swap on the
champion the challenger was judged against); :func:`notify_step` and
:func:`promote_step` are the steps the ``notify`` and ``promote_model`` components and
the in-process loop call, in that order: nothing changes unannounced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from driftloop.config import Config
from driftloop.data.runs import record_result
from driftloop.data.storage import Store
from driftloop.decide.verdict import Verdict
from driftloop.errors import DriftloopError
from driftloop.models.registry import AliasState, Registry
from driftloop.notify import Delivery, Event, Notifier, NullNotifier, make_notifier, notify_or_raise
from driftloop.rollout import progressive
from driftloop.rollout.base import RolloutBackend
from driftloop.rollout.progressive import RolloutStep
from driftloop.serde import JsonResult
from driftloop.steps.common import (
    as_store,
    backend_for,
    logged_step,
    notifier_config,
    read_json_artifact,
    run_key,
)


def run_promote(
    registry: Registry, verdict: Verdict, *, notifier: Notifier, run_id: str, model_name: str,
    backend: RolloutBackend | None = None, config: Config | None = None,
) -> AliasState:
    """Act on a promote verdict; notify before changing anything.

    Without a backend the champion alias moves at once (registry only). With one, the
    challenger starts its canary at the first traffic step
    (:func:`driftloop.rollout.progressive.start_canary`; the first model is deployed at 100%).
    """
    version = verdict.challenger.version
    if verdict.decision == "needs_approval":
        # a person decides: tell them what to run (the verdict's next steps)
        notifier.send(Event("info", f"challenger {version} needs approval", model_name,
                            {"version": version, "reasons": verdict.reasons,
                             "next_steps": list(getattr(verdict, "next_steps", []))},
                            run_id=run_id))
    if verdict.decision != "promote":
        return registry.aliases()
    reason = "; ".join(verdict.reasons)
    judged = verdict.champion.version if verdict.champion is not None else None
    if backend is not None:
        from driftloop.rollout.progressive import start_canary

        now = registry.aliases().champion
        if now != judged:  # another run promoted since this verdict was made
            return _champion_changed(registry, notifier, run_id, model_name, version,
                                     judged, now)
        start_canary(registry, backend, version, config=(config or Config()).canary,
                     notifier=notifier, run_id=run_id, model_name=model_name, reason=reason)
        return registry.aliases()
    from driftloop.models.registry import ChampionChanged

    notifier.send(Event("model_update", f"promoting {version} to champion", model_name,
                        {"version": version, "reasons": verdict.reasons}, run_id=run_id))
    try:
        # compare-and-swap: only over the champion the challenger was compared with
        return registry.promote(version, reason=reason, run_id=run_id, expect_champion=judged)
    except ChampionChanged as exc:
        return _champion_changed(registry, notifier, run_id, model_name, version, judged,
                                 exc.actual)


@dataclass
class ChampionChangedRecord(JsonResult):
    """``runs/<run-id>/promotion.json`` when a promote verdict was not applied.

    Attributes:
        version: The challenger that was not promoted (left for the next run).
        judged_against: The champion it was compared with.
        champion: The champion another run had promoted meanwhile.
        reason: In words.
    """

    version: str
    judged_against: str | None
    champion: str | None
    reason: str


def _champion_changed(registry: Registry, notifier: Notifier, run_id: str, model_name: str,
                      version: str, judged: str | None, actual: str | None) -> AliasState:
    why = (f"champion changed, not promoted: {version} was compared with {judged}, but the "
           f"champion is now {actual}; the next run compares it with the new champion")
    record_result(registry.store, run_id, "promotion",
                  ChampionChangedRecord(version, judged, actual, why))
    notifier.send(Event("info", why, model_name, {"version": version, "judged_against": judged,
                                                 "champion": actual}, run_id=run_id))
    return registry.aliases()


@logged_step("notify")
def notify_step(
    verdict_path: str | Path, *, model_name: str, run_id: str, webhook: str = "",
    notifier: Notifier | None = None,
) -> Delivery:
    """Announce the verdict's model change before it happens.

    A ``promote`` verdict sends a ``model_update`` event; any other verdict an ``info``
    event. With a webhook the delivery is required: a failed POST raises, so the promotion
    that follows this step does not happen unannounced. Without one the event is logged.

    Args:
        verdict_path: The verdict JSON (from :func:`evaluate_step`).
        model_name: Model name.
        run_id: The run's id (made path-safe by :func:`run_key`).
        webhook: ``http(s)://`` URL that receives the event as a JSON POST (``""``: log).
        notifier: Sends the event instead (an in-process caller's); its delivery is
            required like a webhook's.

    Raises:
        NotificationError: A webhook is set and the delivery failed.
    """
    run_id = run_key(run_id)
    verdict = read_json_artifact(Verdict, verdict_path, "verdict")
    if verdict is None:
        raise DriftloopError(f"{verdict_path}: no verdict to announce")
    version = verdict.challenger.version
    details = {"version": version, "decision": verdict.decision, "reasons": verdict.reasons,
               "primary_metric": verdict.primary_metric,
               "improvement_rel": verdict.improvement_rel}
    if verdict.decision == "promote":
        event = Event("model_update", f"promoting {version} to champion", model_name, details,
                      run_id=run_id)
    elif verdict.decision == "needs_approval":
        # a person decides: tell them what to run (the verdict's next steps)
        event = Event("info", f"challenger {version} needs approval", model_name,
                      details | {"next_steps": list(getattr(verdict, "next_steps", []))},
                      run_id=run_id)
    else:
        event = Event("info", f"{version}: verdict {verdict.decision}, no model change",
                      model_name, details, run_id=run_id)
    if notifier is not None:
        return notify_or_raise(notifier, event, required=True)
    return notify_or_raise(make_notifier(notifier_config(webhook)), event,
                           required=bool(webhook))


@dataclass
class PromoteOutcome:
    """What the promote step changed.

    Attributes:
        version: The challenger the verdict is about.
        promoted: Whether the verdict said promote and it is the champion now.
        aliases: The registry aliases after the step.
        isvc_name: The KServe InferenceService serving it (``""``: registry only).
        namespace: Its namespace.
        rollout: The rollout step (a canary started, or the first model deployed); None
            when registry only or not promoted.
    """

    version: str
    promoted: bool
    aliases: AliasState
    isvc_name: str = ""
    namespace: str = ""
    rollout: RolloutStep | None = None

    @property
    def canary_started(self) -> bool:
        """Whether a canary of the version started (it is not the champion yet)."""
        return self.rollout is not None and self.rollout.action == "start"

    def to_markdown(self) -> str:
        """A short Markdown summary."""
        if self.canary_started:
            head = "Canary started"
        else:
            head = "Promoted" if self.promoted else "Not promoted"
        target = f"{self.namespace}/{self.isvc_name}" if self.isvc_name else "(none given)"
        if self.rollout is not None:
            serving = (f"- InferenceService {target}: {self.rollout.action} "
                       f"{self.rollout.from_percent}% → {self.rollout.to_percent}%: "
                       + "; ".join(self.rollout.reasons) + "\n")
        else:
            serving = (f"- InferenceService {target}: not changed (registry aliases only)\n")
        return (f"### {head}: `{self.version}`\n\n"
                f"- registry: champion `{self.aliases.champion}`, canary "
                f"`{self.aliases.canary}`, previous `{self.aliases.previous}`\n" + serving)


@logged_step("promote_model")
def promote_step(
    store: Store | str, model_name: str, verdict_path: str | Path, *, run_id: str,
    isvc_name: str = "", namespace: str = "", rollout_backend: str = "local",
    rollout_state: str = "", backend: RolloutBackend | None = None,
    config: Config | None = None,
) -> PromoteOutcome:
    """Start the challenger's canary when the verdict says promote.

    With a rollout backend and an InferenceService the challenger starts as a canary at
    the first traffic step (:func:`driftloop.rollout.progressive.start_canary`; the first model is
    deployed at 100% and promoted at once); later runs advance it. Without (``none`` or
    no ``isvc_name``) the champion alias moves at once. The announcement is
    :func:`notify_step`'s job (it runs first), so nothing is sent here. Records
    ``runs/<run-id>/aliases.json`` (and ``rollout.json``).

    Args:
        store: The store, or its root URI.
        model_name: Model name in the registry.
        verdict_path: The verdict JSON (from :func:`evaluate_step`).
        run_id: The run's id (made path-safe by :func:`run_key`).
        isvc_name: The InferenceService serving the model (``""``: registry only).
        namespace: Its Kubernetes namespace.
        rollout_backend: ``local``, ``kubernetes`` or ``none`` (registry only).
        rollout_state: The local backend's state folder (``""``: ``<store>/rollout``).
        backend: An open rollout backend (an in-process caller's, left open); wins over
            the four strings above.
        config: The canary's steps (default: :class:`Config`).
    """
    run_id = run_key(run_id)
    store = as_store(store)
    verdict = read_json_artifact(Verdict, verdict_path, "verdict")
    if verdict is None:
        raise DriftloopError(f"{verdict_path}: no verdict to act on")
    registry = Registry(store, model_name)
    owned = None
    if backend is None and verdict.decision == "promote":
        backend = owned = backend_for(store, isvc_name, namespace, rollout_backend,
                                      rollout_state)
    try:
        # the notify step announced the change: nothing more is sent from here
        aliases = run_promote(registry, verdict, notifier=NullNotifier(), run_id=run_id,
                              model_name=model_name, backend=backend, config=config)
    finally:
        if owned is not None:
            owned.close()
    record_result(store, run_id, "aliases", aliases)
    version = verdict.challenger.version
    promoted = verdict.decision == "promote" and aliases.champion == version
    rollout = progressive.recorded_step(registry, run_id) if backend is not None else None
    return PromoteOutcome(version, promoted, aliases, isvc_name, namespace, rollout)
