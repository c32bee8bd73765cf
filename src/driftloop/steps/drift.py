"""The drift step: the current window against the champion's stored reference profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from driftloop.config import Config
from driftloop.data.runs import record_result
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.decide.drift import (
    DriftReport,
    detect_drift,
)
from driftloop.models.registry import Registry
from driftloop.serde import dumps
from driftloop.steps.champion import Champion, load_champion
from driftloop.steps.common import (
    finite_metrics,
    logged_step,
    metric_name,
    open_inputs,
    pipeline_config,
    read_frame,
    run_key,
)


def run_drift(
    champion: Champion | None, current: pd.DataFrame, schema: Schema, config: Config
) -> DriftReport | None:
    """Compare the current window with the champion's reference (``None``: no champion)."""
    if champion is None:
        return None
    return detect_drift(champion.profile, current, schema, config.drift, model=champion.model)


@dataclass
class DriftOutcome:
    """The drift report of the run, or ``None`` when no champion serves yet."""

    report: DriftReport | None

    @property
    def status(self) -> str:
        """``drift``, ``no_drift``, ``insufficient_data`` or ``skipped``."""
        return "skipped" if self.report is None else self.report.status

    @property
    def drifted(self) -> bool:
        """Whether drift was detected."""
        return bool(self.report is not None and self.report.drifted)

    def to_json(self) -> str:
        """The report as JSON (``null`` when skipped)."""
        return dumps(self.report)

    def to_markdown(self) -> str:
        """The report as Markdown."""
        if self.report is None:
            return "### Drift: **skipped**\n\nNo champion serves yet: nothing to compare with.\n"
        return self.report.to_markdown()

    def metrics(self) -> dict[str, float]:
        """Drift scores for the KFP Metrics artifact (max and per-feature PSI, p, effect)."""
        r = self.report
        if r is None:
            return {}
        values: dict[str, Any] = {
            "drifted": float(r.drifted), "drifted_features": len(r.drifted_features),
            "n_current": r.n_current, "n_reference": r.n_reference,
            "max_psi": r.max_psi, "max_js": r.max_js,
        }
        values["significant_features"] = len(r.significant_features)
        for f in r.features:
            values[f"psi_{metric_name(f.name)}"] = f.psi
            values[f"pvalue_{metric_name(f.name)}"] = f.p_value
            values[f"effect_{metric_name(f.name)}"] = f.effect
        return finite_metrics(values)


@logged_step("detect_drift")
def drift_step(
    store: Store | str, schema: Schema | str, model_name: str, current_path: str | Path, *,
    run_id: str, p_value: float | None = None, min_samples: int | None = None,
    effect_threshold: float | None = None, config: Config | None = None,
) -> DriftOutcome:
    """Compare the current window with the champion's stored reference profile.

    Records ``runs/<run-id>/drift.json`` and ``drift.md`` (not when skipped).

    Args:
        store: The store, or its root URI.
        schema: The schema, or its file's URI.
        model_name: Model name in the registry.
        current_path: Parquet file of the current window (from :func:`ingest_step`).
        run_id: The run's id (made path-safe by :func:`run_key`).
        p_value: Significance level of the per-feature tests, before correction.
        min_samples: Current rows needed for a drift decision.
        effect_threshold: Effect size a significant feature needs to count as drifted.
        config: Every threshold (default: :class:`Config`); the knobs above override it.
    """
    run_id = run_key(run_id)
    store, schema = open_inputs(store, schema)
    config = pipeline_config(config, p_value=p_value, min_samples=min_samples,
                             effect_threshold=effect_threshold)
    champion = load_champion(Registry(store, model_name))
    report = run_drift(champion, read_frame(current_path), schema, config)
    if report is not None:
        record_result(store, run_id, "drift", report)
    return DriftOutcome(report)
