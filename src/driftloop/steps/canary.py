"""The canary step: judge the canary in flight on live traffic; advance, hold or roll back.

The rule is :func:`driftloop.decide.canary.analyse_canary`, acted on by
:func:`driftloop.rollout.progressive.step_canary`; :func:`analyse_canary_step` is the
step the ``analyse_canary`` component and the in-process loop call.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop.clock import logical_time
from driftloop.config import Config
from driftloop.data.storage import Store
from driftloop.models.registry import Registry
from driftloop.notify import Notifier, make_notifier
from driftloop.rollout import progressive
from driftloop.rollout.base import RolloutBackend
from driftloop.rollout.progressive import RolloutStep
from driftloop.steps.common import (
    as_store,
    backend_for,
    finite_metrics,
    logged_step,
    notifier_config,
    read_frame,
    run_key,
)


@dataclass
class CanaryOutcome:
    """The canary step of a run.

    Attributes:
        in_progress: The version whose canary was in flight when the run started and is
            still in flight or just completed (``""``: none, or rolled back by this run);
            the retrain decision waits while it is set.
        step: What was done with it (None: no canary, or no rollout backend).
    """

    in_progress: str
    step: RolloutStep | None

    def to_markdown(self) -> str:
        """The step, or a line saying there was nothing to analyse."""
        if self.step is not None:
            return self.step.to_markdown()
        if self.in_progress:
            return (f"### Canary: `{self.in_progress}` in progress\n\nNo rollout backend "
                    "was given: not analysed.\n")
        return "### Canary: none in progress\n\nNothing to analyse.\n"

    def metrics(self) -> dict[str, float]:
        """Traffic shares and the live numbers of both versions."""
        if self.step is None:
            return {}
        values: dict[str, Any] = {"from_percent": self.step.from_percent,
                                  "to_percent": self.step.to_percent}
        a = self.step.analysis
        if a is not None:
            for role, stats in (("champion", a.champion), ("canary", a.canary)):
                values |= {f"{role}_requests": stats.requests, f"{role}_labelled": stats.labelled,
                           f"{role}_accuracy": stats.accuracy}
            values |= {"accuracy_diff": a.diff, "ci_low": a.ci_low, "ci_high": a.ci_high}
        return finite_metrics(values)


def _serving_stats(url: str, model_name: str, records: pd.DataFrame, canary: str,
                   now: dt.datetime) -> dict[str, Any]:
    """Each version's serving counts from Prometheus since the canary's first response."""
    from driftloop.serving.prometheus import serving_stats

    served = (pd.to_datetime(records.loc[records["model_version"].astype(str) == canary,
                                         "timestamp"], utc=True)
              if len(records) and "model_version" in records else pd.Series([], dtype=object))
    since = served.min().to_pydatetime() if len(served) else now - dt.timedelta(days=1)
    return dict(serving_stats(url, model_name, since=since, until=now))


@logged_step("analyse_canary")
def analyse_canary_step(
    store: Store | str, model_name: str, records_path: str | Path, *, run_id: str, now: str,
    isvc_name: str = "", namespace: str = "", rollout_backend: str = "local",
    rollout_state: str = "", webhook: str = "", min_labelled: int | None = None,
    max_holds: int | None = None, prometheus_url: str = "",
    backend: RolloutBackend | None = None, notifier: Notifier | None = None,
    config: Config | None = None,
) -> CanaryOutcome:
    """Judge the canary in progress on live traffic and advance, hold or roll it back.

    Calls :func:`driftloop.rollout.progressive.step_canary`; records
    ``runs/<run-id>/rollout.json`` and ``.md`` when a canary was stepped. A re-run of the
    same run returns its recorded step and changes nothing.

    Args:
        store: The store, or its root URI.
        model_name: Model name in the registry.
        records_path: Parquet file of the lookback's records (logged responses, labels
            joined); the canary is judged on those served since it started.
        run_id: The run's id (made path-safe by :func:`run_key`).
        now: The run's logical time (ISO-8601, from :func:`ingest_step`).
        isvc_name: The InferenceService (``""``: registry only, nothing is analysed).
        namespace: Its namespace.
        rollout_backend: ``local``, ``kubernetes`` or ``none`` (registry only).
        rollout_state: The local backend's state folder (``""``: ``<store>/rollout``).
        webhook: ``http(s)://`` URL for the rollback / promotion events (``""``: log).
        min_labelled: Labelled responses each version needs (default: CanaryConfig's).
        max_holds: Holds in a row without a new labelled canary response before a
            rollback (default: CanaryConfig's).
        prometheus_url: Prometheus' base URL: each version's requests, 5xx errors and
            p95 latency since the canary started come from its serving metrics
            (:mod:`driftloop.serving.prometheus`); ``""``: from the logged records only.
        backend: An open rollout backend (an in-process caller's, left open); wins over
            ``isvc_name``, ``namespace``, ``rollout_backend`` and ``rollout_state``.
        notifier: Receives the rollback / promotion events instead of ``webhook``.
        config: The canary rule's thresholds (default: :class:`Config`); the two knobs
            above override it.
    """
    run_id = run_key(run_id)
    store = as_store(store)
    registry = Registry(store, model_name)
    canary = registry.aliases().canary
    if canary is None:
        earlier = progressive.recorded_step(registry, run_id)
        if earlier is not None and earlier.action in ("advance", "hold", "rollback"):
            # a re-run of this run
            return CanaryOutcome("" if earlier.action == "rollback" else earlier.version,
                                 earlier)
        return CanaryOutcome("", None)
    owned = None
    if backend is None:
        backend = owned = backend_for(store, isvc_name, namespace, rollout_backend,
                                      rollout_state)
    if backend is None:
        return CanaryOutcome(canary, None)
    canary_config = (config or Config()).canary
    if min_labelled is not None:
        canary_config = replace(canary_config, min_labelled=min_labelled)
    if max_holds is not None:
        canary_config = replace(canary_config, max_holds=max_holds)
    records = read_frame(records_path)
    serving = (_serving_stats(prometheus_url, model_name, records, canary, logical_time(now))
               if prometheus_url else None)
    try:
        step = progressive.step_canary(
            registry, backend, records, config=canary_config,
            notifier=notifier or make_notifier(notifier_config(webhook)), run_id=run_id,
            model_name=model_name, now=logical_time(now), serving=serving)
    finally:
        if owned is not None:
            owned.close()
    if step is not None and step.action == progressive.ROLLBACK:
        return CanaryOutcome("", step)  # nothing in flight: the rules may retrain now
    return CanaryOutcome(canary, step)
