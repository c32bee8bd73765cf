"""The progressive rollout policy: start, step, promote or roll back a canary.

A promote verdict starts a canary at the first traffic step (``CanaryConfig.steps``,
10 → 50 → 100 by default) after a ``model_update`` notification. Every later run, while a
canary is in progress, first judges it on the logged responses joined with feedback
(:func:`driftloop.decide.canary.analyse_canary`) and acts on the decision:

* ``advance`` -- the next traffic step; the step to 100 makes the canary the champion (the
  old champion becomes ``previous``);
* ``hold`` -- nothing changes (too few labelled responses, or an inconclusive interval);
* ``rollback`` -- a ``rollback`` notification, then ``canaryTrafficPercent: 0`` and the
  previous ``storageUri`` restored (:meth:`RolloutBackend.rollback`), the canary alias
  cleared with the reasons in the registry's history.

A write that does not take effect (the backend raises
:class:`~driftloop.rollout.errors.RolloutNotReady`: a failure like ``RevisionFailed``, or
its timeout) is rolled back the same way, the condition's reason and message recorded as
reasons; the first model ever has nothing to return to (:class:`ProgressiveError`).

The state lives in two places, the registry's aliases (``canary`` names the version under
test) and the InferenceService (its ``canaryTrafficPercent``); every function reads both
and only writes what differs, so re-running a step with the same state sends no patch and
records no alias move. A run records its step as ``runs/<run-id>/rollout.json`` (and
``.md``); a run that already recorded a step for the same canary returns that step again.

Plain functions over a ``Registry`` and a ``RolloutBackend``: no kfp, kubernetes or pandas.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from driftloop.clock import utc_now_iso
from driftloop.config import CanaryConfig
from driftloop.data.runs import record_result
from driftloop.decide.canary import (
    ADVANCE,
    HOLD,
    ROLLBACK,
    CanaryAnalysis,
    ServingStats,
    analyse_canary,
    since_canary_started,
)
from driftloop.errors import DriftloopError
from driftloop.models.registry import Registry
from driftloop.notify import Event, Notifier, notify_or_raise
from driftloop.rollout.base import (
    InferenceServiceNotFound,
    RolloutBackend,
    ServiceState,
    version_storage_uri,
)
from driftloop.rollout.errors import RevisionFailed, RolloutNotReady
from driftloop.serde import JsonResult, loads

if TYPE_CHECKING:  # the records come in as a frame; moving aliases needs no pandas
    import pandas as pd

log = logging.getLogger(__name__)

#: Actions of a :class:`RolloutStep`.
START, DEPLOY, PROMOTE, NOOP = "start", "deploy", "promote", "noop"
ACTIONS: tuple[str, ...] = (START, DEPLOY, ADVANCE, HOLD, ROLLBACK, PROMOTE, NOOP)
RECORD = "rollout"


class ProgressiveError(DriftloopError):
    """A rollout request does not fit the current state (the message says why)."""


@dataclass
class RolloutStep(JsonResult):
    """What one rollout step did, with the analysis behind it.

    Attributes:
        action: ``start`` (canary at the first step), ``deploy`` (first model, 100% at
            once), ``advance``, ``hold``, ``rollback``, ``promote`` (a person's full
            promotion) or ``noop`` (already in that state).
        version: The version the step is about (the canary, or the deployed version).
        from_percent: The canary's traffic share before the step (0: no canary).
        to_percent: Its share after the step (100: it is the champion; 0: rolled back).
        analysis: The canary analysis the step acted on (None when none was made).
        reasons: Why, in words, with the measured values and thresholds.
        champion: The champion alias after the step.
        previous: The previous alias after the step.
        canary: The canary alias after the step.
        run_id: The run (or manual action) that made the step.
        notified: Whether the notification sent before the change was delivered (None:
            nothing was sent).
        recorded_at: When the step was made (ISO-8601 UTC).
    """

    action: str
    version: str
    from_percent: int
    to_percent: int
    analysis: CanaryAnalysis | None = None
    reasons: list[str] = field(default_factory=list)
    champion: str | None = None
    previous: str | None = None
    canary: str | None = None
    run_id: str = ""
    notified: bool | None = None
    recorded_at: str = field(default_factory=utc_now_iso)

    @property
    def completes(self) -> bool:
        """Whether the version serves all traffic as the champion after this step."""
        return self.action in (ADVANCE, PROMOTE, DEPLOY) and self.to_percent == 100

    def to_markdown(self) -> str:
        """Render the step, the aliases after it and the analysis."""
        lines = [f"### Rollout: **{self.action}** `{self.version}` "
                 f"({self.from_percent}% → {self.to_percent}%)", ""]
        lines += [f"- {r}" for r in self.reasons]
        lines += ["", f"- registry: champion `{self.champion}`, canary `{self.canary}`, "
                      f"previous `{self.previous}`", ""]
        if self.analysis is not None:
            lines.append(self.analysis.to_markdown())
        return "\n".join(lines) + "\n"


@dataclass
class RolloutStatus(JsonResult):
    """The rollout state as a person sees it: aliases, the InferenceService, the last step.

    Attributes:
        model_name: The model.
        champion: The champion alias.
        canary: The canary alias (a canary is in progress when set).
        previous: The previous alias.
        service: Where the InferenceService lives.
        serving: The InferenceService's state (None: it does not exist).
        canary_percent: The canary's traffic share (None: no canary in progress).
        problems: Disagreements between the registry and the InferenceService.
        last_step: The most recent recorded rollout step, if any.
    """

    model_name: str
    champion: str | None
    canary: str | None
    previous: str | None
    service: str
    serving: dict[str, Any] | None
    canary_percent: int | None
    problems: list[str] = field(default_factory=list)
    last_step: RolloutStep | None = None


# --- helpers -----------------------------------------------------------------------------


def _percent(state: ServiceState) -> int:
    """The canary's current share (0 when no canary is in progress)."""
    if not state.canary_in_progress:
        return 0
    return int(state.canary_traffic_percent or 0)


def _finish(registry: Registry, step: RolloutStep) -> RolloutStep:
    aliases = registry.aliases()
    step.champion, step.canary, step.previous = aliases.champion, aliases.canary, aliases.previous
    if step.run_id:
        record_result(registry.store, step.run_id, RECORD, step)
    return step


def recorded_step(registry: Registry, run_id: str) -> RolloutStep | None:
    """The rollout step run ``run_id`` recorded, if any."""
    key = f"runs/{run_id}/{RECORD}.json"
    if not run_id or not registry.store.exists(key):
        return None
    return loads(RolloutStep, registry.store.read_text(key))


def recorded_steps(registry: Registry) -> list[RolloutStep]:
    """Every rollout step the runs recorded, oldest first."""
    steps = [loads(RolloutStep, registry.store.read_text(key))
             for key in registry.store.list("runs")
             if key.endswith(f"/{RECORD}.json") and key.count("/") == 2]
    return sorted(steps, key=lambda s: s.recorded_at)


def holds_in_a_row(registry: Registry, version: str, percent: int,
                   labelled: int | None = None) -> int:
    """How many of the latest recorded steps of ``version`` held it at ``percent``.

    With ``labelled`` (the canary's labelled responses now), only holds since which no
    labelled canary response arrived count: a canary whose labels keep coming is decided
    by its label budget, not by a count of runs.
    """
    steps = [s for s in recorded_steps(registry) if s.version == version]
    count = 0
    for step in reversed(steps):
        if step.action != HOLD or step.to_percent != percent:
            break
        if labelled is not None and step.analysis is not None \
                and step.analysis.canary.labelled < labelled:
            break  # labels arrived since that hold: progress, not a stall
        count += 1
    return count


def _send(notifier: Notifier, event: Event, required: bool) -> bool:
    return notify_or_raise(notifier, event, required=required).ok


# --- start ---------------------------------------------------------------------------------


def start_canary(
    registry: Registry, backend: RolloutBackend, version: str, *, config: CanaryConfig,
    notifier: Notifier, run_id: str, model_name: str, reason: str = "",
    require_notification: bool = False,
) -> RolloutStep:
    """Start serving ``version`` as a canary at the first traffic step.

    Sends a ``model_update`` event first, then makes sure the InferenceService exists
    (serving the champion), sets the canary with ``canaryTrafficPercent = steps[0]`` and
    points the ``canary`` alias at the version. The first model ever (no champion) gets no
    canary: it is deployed at 100% at once and promoted to champion.

    Args:
        registry: The model's registry.
        backend: The InferenceService's rollout backend.
        version: The registered version to roll out.
        config: The rollout steps.
        notifier: Receives the ``model_update`` event.
        run_id: The run; the step is recorded as ``runs/<run-id>/rollout.json``.
        model_name: The model's name (for the event).
        reason: Why (the verdict's reasons), recorded in the alias history.
        require_notification: A failed delivery stops the step before any change.

    Returns:
        The step: ``start``, ``deploy`` (first model) or ``noop`` (already started or
        already the champion).

    Raises:
        ProgressiveError: Another canary is in progress.
        NotificationError: ``require_notification`` and the delivery failed.
    """
    aliases = registry.aliases()
    uri = version_storage_uri(registry, version)
    why = reason or f"rollout of {version} started"
    if aliases.champion == version:
        step = RolloutStep(NOOP, version, 100, 100,
                           reasons=[f"{version} is already the champion"], run_id=run_id)
        return _finish(registry, step)
    if aliases.canary is not None and aliases.canary != version:
        raise ProgressiveError(
            f"model {model_name}: canary {aliases.canary} is in progress; it must finish or "
            f"be rolled back before {version} can start"
        )
    if aliases.champion is None:
        announced = _send(notifier, Event(
            "model_update", f"deploying the first model {version} at 100%", model_name,
            {"version": version, "storage_uri": uri, "service": backend.where,
             "reason": why}, run_id=run_id), require_notification)
        try:
            if backend.ensure(uri).spec_storage_uri != uri:  # it existed, serving another
                try:
                    backend.set_canary(uri, 100)
                except RolloutNotReady:
                    backend.rollback()  # back to what it served
                    raise
        except RolloutNotReady as exc:
            raise ProgressiveError(
                f"model {model_name}: the first model {version} did not take effect on "
                f"{backend.where}: {_why_not(exc)}; nothing was promoted") from exc
        registry.promote(version, reason=f"first model, deployed at 100%: {why}",
                         run_id=run_id)
        step = RolloutStep(DEPLOY, version, 0, 100, reasons=[
            f"no champion yet: {version} is deployed at 100% without a canary and becomes "
            "the champion"], run_id=run_id, notified=announced)
        return _finish(registry, step)

    champion_uri = version_storage_uri(registry, aliases.champion)
    try:
        state: ServiceState | None = backend.get()
    except InferenceServiceNotFound:
        state = None
    first = config.steps[0]
    if aliases.canary == version and state is not None and state.canary_storage_uri == uri:
        step = RolloutStep(NOOP, version, _percent(state), _percent(state), reasons=[
            f"canary {version} is already in progress at {_percent(state)}%"], run_id=run_id)
        return _finish(registry, step)
    notified: bool | None = None
    if state is None or state.canary_storage_uri != uri:  # not announced by an earlier try
        notified = _send(notifier, Event(
            "model_update", f"starting canary {version} at {first}%", model_name,
            {"version": version, "champion": aliases.champion, "storage_uri": uri,
             "percent": first, "steps": list(config.steps), "service": backend.where,
             "reason": why}, run_id=run_id), require_notification)
    backend.ensure(champion_uri)
    try:
        state = backend.set_canary(uri, first)
    except RolloutNotReady as exc:
        return _not_in_effect(registry, backend, version, exc, f"the canary at {first}%",
                              notifier=notifier, run_id=run_id, model_name=model_name,
                              from_percent=0)
    registry.set_alias("canary", version, reason=f"canary at {first}%: {why}", run_id=run_id)
    step = RolloutStep(START, version, 0, _percent(state), reasons=[
        f"canary {version} started at {first}% of the traffic (steps "
        f"{' → '.join(map(str, config.steps))}); champion {aliases.champion} serves the rest"],
        run_id=run_id, notified=notified)
    return _finish(registry, step)


# --- step ----------------------------------------------------------------------------------


def _why_not(exc: RolloutNotReady) -> str:
    """The failing condition's reason and message; all of a timeout's message."""
    return f"{exc.reason}: {exc.detail}" if isinstance(exc, RevisionFailed) else str(exc)


def _not_in_effect(registry: Registry, backend: RolloutBackend, version: str,
                   exc: RolloutNotReady, what: str, *, notifier: Notifier, run_id: str,
                   model_name: str, from_percent: int,
                   analysis: CanaryAnalysis | None = None) -> RolloutStep:
    """A write the cluster did not carry out: roll the canary back, say why."""
    log.warning("%s: %s of %s did not take effect: %s", backend.where, what, version, exc)
    revision = f" (revision {exc.revision})" if exc.revision else ""
    return _rollback(registry, backend, version, reasons=[
        f"{what} of {version} did not take effect{revision}: {_why_not(exc)}",
        f"rolled back: the champion {registry.aliases().champion} serves all traffic"],
        notifier=notifier, run_id=run_id, model_name=model_name, from_percent=from_percent,
        analysis=analysis)


def _rollback(registry: Registry, backend: RolloutBackend, version: str, *, reasons: list[str],
              notifier: Notifier, run_id: str, model_name: str, from_percent: int,
              analysis: CanaryAnalysis | None = None, manual: bool = False) -> RolloutStep:
    """Notify, return all traffic to the champion, clear the canary alias."""
    who = "manual rollback" if manual else "rollback"
    notified = _send(notifier, Event(
        "rollback", f"rolling back canary {version}", model_name,
        {"version": version, "from_percent": from_percent, "reasons": reasons,
         "service": backend.where}, run_id=run_id), False)
    backend.rollback()
    registry.set_alias("canary", None, reason=f"{who} of {version}: " + "; ".join(reasons),
                       run_id=run_id)
    step = RolloutStep(ROLLBACK, version, from_percent, 0, analysis, reasons, run_id=run_id,
                       notified=notified)
    return _finish(registry, step)


def _complete(registry: Registry, backend: RolloutBackend, version: str, *, reasons: list[str],
              notifier: Notifier, run_id: str, model_name: str, from_percent: int,
              action: str, analysis: CanaryAnalysis | None = None) -> RolloutStep:
    """Notify, give the canary 100%, make it the champion."""
    champion = registry.champion()
    notified = _send(notifier, Event(
        "model_update", f"promoting canary {version} to champion (100%)", model_name,
        {"version": version, "old_champion": champion, "from_percent": from_percent,
         "reasons": reasons, "service": backend.where}, run_id=run_id), False)
    try:
        backend.set_traffic(100)
    except RolloutNotReady as exc:
        return _not_in_effect(registry, backend, version, exc, "the promotion to 100%",
                              notifier=notifier, run_id=run_id, model_name=model_name,
                              from_percent=from_percent, analysis=analysis)
    registry.promote(version, reason=f"{action} to 100%: " + "; ".join(reasons), run_id=run_id)
    step = RolloutStep(action, version, from_percent, 100, analysis, reasons, run_id=run_id,
                       notified=notified)
    return _finish(registry, step)


def step_canary(
    registry: Registry, backend: RolloutBackend, records: pd.DataFrame, *,
    config: CanaryConfig, notifier: Notifier, run_id: str, model_name: str,
    now: dt.datetime | None = None, serving: dict[str, ServingStats] | None = None,
) -> RolloutStep | None:
    """Judge the canary in progress on live traffic and act on the decision.

    Args:
        registry: The model's registry (its ``canary`` alias names the version under test).
        backend: The InferenceService's rollout backend.
        records: Logged responses of the lookback with ``model_version``, ``prediction``
            and joined ``label`` (the ingest step's records); the canary is judged on
            those served since it started (:func:`driftloop.decide.canary.since_canary_started`).
        config: Steps and thresholds.
        notifier: Receives ``model_update`` (completion) and ``rollback`` events.
        run_id: The run; the step is recorded as ``runs/<run-id>/rollout.json``. A run
            that already recorded a step for this canary gets that step back unchanged.
        model_name: The model's name (for events).
        now: Time stamp of the analysis.
        serving: Per-version request, error and p95 latency counts from the serving side
            (e.g. Prometheus), passed on to :func:`driftloop.decide.canary.analyse_canary`.

    Returns:
        None when no canary is in progress; else the step taken.
    """
    aliases = registry.aliases()
    earlier = recorded_step(registry, run_id)
    if aliases.canary is None:
        if earlier is not None and earlier.action in (ADVANCE, ROLLBACK):
            return earlier  # this run already finished the canary
        return None
    version = aliases.canary
    if earlier is not None and earlier.version == version and earlier.action in (
            ADVANCE, HOLD):
        return earlier  # this run already stepped this canary
    uri = version_storage_uri(registry, version)
    state = backend.get()
    if state.canary_storage_uri != uri:
        if state.spec_storage_uri == uri and not state.canary_in_progress:
            # The service already gives it 100% (an interrupted completion): catch up.
            return _complete(registry, backend, version, reasons=[
                f"{backend.where} already serves {version} at 100%: the registry catches up"],
                notifier=notifier, run_id=run_id, model_name=model_name, from_percent=100,
                action=ADVANCE)
        # The service no longer serves the canary (an interrupted or outside rollback).
        registry.set_alias("canary", None, reason=(
            f"{backend.where} does not serve canary {version} (serves {state.storage_uri})"),
            run_id=run_id)
        return _finish(registry, RolloutStep(ROLLBACK, version, 0, 0, reasons=[
            f"{backend.where} serves {state.storage_uri}, not canary {version}: the canary "
            "alias is cleared"], run_id=run_id))
    if aliases.champion is None:
        raise ProgressiveError(f"model {model_name}: canary {version} but no champion")
    current = _percent(state)
    analysis = analyse_canary(since_canary_started(records, version),
                              champion_version=aliases.champion,
                              canary_version=version, current_percent=current, config=config,
                              now=now, serving=serving)
    if analysis.decision == ROLLBACK:
        return _rollback(registry, backend, version, reasons=analysis.reasons,
                         notifier=notifier, run_id=run_id, model_name=model_name,
                         from_percent=current, analysis=analysis)
    if analysis.decision == HOLD:
        held = holds_in_a_row(registry, version, current, analysis.canary.labelled)
        if held >= config.max_holds:
            reasons = [*analysis.reasons,
                       f"held {held} runs in a row at {current}% without a new labelled "
                       f"canary response (canary.max_holds {config.max_holds}): rolled "
                       "back, the champion serves and retraining may resume"]
            return _rollback(registry, backend, version, reasons=reasons, notifier=notifier,
                             run_id=run_id, model_name=model_name, from_percent=current,
                             analysis=analysis)
        return _finish(registry, RolloutStep(HOLD, version, current, current, analysis,
                                             analysis.reasons, run_id=run_id))
    if analysis.completes:
        return _complete(registry, backend, version, reasons=analysis.reasons,
                         notifier=notifier, run_id=run_id, model_name=model_name,
                         from_percent=current, action=ADVANCE, analysis=analysis)
    try:
        backend.set_traffic(analysis.next_percent)
    except RolloutNotReady as exc:
        return _not_in_effect(registry, backend, version, exc,
                              f"the step to {analysis.next_percent}%", notifier=notifier,
                              run_id=run_id, model_name=model_name, from_percent=current,
                              analysis=analysis)
    return _finish(registry, RolloutStep(
        ADVANCE, version, current, analysis.next_percent, analysis,
        [*analysis.reasons, f"canary {version}: {current}% → {analysis.next_percent}%"],
        run_id=run_id))


# --- a person's overrides --------------------------------------------------------------------


def manual_promote(
    registry: Registry, backend: RolloutBackend, version: str, *, config: CanaryConfig,
    notifier: Notifier, run_id: str, model_name: str, full: bool = False,
    reason: str = "manual promotion",
) -> RolloutStep:
    """A person promotes ``version``: start its canary, or with ``full`` go to 100% now.

    Args:
        registry: The model's registry.
        backend: The InferenceService's rollout backend.
        version: The registered version.
        config: The rollout steps (for the first step of a canary).
        notifier: Receives the ``model_update`` event (sent before any change).
        run_id: Recorded as the step's run id (``runs/<run-id>/rollout.json``).
        model_name: The model's name.
        full: Skip the remaining steps: 100% and champion at once.
        reason: Recorded in the alias history.

    Raises:
        ProgressiveError: Another version's canary is in progress.
    """
    aliases = registry.aliases()
    if not full or aliases.champion is None:
        return start_canary(registry, backend, version, config=config, notifier=notifier,
                            run_id=run_id, model_name=model_name, reason=reason)
    if aliases.canary is not None and aliases.canary != version:
        raise ProgressiveError(
            f"model {model_name}: canary {aliases.canary} is in progress; roll it back "
            f"before promoting {version}"
        )
    uri = version_storage_uri(registry, version)
    state = backend.ensure(version_storage_uri(registry, aliases.champion))
    if aliases.champion == version and state.spec_storage_uri == uri \
            and not state.canary_in_progress:
        return _finish(registry, RolloutStep(NOOP, version, 100, 100, reasons=[
            f"{version} is already the champion at 100%"], run_id=run_id))
    if state.canary_storage_uri != uri:  # no canary of it yet: make it one at 100% at once
        try:
            state = backend.set_canary(uri, 100) if state.spec_storage_uri != uri else state
        except RolloutNotReady as exc:
            return _not_in_effect(registry, backend, version, exc, "the promotion to 100%",
                                  notifier=notifier, run_id=run_id, model_name=model_name,
                                  from_percent=0)
        current = 0
    else:
        current = _percent(state)
    return _complete(registry, backend, version, reasons=[f"{reason}: straight to 100%"],
                     notifier=notifier, run_id=run_id, model_name=model_name,
                     from_percent=current, action=PROMOTE)


def manual_rollback(
    registry: Registry, backend: RolloutBackend, *, notifier: Notifier, run_id: str,
    model_name: str, reason: str = "manual rollback",
) -> RolloutStep:
    """A person rolls back: the canary in progress, or else the champion to ``previous``.

    Raises:
        ProgressiveError: No canary is in progress and there is no previous version.
    """
    aliases = registry.aliases()
    if aliases.canary is not None:
        try:
            current = _percent(backend.get())
        except InferenceServiceNotFound:
            current = 0
        return _rollback(registry, backend, aliases.canary, reasons=[reason],
                         notifier=notifier, run_id=run_id, model_name=model_name,
                         from_percent=current, manual=True)
    if aliases.previous is None or aliases.champion is None:
        raise ProgressiveError(
            f"model {model_name}: nothing to roll back (no canary in progress and no "
            "previous version)"
        )
    target = aliases.previous
    target_uri = version_storage_uri(registry, target)
    notified = _send(notifier, Event(
        "rollback", f"rolling back champion {aliases.champion} to {target}", model_name,
        {"from_version": aliases.champion, "to_version": target, "reason": reason,
         "service": backend.where}, run_id=run_id), False)
    state = backend.ensure(target_uri)
    if state.spec_storage_uri != target_uri or state.canary_in_progress:
        if state.previous_storage_uri == target_uri:
            backend.rollback()
        else:
            backend.set_canary(target_uri, 100)
    registry.promote(target, reason=f"{reason}: champion {aliases.champion} → {target}",
                     run_id=run_id)
    return _finish(registry, RolloutStep(ROLLBACK, target, 0, 100, reasons=[
        f"{reason}: {target} serves 100% again and is the champion; {aliases.champion} is "
        "previous"], run_id=run_id, notified=notified))


# --- status -------------------------------------------------------------------------------


def last_step(registry: Registry) -> RolloutStep | None:
    """The most recently recorded rollout step of any run."""
    steps = recorded_steps(registry)
    # the first of the latest: steps recorded within one time stamp keep their key order
    return max(steps, key=lambda s: s.recorded_at) if steps else None


def rollout_status(registry: Registry, backend: RolloutBackend) -> RolloutStatus:
    """The aliases, the InferenceService's state and the last step, with any disagreement."""
    aliases = registry.aliases()
    problems: list[str] = []
    try:
        state: ServiceState | None = backend.get()
    except InferenceServiceNotFound:
        state = None
    if state is None:
        if aliases.champion is not None:
            problems.append(f"{backend.where} does not exist")
    else:
        if aliases.canary is not None and state.canary_storage_uri != version_storage_uri(
                registry, aliases.canary):
            problems.append(f"canary alias {aliases.canary} but {backend.where} serves "
                            f"{state.canary_storage_uri or 'no canary'}")
        if aliases.canary is None and state.canary_in_progress:
            problems.append(f"{backend.where} has a canary ({state.canary_storage_uri}) the "
                            "registry does not know")
        if aliases.champion is not None and state.storage_uri != version_storage_uri(
                registry, aliases.champion):
            problems.append(f"champion {aliases.champion} but {backend.where} serves "
                            f"{state.storage_uri} as its stable model")
    return RolloutStatus(
        model_name=registry.model_name, champion=aliases.champion, canary=aliases.canary,
        previous=aliases.previous, service=backend.where,
        serving=None if state is None else state.to_dict(),
        canary_percent=None if state is None or not state.canary_in_progress
        else _percent(state),
        problems=problems, last_step=last_step(registry),
    )
