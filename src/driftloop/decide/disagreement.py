"""Disagreements: labelled responses whose user label differs from the prediction.

:func:`disagreement_table` keeps them per run (with the model's confidence) and
:func:`disagreement_counts` counts them per class and per slice. :func:`disagreement_rule`
is the trigger's ``disagreement`` rule: a rise of the champion's disagreement rate in the
recent ``disagree_window_days`` over its own earlier live rate.

The rule, and the error it controls:

* Compared **at the same class mix**: the strata are the predicted classes, and the rise
  is the Mantel-Haenszel weighted mean of the per-class rises (weights
  ``n_before * n_recent / (n_before + n_recent)``, :func:`driftloop.decide.sequential.
  stratified_difference`): traffic that moves to a class the model is often wrong on
  (a different class mix) is not by itself a rise; a model getting worse within the
  classes is.
* Compared **live with live**: the baseline is the champion's disagreement rate on the
  labelled rows it served after its cutoff and before the recent window, not its
  validation split (feedback comes from users, not a held-out sample, and its rate differs
  from a validation error; a small validation split would also limit the test).
* **Repeated looks**: every run looks again on more data, so the interval is the project's
  anytime-valid confidence sequence (:func:`driftloop.decide.sequential.confidence_sequence`,
  two-sided at ``disagree_alpha``, tuned to detect a rise of ``disagree_rise``), not a
  fixed-sample interval. The rule fires when the sequence's lower bound is above 0 **and**
  the measured rise is at least ``disagree_rise`` (significance alone is not an effect).
  The recent window slides, so the guarantee is checked by simulation:
  ``benchmarks/active_learning.py`` measures P(the rule ever fires over 30 daily runs of
  a champion | nothing changed) and its power for a rise.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from driftloop.config import CurationConfig
from driftloop.decide.sequential import (
    confidence_sequence,
    planned_information,
    stratified_difference,
)
from driftloop.decide.trigger import TriggerRule
from driftloop.serde import JsonResult

RULE = "disagreement"
#: Power the confidence sequence is planned for (a rise of ``disagree_rise``).
PLANNED_POWER = 0.8


@dataclass(frozen=True)
class DisagreementTest:
    """The disagreement rule's measurement: rates, the stratified rise and its interval."""

    rate_before: float
    rate_recent: float
    n_before: int
    n_recent: int
    rise: float
    low: float
    high: float
    strata: int


def disagreement_test(pred: np.ndarray, wrong: np.ndarray, recent: np.ndarray,
                      config: CurationConfig) -> DisagreementTest:
    """The rise of the disagreement rate in ``recent`` rows over the others, per class.

    Args:
        pred: The predicted class of each labelled row.
        wrong: Whether its label differs from the prediction.
        recent: Whether it was served in the recent window.
        config: ``disagree_alpha`` and ``disagree_rise`` (the sequence's plan).
    """
    pred, wrong, recent = np.asarray(pred).astype(str), np.asarray(wrong, bool), \
        np.asarray(recent, bool)
    classes = np.unique(pred)
    x1 = [int((wrong & ~recent & (pred == c)).sum()) for c in classes]
    n1 = [int((~recent & (pred == c)).sum()) for c in classes]
    x2 = [int((wrong & recent & (pred == c)).sum()) for c in classes]
    n2 = [int((recent & (pred == c)).sum()) for c in classes]
    return disagreement_from_counts(x1, n1, x2, n2, config)


def disagreement_from_counts(x1: Sequence[int], n1: Sequence[int], x2: Sequence[int],
                             n2: Sequence[int], config: CurationConfig) -> DisagreementTest:
    """:func:`disagreement_test` from per-class counts.

    Before the window ``x1`` disagreements of ``n1`` rows per class, in it ``x2`` of
    ``n2`` (the form the benchmark simulates).
    """
    est = stratified_difference(x1, n1, x2, n2)
    planned = planned_information(config.disagree_rise, config.disagree_alpha, PLANNED_POWER)
    low, high = confidence_sequence(est, config.disagree_alpha, planned)
    nb, nr = int(np.sum(n1)), int(np.sum(n2))
    return DisagreementTest(
        float(np.sum(x1)) / nb if nb else math.nan,
        float(np.sum(x2)) / nr if nr else math.nan, nb, nr, est.diff, low, high,
        est.strata)


def disagreement_rule(pred: np.ndarray, wrong: np.ndarray, served: pd.Series,
                      *, now: dt.datetime, config: CurationConfig) -> TriggerRule:
    """The trigger's ``disagreement`` rule (see the module for the method and its error).

    Args:
        pred: The champion's predicted class of each labelled row it served after its
            training cutoff.
        wrong: Whether the row's label differs from that prediction.
        served: When each row was served (UTC).
        now: The run's logical time.
        config: The thresholds.
    """
    start = pd.Timestamp(now) - pd.Timedelta(days=config.disagree_window_days)
    recent = (pd.to_datetime(served, utc=True) >= start).to_numpy()
    need = config.disagree_min_rows
    nb, nr = int((~recent).sum()), int(recent.sum())
    window = f"the last {config.disagree_window_days:g} days"
    if nb < need or nr < need:
        return TriggerRule(RULE, False, float(min(nb, nr)), float(need), (
            f"{nr} labelled responses in {window} and {nb} before them since the champion's "
            f"cutoff; each needs {need} to compare disagreement rates"))
    t = disagreement_test(pred, wrong, recent, config)
    if not math.isfinite(t.rise):
        return TriggerRule(RULE, False, None, config.disagree_rise,
                           "no predicted class served both before and in the recent window")
    credible, material = t.low > 0, t.rise >= config.disagree_rise
    fired = credible and material
    verdict = ("a credible and material rise" if fired else
               "credible but not material" if credible else "no credible rise")
    return TriggerRule(RULE, fired, t.rise, config.disagree_rise, (
        f"disagreement rate {t.rate_recent:.3f} on {nr} labelled responses of {window} vs "
        f"{t.rate_before:.3f} on {nb} before (champion, since its cutoff); rise at the same "
        f"class mix ({t.strata} predicted classes) {t.rise:+.3f} "
        f"({'>=' if material else '<'} {config.disagree_rise:g}), anytime-valid "
        f"{1 - config.disagree_alpha:.0%} interval [{t.low:+.3f}, {t.high:+.3f}]: {verdict}"))


def disagreement_table(rows: pd.DataFrame, pred: np.ndarray, confidence: np.ndarray,
                       slice_by: str | None) -> pd.DataFrame:
    """The labelled ``rows`` whose label differs from ``pred``, with the confidence.

    Columns: ``id``, ``timestamp``, ``label_timestamp``, ``model_version`` (when logged),
    ``prediction``, ``label``, ``confidence``, ``slice`` and ``label_source`` (when known),
    then the row's other columns.
    """
    if rows.empty:
        return pd.DataFrame(columns=["id", "prediction", "label", "confidence", "slice"])
    out = rows.copy()
    out["prediction"] = np.asarray(pred).astype(str)
    out["confidence"] = np.asarray(confidence, dtype=float)
    out["slice"] = (out[slice_by].astype(str) if slice_by and slice_by in out
                    else out["prediction"])
    out = out.loc[out["label"].astype(str) != out["prediction"]]
    first = [c for c in ("id", "timestamp", "label_timestamp", "model_version", "prediction",
                         "label", "confidence", "slice", "label_source") if c in out]
    return out[first + [c for c in out.columns if c not in first]].reset_index(drop=True)


@dataclass
class GroupCount:
    """Disagreements among the labelled responses of one class or slice."""

    name: str
    labelled: int
    disagreements: int
    rate: float
    mean_confidence: float


@dataclass
class DisagreementSummary(JsonResult):
    """A run's disagreements, counted per class (label and prediction) and per slice."""

    model_version: str | None
    labelled: int
    disagreements: int
    rate: float
    slice_by: str
    by_label: list[GroupCount] = field(default_factory=list)
    by_prediction: list[GroupCount] = field(default_factory=list)
    by_slice: list[GroupCount] = field(default_factory=list)

    def to_markdown(self) -> str:
        """Counts per class and slice as Markdown."""
        lines = [f"### Disagreements: {self.disagreements} of {self.labelled} labelled "
                 f"responses ({self.rate:.1%})", ""]
        for title, groups in (("true label", self.by_label),
                              ("prediction", self.by_prediction),
                              (f"slice ({self.slice_by})", self.by_slice)):
            lines += [f"| {title} | labelled | disagreements | rate | mean confidence |",
                      "|---|---|---|---|---|"]
            lines += [f"| {g.name} | {g.labelled} | {g.disagreements} | {g.rate:.3f} | "
                      f"{g.mean_confidence:.3f} |" for g in groups]
            lines.append("")
        return "\n".join(lines)


def _groups(keys: pd.Series, wrong: np.ndarray, confidence: np.ndarray) -> list[GroupCount]:
    out = []
    for name in sorted(keys.unique()):
        here = (keys == name).to_numpy()
        bad = here & wrong
        out.append(GroupCount(str(name), int(here.sum()), int(bad.sum()),
                              float(wrong[here].mean()),
                              float(confidence[bad].mean()) if bad.any() else math.nan))
    return out


def disagreement_counts(rows: pd.DataFrame, pred: np.ndarray, confidence: np.ndarray,
                        slice_by: str | None, model_version: str | None
                        ) -> DisagreementSummary:
    """Count disagreements per true label, per predicted class and per slice.

    ``slice_by`` is the schema's slice column; without one the slices are the predicted
    classes.
    """
    if rows.empty:
        return DisagreementSummary(model_version, 0, 0, math.nan, slice_by or "prediction")
    pred = np.asarray(pred).astype(str)
    confidence = np.asarray(confidence, dtype=float)
    label = rows["label"].astype(str).reset_index(drop=True)
    wrong = (label.to_numpy() != pred)
    slices = (rows[slice_by].astype(str).reset_index(drop=True) if slice_by and slice_by in rows
              else pd.Series(pred))
    return DisagreementSummary(
        model_version, len(rows), int(wrong.sum()), float(wrong.mean()),
        slice_by if slice_by and slice_by in rows else "prediction",
        _groups(label, wrong, confidence), _groups(pd.Series(pred), wrong, confidence),
        _groups(slices, wrong, confidence))
