"""The search steps of a retrain: plan the candidates, tune one candidate, select and register.

In the pipeline (:mod:`driftloop.kfp.pipeline`) these are three tasks: ``plan_candidates``
(the training rows and the candidate list), a ``dsl.ParallelFor`` of ``tune_candidate``
(one candidate's Optuna study per task, in its own pod on a cluster) and
``select_challenger`` (``dsl.Collected`` results → the winner, refit on every training row
and registered by :func:`driftloop.steps.train.run_train`). The in-process loop calls the
same three functions in the same order.

An ``update`` (the trigger's kind; ``tuning.updates``) plans the one candidate ``update``:
its task searches nothing and hands on the champion's candidate and parameters
(:func:`driftloop.models.warm.update_spec`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftloop.clock import logical_time
from driftloop.config import Config
from driftloop.data.runs import record_result
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.decide.trigger import RetrainDecision
from driftloop.models.candidates import candidates_for
from driftloop.models.registry import Registry
from driftloop.models.train import data_hash
from driftloop.models.tuning import (
    FIXED,
    CandidateResult,
    resolve_storage,
    select_winner,
    selection_record,
    tune_candidate,
)
from driftloop.models.warm import update_spec
from driftloop.serde import JsonResult
from driftloop.steps.champion import load_champion
from driftloop.steps.common import (
    logged_step,
    open_inputs,
    read_frame,
    recorded,
    run_key,
    write_frame,
)
from driftloop.steps.ingest import records_window
from driftloop.steps.train import Selection, TrainSummary, planned_rows, train_step

UPDATE = "update"


def tuning_config(base: Config | None = None, *, n_trials: int | None = None,
                  tuning_seconds: float | None = None, updates: bool | None = None) -> Config:
    """``base`` with the pipeline's search parameters applied (``None`` keeps a value).

    ``n_trials`` 0 turns the search off (the fixed model); ``n_trials >= 1`` turns it on
    with that many trials per candidate; ``tuning_seconds`` 0 keeps the config's budget.
    """
    base = base or Config()
    given: dict[str, Any] = {}
    if n_trials is not None:
        given["enabled"] = n_trials > 0
        if n_trials > 0:
            given["n_trials"] = int(n_trials)
    if tuning_seconds is not None and tuning_seconds > 0:
        given["tuning_seconds"] = float(tuning_seconds)
    if updates is not None:
        given["updates"] = bool(updates)
    return dataclasses.replace(base, tuning=dataclasses.replace(base.tuning, **given))


@dataclass
class CandidatePlan(JsonResult):
    """The candidates a retrain searches, as recorded in ``runs/<run-id>/candidates.json``.

    Attributes:
        kind: ``full`` (search) or ``update`` (refit the champion's settings).
        candidates: The candidate names, one ParallelFor iteration each.
        train_rows: The planned training rows (the search's folds come from them only).
        data_hash: Their hash; the select step checks it re-planned the same rows.
        n_trials: Trials per candidate (0: the fixed model, no search).
        tuning_seconds: Seconds per candidate.
    """

    kind: str
    candidates: list[str]
    train_rows: int
    data_hash: str
    n_trials: int
    tuning_seconds: float

    def to_markdown(self) -> str:
        """A short Markdown summary."""
        budget = (f"{self.n_trials} trials / {self.tuning_seconds:g} s per candidate"
                  if self.n_trials else "no search (fixed model)")
        return (f"### Candidates ({self.kind})\n\n- {', '.join(self.candidates)}\n"
                f"- {self.train_rows} training rows; {budget}\n")


@logged_step("plan_candidates")
def plan_candidates_step(
    store: Store | str, schema: Schema | str, model_name: str, records_path: str | Path, *,
    run_id: str, now: str, training_path: str | Path, config: Config | None = None,
    n_trials: int | None = None, tuning_seconds: float | None = None,
) -> CandidatePlan:
    """Plan this retrain's training rows and list the candidates to search on them.

    Writes the training rows (Parquet) to ``training_path`` for the tune tasks; records
    ``candidates.json``. ``n_trials`` / ``tuning_seconds`` override ``config``
    (:func:`tuning_config`).
    """
    run_id = run_key(run_id)
    store, schema = open_inputs(store, schema)
    config = tuning_config(config, n_trials=n_trials, tuning_seconds=tuning_seconds)
    registry = Registry(store, model_name)
    decision = recorded(store, run_id, "decision", RetrainDecision)
    champion = load_champion(registry)
    plan, _ = planned_rows(store, champion, records_window(read_frame(records_path)), schema,
                           now=logical_time(now), config=config, model_name=model_name,
                           decision=decision)
    write_frame(plan.training, training_path)
    update = decision is not None and decision.kind == UPDATE and champion is not None
    tuning = config.tuning
    out = CandidatePlan(
        kind=UPDATE if update else "full",
        candidates=[UPDATE] if update else candidates_for(schema, tuning),
        train_rows=len(plan.training), data_hash=data_hash(plan.training, schema),
        n_trials=0 if update or not tuning.enabled else tuning.n_trials,
        tuning_seconds=tuning.tuning_seconds)
    record_result(store, run_id, "candidates", out)
    return out


@logged_step("tune_candidate")
def tune_step(
    store: Store | str, schema: Schema | str, model_name: str, training_path: str | Path,
    candidate: str, *, run_id: str, config: Config | None = None,
    work_dir: str | Path | None = None, n_trials: int | None = None,
    tuning_seconds: float | None = None, storage: str | None = None,
) -> CandidateResult:
    """Search one candidate on the planned training rows; record ``tune-<candidate>.json``.

    Args:
        store: The store, or its root URI.
        schema: The schema, or its file's URI.
        model_name: Model name in the registry (an update reads the champion's settings).
        training_path: The planned training rows (from :func:`plan_candidates_step`).
        candidate: The candidate's name, or ``update``.
        run_id: The run's id.
        config: Every threshold (default: :class:`Config`).
        work_dir: The task's own folder (``tuning.storage`` ``"sqlite"`` puts the study there).
        n_trials: Overrides ``config`` (:func:`tuning_config`).
        tuning_seconds: Overrides ``config``.
        storage: Overrides ``tuning.storage`` (``None`` keeps it).
    """
    run_id = run_key(run_id)
    store, schema = open_inputs(store, schema)
    config = tuning_config(config, n_trials=n_trials, tuning_seconds=tuning_seconds)
    if storage is not None:
        config = dataclasses.replace(config, tuning=dataclasses.replace(config.tuning,
                                                                        storage=storage))
    metric = config.gate.primary_metric
    if candidate == UPDATE:
        registry = Registry(store, model_name)
        champion = registry.champion()
        meta = registry.metadata(champion) if champion else None
        name, params, reason = update_spec(meta)
        result = CandidateResult(name, FIXED, metric, params=params, reason=reason)
    else:
        result = tune_candidate(
            read_frame(training_path), schema, config.train, config.tuning, candidate,
            metric=metric,
            storage=resolve_storage(config.tuning.storage,
                                    Path(work_dir) if work_dir is not None else None),
            study_name=f"{model_name}-{run_id}-{candidate}")
    record_result(store, run_id, f"tune-{candidate}", result)
    return result


@logged_step("select_challenger")
def select_step(
    store: Store | str, schema: Schema | str, model_name: str, records_path: str | Path,
    results: list[dict[str, Any]] | list[CandidateResult], *, run_id: str, now: str,
    model_dir: str | Path, eval_path: str | Path, config: Config | None = None,
) -> TrainSummary:
    """Choose the challenger among the candidates' results, refit it on every row, register it.

    ``results`` are the tune tasks' outputs (dicts under ``dsl.Collected``). The training
    rows are planned again exactly as the plan task did; a different data hash (the store
    changed under the run) is an error rather than a challenger tuned on other rows
    (:func:`driftloop.steps.train.run_train` checks it).
    """
    run_id = run_key(run_id)
    store, schema = open_inputs(store, schema)
    config = config or Config()
    parsed = [r if isinstance(r, CandidateResult) else CandidateResult.from_collected(r)
              for r in results]
    planned = recorded(store, run_id, "candidates", CandidatePlan)
    kind = planned.kind if planned is not None else "full"
    winner, params, reason = select_winner(parsed)
    selection = Selection(kind, winner, params, selection_record(kind, winner, reason, parsed),
                          data_hash=planned.data_hash if planned is not None else "")
    return train_step(store, schema, model_name, records_path, run_id=run_id, now=now,
                      model_dir=model_dir, eval_path=eval_path, config=config,
                      selection=selection)
