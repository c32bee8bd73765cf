"""Search each candidate's hyperparameters with Optuna, then choose the challenger.

One study per candidate (:func:`tune_candidate`, what one KFP task of the ParallelFor
runs): a seeded ``TPESampler`` (same rows + seed + trial budget → the same trials and the
same winner), a budget of ``n_trials`` trials and ``tuning_seconds`` seconds (the time
budget depends on the machine, so only a search stopped by its trial budget is
reproducible), and a ``MedianPruner``: after each cross-validation fold a trial reports
its running score and is stopped when it is below the median of the earlier trials at
that fold. The folds are drawn from the training rows the retrain was planned on, which
never hold the gate's evaluation rows (:func:`driftloop.steps.plan.plan_training` holds
those out first), so the gate still judges the winner on rows no search looked at.

A candidate whose every trial fails (a fold with one class, a calibration that needs more
rows of a class than a fold holds, a convergence error) is skipped with its reason;
:func:`select_winner` picks the best cross-validated score among the rest and falls back
to the fixed model when nothing completed, so a failed search never fails a run. The best
score of a search is the maximum over its trials and therefore optimistic: it ranks the
candidates, while the gate's paired test on held-out rows decides promotion.

Storage (``TuningConfig.storage``): in memory by default, ``"sqlite"`` for a file in the
run's folder (a retried task resumes its study and runs only the missing trials), or any
RDB URL that SQLAlchemy understands for a shared study on a cluster.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold

from driftloop.config import TrainConfig, TuningConfig
from driftloop.data.schema import Schema
from driftloop.models.candidates import (
    DEFAULT,
    as_params,
    build_candidate,
    default_params,
    search_space,
)
from driftloop.models.metrics import compute_metrics
from driftloop.models.train import feature_frame, predict_frame, training_problem
from driftloop.serde import JsonResult, to_jsonable
from driftloop.threads import limited

OK, SKIPPED, FIXED = "ok", "skipped", "fixed"
#: Training rows (a seeded sample) a search scores on; the winner is refit on every row.
SEARCH_MAX_ROWS = 5000


@dataclass
class CandidateResult(JsonResult):
    """One candidate's search: its best cross-validated score and parameters, or why not.

    Attributes:
        candidate: Candidate name (:mod:`driftloop.models.candidates`).
        status: ``ok`` (searched), ``skipped`` (no trial completed: ``reason``) or ``fixed``
            (no search: tuning off, or an update reusing the champion's settings).
        metric: The cross-validated metric (the gate's primary metric).
        score: Best mean score over the folds (``None`` unless ``ok``).
        params: The best trial's parameters (the fixed settings when ``fixed``).
        n_trials: Trials run (complete + pruned + failed).
        n_pruned: Trials stopped by the pruner.
        n_failed: Trials that raised.
        seconds: Wall-clock seconds of the search.
        rows: Training rows the folds were drawn from.
        folds: Cross-validation folds.
        reason: Why it was skipped, or how it was run.
    """

    candidate: str
    status: str
    metric: str
    score: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    n_trials: int = 0
    n_pruned: int = 0
    n_failed: int = 0
    seconds: float = 0.0
    rows: int = 0
    folds: int = 0
    reason: str = ""

    @classmethod
    def from_collected(cls, raw: dict[str, Any]) -> CandidateResult:
        """Rebuild from a dict that crossed ``dsl.Collected`` (kfp.local turns ints to floats)."""
        ints = ("n_trials", "n_pruned", "n_failed", "rows", "folds")
        fixed: dict[str, Any] = {k: int(v) if k in ints and v is not None else v
                                 for k, v in raw.items()}
        fixed["params"] = as_params(fixed.get("params"))
        return cls(**fixed)


def resolve_storage(storage: str, folder: Path | None) -> str | None:
    """Optuna storage URL for ``TuningConfig.storage`` (``None``: in memory).

    Raises:
        ValueError: ``"sqlite"`` without a folder to put the file in.
    """
    if not storage:
        return None
    if storage == "sqlite":
        if folder is None:
            raise ValueError("tuning.storage 'sqlite' needs the run's folder")
        Path(folder).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(folder).resolve() / 'optuna.db'}"
    return storage


def _sample(df: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    # a canonical order first: the folds must not depend on how the rows arrived
    df = df.loc[df["label"].notna()].sort_values("id", kind="stable").reset_index(drop=True)
    if len(df) > max_rows:
        pick = np.random.default_rng(seed).choice(len(df), size=max_rows, replace=False)
        df = df.iloc[np.sort(pick)].reset_index(drop=True)
    return df


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


@limited("train")
def tune_candidate(
    train_df: pd.DataFrame, schema: Schema, config: TrainConfig, tuning: TuningConfig,
    name: str, *, metric: str = "f1_macro", storage: str | None = None,
    study_name: str | None = None,
) -> CandidateResult:
    """Search candidate ``name``'s space on cross-validation folds of ``train_df``.

    Args:
        train_df: The planned training rows (never the gate's evaluation rows).
        schema: The model's schema.
        config: Training settings (seed, fixed-model settings).
        tuning: Budgets, folds and the spaces' bounds.
        name: Candidate name; ``default`` is not searched (status ``fixed``).
        metric: The metric maximised (the gate's primary metric).
        storage: Optuna storage URL (:func:`resolve_storage`; ``None``: in memory).
        study_name: Study name in ``storage`` (default ``driftloop-<name>``).

    Returns:
        The result; never raises for a candidate that cannot fit (it is ``skipped``).
    """
    if name == DEFAULT:
        return CandidateResult(name, FIXED, metric, params={},
                               reason="tuning off: the fixed model of the train config")
    import optuna

    started = time.monotonic()
    df = _sample(train_df, SEARCH_MAX_ROWS, config.seed)
    problem = training_problem(df, schema)
    if problem is not None:
        return CandidateResult(name, SKIPPED, metric, rows=len(df), reason=problem)
    X, y = feature_frame(df, schema), df["label"].astype(str).to_numpy()
    labels = sorted(set(y))
    with warnings.catch_warnings():  # a class rarer than the folds is a failed trial
        warnings.simplefilter("ignore", UserWarning)
        splits = list(StratifiedKFold(tuning.folds, shuffle=True,
                                      random_state=config.seed).split(X, y))

    def objective(trial: Any) -> float:
        params = search_space(name, trial, tuning)
        scores: list[float] = []
        try:
            for k, (fit, val) in enumerate(splits):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    model = build_candidate(schema, config, name, params).fit(X.iloc[fit],
                                                                              y[fit])
                pred, proba = predict_frame(model, df.iloc[val], schema)
                scores.append(compute_metrics(y[val], pred, proba,
                                              [str(c) for c in model.classes_],
                                              labels=labels)[metric])
                trial.report(float(np.mean(scores)), k)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # a failing fit fails the trial, never the run
            trial.set_user_attr("error", _error(exc))
            raise
        return float(np.mean(scores))

    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(
        study_name=study_name or f"driftloop-{name}", storage=storage, load_if_exists=True,
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    done = len(study.trials)  # a resumed study (a retried task) runs only what is missing
    first = default_params(name, config)
    if first is not None and done == 0:
        study.enqueue_trial(first)  # the search starts from today's fixed model
    remaining = max(0, tuning.n_trials - done)
    if remaining:
        # the enqueued fixed model may lie outside the space's bounds (e.g. 30 iterations)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Fixed parameter", category=UserWarning)
            study.optimize(objective, n_trials=remaining, timeout=tuning.tuning_seconds,
                           catch=(Exception,), gc_after_trial=False)
    states = optuna.trial.TrialState
    trials = study.trials
    pruned = sum(t.state == states.PRUNED for t in trials)
    failed = [t for t in trials if t.state == states.FAIL]
    complete = [t for t in trials if t.state == states.COMPLETE]
    seconds = time.monotonic() - started
    common: dict[str, Any] = {"n_trials": len(trials), "n_pruned": pruned,
                              "n_failed": len(failed), "seconds": seconds, "rows": len(df),
                              "folds": tuning.folds}
    if not complete:
        errors = sorted({str(t.user_attrs.get("error", "failed")) for t in failed})
        why = ("every trial failed: " + "; ".join(errors)) if errors else "no trial completed"
        return CandidateResult(name, SKIPPED, metric, **common, reason=why)
    best = study.best_trial
    return CandidateResult(
        name, OK, metric, score=float(best.value or 0.0), params=dict(best.params), **common,
        reason=f"best of {len(complete)} complete trials (trial {best.number})")


def select_winner(results: list[CandidateResult]) -> tuple[str, dict[str, Any], str]:
    """The challenger: the best cross-validated score; ties go to the earlier candidate.

    Returns:
        ``(candidate, params, reason)``; the fixed model (``default``) when no candidate
        completed a trial (the reason lists why each was skipped).
    """
    scored = [r for r in results if r.status == OK and r.score is not None]
    skipped = [f"{r.candidate} skipped ({r.reason})" for r in results if r.status == SKIPPED]
    if not scored:
        fixed = next((r for r in results if r.status == FIXED), None)
        if fixed is not None and not skipped:
            return fixed.candidate, dict(fixed.params), fixed.reason
        return DEFAULT, {}, ("no candidate completed a trial: "
                             + "; ".join(skipped or ["no candidates"])
                             + "; the fixed model is trained")
    order = {r.candidate: i for i, r in enumerate(results)}
    ranked = sorted(scored, key=lambda r: (-float(r.score or 0.0), order[r.candidate]))
    win = ranked[0]
    reason = (f"{win.candidate}: best cross-validated {win.metric} {win.score:.4f} "
              f"({win.n_trials} trials, {win.folds} folds, {win.rows} rows)")
    if len(ranked) > 1:
        nxt = ranked[1]
        reason += (f", ahead of {nxt.candidate} {nxt.score:.4f} "
                   f"(+{float(win.score or 0) - float(nxt.score or 0):.4f})")
    if skipped:
        reason += "; " + "; ".join(skipped)
    return win.candidate, dict(win.params), reason


def selection_record(kind: str, winner: str, reason: str,
                     results: list[CandidateResult]) -> dict[str, Any]:
    """What the model card (``metadata.json``'s ``candidates``) records about the search."""
    metric = results[0].metric if results else ""
    return {"kind": kind, "winner": winner, "reason": reason, "metric": metric,
            "results": [to_jsonable(r) for r in results]}
