"""The A/B step: judge the running tests on live traffic; stop them, name and act on a winner.

State: each test is ``ab/<model_name>/<test_id>.json`` in the store
(:func:`driftloop.decide.ab_assign.state_key`); each run's decisions are
``runs/<run-id>/ab.json`` (and ``.md``). :func:`start_ab`, :func:`ab_status` and
:func:`stop_ab` are ``driftloop ab start|status|stop``; :func:`ab_step` is what the
``analyse_ab`` component and the in-process loop call.

The request path is the rollout backend's: a backend with ``start_ab(test)`` /
``stop_ab(test)`` (the local gateway's sticky split, the cluster's routing objects) is
configured on start and stop; without one the test is only recorded (an external router
must then apply it) and the outcome says so.

A winner is promoted through the normal rollout (:func:`driftloop.rollout.progressive.
manual_promote`: a ``model_update`` notification, then a canary at the first step) when
``ABConfig.auto_promote``; otherwise an ``info`` notification asks for approval, with the
command to run.
"""

from __future__ import annotations

import datetime as dt
import inspect
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from driftloop.clock import logical_time
from driftloop.config import Config
from driftloop.data.runs import record_result
from driftloop.data.storage import Store
from driftloop.decide.ab import ABAnalysis, analyse_ab
from driftloop.decide.ab_assign import ABTest, Variant, state_key
from driftloop.errors import DriftloopError
from driftloop.models.registry import Registry
from driftloop.notify import Event, Notifier, make_notifier
from driftloop.serde import JsonResult, loads
from driftloop.steps.common import (
    as_store,
    backend_for,
    finite_metrics,
    logged_step,
    notifier_config,
    read_frame,
    recorded,
    run_key,
)

ALIASES = ("champion", "canary", "previous")


@dataclass
class ABOutcome(JsonResult):
    """The A/B step of a run (``runs/<run-id>/ab.json``).

    Attributes:
        analyses: One analysis per test that was running.
        stopped: Tests this run stopped (a winner, futility or the max duration).
        promoted: Versions whose rollout this run started (auto-promotion).
        approval: Versions reported for approval.
        notes: What else happened (no backend to reconfigure, a winner already champion).
    """

    analyses: list[ABAnalysis] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)
    approval: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """Every analysis, then what was done."""
        if not self.analyses:
            return "### A/B tests: none running\n\nNothing to analyse.\n"
        parts = [a.to_markdown() for a in self.analyses]
        done = [f"- stopped: {', '.join(self.stopped) or '-'}",
                f"- promoted: {', '.join(self.promoted) or '-'}",
                f"- for approval: {', '.join(self.approval) or '-'}"]
        return "\n".join(parts + done + [f"- {n}" for n in self.notes]) + "\n"

    def metrics(self) -> dict[str, float]:
        """Per test and variant: labelled responses, accuracy, the difference and interval."""
        values: dict[str, Any] = {}
        for a in self.analyses:
            for s in a.variants:
                values[f"{a.test_id}_{s.name}_labelled"] = s.labelled
                values[f"{a.test_id}_{s.name}_accuracy"] = s.accuracy
            for c in a.comparisons:
                values |= {f"{a.test_id}_{c.variant}_diff": c.diff,
                           f"{a.test_id}_{c.variant}_ci_low": c.ci_low,
                           f"{a.test_id}_{c.variant}_ci_high": c.ci_high}
        return finite_metrics(values)


def read_test(store: Store, model_name: str, test_id: str) -> ABTest:
    """The stored test (one-line error when there is none or it is not valid)."""
    key = state_key(model_name, test_id)
    if not store.exists(key):
        raise DriftloopError(f"{store.url(key)}: no A/B test {test_id!r} for model {model_name}")
    try:
        return loads(ABTest, store.read_text(key))
    except (ValueError, TypeError, KeyError) as exc:
        raise DriftloopError(f"{store.url(key)}: not a valid A/B test ({exc})") from None


def list_tests(store: Store, model_name: str) -> list[ABTest]:
    """Every stored test of the model, oldest start first."""
    keys = [k for k in store.list(f"ab/{model_name}") if k.endswith(".json")
            and k.count("/") == 2]
    tests = [read_test(store, model_name, Path(k).stem) for k in keys]
    return sorted(tests, key=lambda t: (t.started_at, t.test_id))


def _write(store: Store, test: ABTest) -> None:
    store.write_text(state_key(test.model_name, test.test_id), test.to_json() + "\n")


def _resolve(registry: Registry, target: str) -> str | None:
    """The version a target serves now: an alias's version, else the version itself."""
    if target in ALIASES:
        return getattr(registry.aliases(), target)
    return target


def _configure(backend: Any, method: str, test: ABTest, **extra: Any) -> str:
    """Call ``backend.start_ab`` / ``stop_ab`` when the backend has it; say what happened.

    ``extra`` keyword arguments are passed only when the method takes them (the local
    backend's ``start_ab`` takes ``storage_uris``: each pinned variant's version folder).
    """
    call = getattr(backend, method, None) if backend is not None else None
    if call is None:
        return (f"{method}: no rollout backend with A/B support was given; the test is "
                "recorded only (the request path must apply it)")
    params = inspect.signature(call).parameters
    call(test, **{k: v for k, v in extra.items() if k in params})
    return f"{method}: the rollout backend was configured"


def start_ab(store: Store | str, model_name: str, variants: list[Variant], *,
             test_id: str = "", key_field: str = "user_id", key_header: str = "x-user-id",
             salt: str = "", now: dt.datetime | None = None,
             backend: Any = None) -> tuple[ABTest, str]:
    """Record a new running test and configure the request path.

    Args:
        store: The store, or its root URI.
        model_name: The registry model.
        variants: The arms (first = control); targets must be registered versions or
            aliases that point somewhere.
        test_id: Its id (default: ``ab-<UTC time>``).
        key_field: Request field holding the key.
        key_header: HTTP header holding the key (checked first).
        salt: Hash salt (default: the test id).
        now: Start time (default: now, UTC).
        backend: A rollout backend (its ``start_ab`` is called when it has one).

    Returns:
        The test and what was done with the backend.

    Raises:
        DriftloopError: A test of the model is running, the id is taken, or a target is
            unknown.
    """
    store = as_store(store)
    now = now or dt.datetime.now(dt.UTC)
    test_id = test_id or f"ab-{now:%Y%m%d-%H%M%S}"
    running = [t.test_id for t in list_tests(store, model_name) if t.state == "running"]
    if running:
        raise DriftloopError(f"model {model_name}: A/B test {running[0]} is running; stop it "
                             "first (one split per model)")
    if store.exists(state_key(model_name, test_id)):
        raise DriftloopError(f"ab test {test_id!r}: already exists for model {model_name}")
    registry = Registry(store, model_name)
    known = set(registry.versions())
    for v in variants:
        version = _resolve(registry, v.target)
        if version is None or version not in known:
            raise DriftloopError(f"ab.variants[{v.name}].target: {v.target!r} is not a "
                                 f"registered version or a set alias of model {model_name}")
    test = ABTest(test_id, model_name, tuple(variants), key_field=key_field,
                  key_header=key_header, salt=salt, started_at=now.isoformat())
    from driftloop.rollout.base import version_storage_uri

    # a pinned variant is served from its version folder; "champion" follows the service
    pinned = {v.name: version_storage_uri(registry, str(_resolve(registry, v.target)))
              for v in variants if v.target != "champion"}
    # the request path first: a backend that refuses leaves no running test behind
    note = _configure(backend, "start_ab", test, storage_uris=pinned)
    _write(store, test)
    return test, note


def stop_ab(store: Store | str, model_name: str, test_id: str, *, state: str = "stopped",
            backend: Any = None) -> tuple[ABTest, str]:
    """Mark a test ``stopped`` (or ``decided``) and remove its split from the request path.

    Stopping a stopped test changes nothing (the backend is still told, so a split left
    behind by a failed earlier stop is removed).
    """
    store = as_store(store)
    test = read_test(store, model_name, test_id)
    if test.state == "running":
        test = replace(test, state=state)
        _write(store, test)
    return test, _configure(backend, "stop_ab", test)


def ab_status(store: Store | str, model_name: str) -> list[dict[str, Any]]:
    """Every test of the model with its state and its latest recorded decision."""
    return [{"test": h.test, "latest": h.decisions[-1][1] if h.decisions else None,
             "analyses": len(h.decisions)} for h in ab_history(store, model_name)]


@dataclass
class ABHistory:
    """One test with every decision recorded about it, oldest first (for reports)."""

    test: ABTest
    decisions: list[tuple[str, ABAnalysis]] = field(default_factory=list)


def ab_history(store: Store | str, model_name: str) -> list[ABHistory]:
    """Every test of the model and each run's analysis of it (``(run_id, analysis)``)."""
    store = as_store(store)
    found = {t.test_id: ABHistory(t) for t in list_tests(store, model_name)}
    for key in sorted(store.list("runs")):
        if key.endswith("/ab.json") and key.count("/") == 2:
            run_id = key.split("/")[1]
            for a in loads(ABOutcome, store.read_text(key)).analyses:
                if a.model_name == model_name and a.test_id in found:
                    found[a.test_id].decisions.append((run_id, a))
    for h in found.values():
        h.decisions.sort(key=lambda d: d[1].analysed_at)
    return list(found.values())


def _act(store: Store, test: ABTest, analysis: ABAnalysis, *, backend: Any,
         notifier: Notifier, run_id: str, config: Config, outcome: ABOutcome) -> None:
    """Stop a decided test, then promote its winner or ask for approval."""
    done, note = stop_ab(store, test.model_name, test.test_id,
                         state="decided" if analysis.winner else "stopped", backend=backend)
    outcome.stopped.append(done.test_id)
    outcome.notes.append(f"{test.test_id}: {note}")
    registry = Registry(store, test.model_name)
    details = {"test_id": test.test_id, "decision": analysis.decision,
               "winner": analysis.winner, "reasons": analysis.reasons}
    if analysis.winner is None:
        notifier.send(Event("info", f"A/B test {test.test_id} stopped without a winner",
                            test.model_name, details, run_id=run_id))
        return
    version = _resolve(registry, analysis.winner_target or "")
    if version is None or version == registry.aliases().champion:
        notifier.send(Event("info", f"A/B test {test.test_id}: {analysis.winner} wins; it "
                            "is the champion already", test.model_name, details,
                            run_id=run_id))
        outcome.notes.append(f"{test.test_id}: winner {analysis.winner} ({version}) is the "
                             "champion: nothing to promote")
        return
    reason = f"A/B test {test.test_id}: " + "; ".join(analysis.reasons)
    if analysis.action != "promote":
        notifier.send(Event("info", f"A/B test {test.test_id}: {version} wins, needs approval",
                            test.model_name, details | {"version": version, "next_steps": [
                                f"driftloop promote --store <store> --model {test.model_name} "
                                f"{version}"]}, run_id=run_id))
        outcome.approval.append(version)
        return
    if backend is not None:
        from driftloop.rollout.progressive import manual_promote

        manual_promote(registry, backend, version, config=config.canary, notifier=notifier,
                       run_id=run_id, model_name=test.model_name, reason=reason)
    else:
        notifier.send(Event("model_update", f"promoting {version} to champion (A/B winner)",
                            test.model_name, details | {"version": version}, run_id=run_id))
        registry.promote(version, reason=reason, run_id=run_id)
    outcome.promoted.append(version)


@logged_step("analyse_ab")
def ab_step(
    store: Store | str, model_name: str, records_path: str | Path, *, run_id: str, now: str,
    isvc_name: str = "", namespace: str = "", rollout_backend: str = "local",
    rollout_state: str = "", webhook: str = "", auto_promote: bool | None = None,
    backend: Any = None, notifier: Notifier | None = None, config: Config | None = None,
) -> ABOutcome:
    """Analyse every running test of the model; stop the decided ones and act on winners.

    Records ``runs/<run-id>/ab.json``; a re-run of the same run returns that record and
    changes nothing.

    Args:
        store: The store, or its root URI.
        model_name: Model name in the registry.
        records_path: Parquet file of the lookback's records (logged responses, labels
            joined, the ``ab_variant``/``ab_keyed`` columns).
        run_id: The run's id.
        now: The run's logical time (ISO-8601).
        isvc_name: The InferenceService (``""``: no backend is reconfigured on a stop,
            promotion in the registry only).
        namespace: Its namespace.
        rollout_backend: ``local``, ``kubernetes`` or ``none``.
        rollout_state: The local backend's state folder.
        webhook: URL for the notifications (``""``: log).
        auto_promote: Overrides ``ABConfig.auto_promote``.
        backend: An open rollout backend (wins over the four backend arguments).
        notifier: Receives the events instead of ``webhook``.
        config: Thresholds (default: :class:`Config`).
    """
    run_id = run_key(run_id)
    store = as_store(store)
    earlier = recorded(store, run_id, "ab", ABOutcome)
    if earlier is not None:
        return earlier
    config = config or Config()
    if auto_promote is not None:
        config = replace(config, ab=replace(config.ab, auto_promote=auto_promote))
    outcome = ABOutcome()
    running = [t for t in list_tests(store, model_name) if t.state == "running"]
    if not running:
        record_result(store, run_id, "ab", outcome)
        return outcome
    records = read_frame(records_path)
    owned = None
    if backend is None:
        backend = owned = backend_for(store, isvc_name, namespace, rollout_backend,
                                      rollout_state)
    notifier = notifier or make_notifier(notifier_config(webhook))
    try:
        for test in running:
            analysis = analyse_ab(records, test, config=config.ab, now=logical_time(now))
            outcome.analyses.append(analysis)
            if analysis.stop:
                _act(store, test, analysis, backend=backend, notifier=notifier,
                     run_id=run_id, config=config, outcome=outcome)
    finally:
        if owned is not None:
            owned.close()
    record_result(store, run_id, "ab", outcome)
    return outcome
