"""The whole run in one process: the same step functions the pipeline's components call.

:func:`run_loop` calls :func:`ingest_step`, :func:`analyse_canary_step`,
:func:`curate_step`, :func:`drift_shard_step` (per shard), :func:`drift_merge_step`,
:func:`decide_step`, :func:`plan_candidates_step`, :func:`tune_step` (each candidate in
turn), :func:`select_step`, :func:`evaluate_step`,
:func:`notify_step` and :func:`promote_step` in the order and under the conditions of the
``continuous-training`` pipeline graph (:mod:`driftloop.kfp.pipeline`), passing the
artifacts between them as files in a temporary folder, as kfp.local does. So the CLI, the
demo and the tests exercise the very code a cluster runs; only the orchestration differs.
:func:`run_canary_analysis` and :func:`run_ab_analysis` are the two small pipelines
(ingest, then :func:`analyse_canary_step` / :func:`ab_step`). It also takes what a pipeline
run builds from its string parameters: an open store and
schema, a full :class:`Config`, a notifier and a rollout backend.

One difference is deliberate: a ``needs_approval`` verdict is announced here (an
``info`` event naming the command to run), while the compiled pipeline announces only
``promote`` verdicts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from driftloop.config import Config
from driftloop.data.runs import record_failure
from driftloop.data.schema import Schema
from driftloop.data.storage import Store
from driftloop.decide.drift import (
    DriftReport,
)
from driftloop.decide.gate import Verdict
from driftloop.decide.trigger import (
    RetrainDecision,
)
from driftloop.errors import StoreError
from driftloop.models.registry import AliasState, Registry
from driftloop.notify import LogNotifier, Notifier, NullNotifier
from driftloop.rollout.base import RolloutBackend
from driftloop.rollout.progressive import RolloutStep
from driftloop.serde import dumps
from driftloop.steps.ab import ABOutcome, ab_step
from driftloop.steps.canary import CanaryOutcome, analyse_canary_step
from driftloop.steps.common import (
    run_key,
)
from driftloop.steps.decide import (
    decide_step,
)
from driftloop.steps.drift import drift_merge_step, drift_shard_step
from driftloop.steps.evaluate import (
    evaluate_step,
)
from driftloop.steps.ingest import (
    IngestOutcome,
    ingest_shard_step,
    ingest_step,
)
from driftloop.steps.promote import (
    notify_step,
    promote_step,
)
from driftloop.steps.review import curate_step
from driftloop.steps.status import SUCCEEDED, exit_step
from driftloop.steps.train import TrainSummary
from driftloop.steps.tune import plan_candidates_step, select_step, tune_step


@dataclass
class LoopResult:
    """Everything one run decided (``None``: the step did not run).

    Attributes:
        run_id: The run's folder under ``runs/``.
        ingest: What ingest read (with the rows themselves).
        drift: The drift report (``None``: no champion yet).
        decision: The retrain decision.
        canary: The canary step.
        train: The registered challenger.
        verdict: The gate's verdict.
        aliases: The registry aliases after the promote step.
        rollout: The rollout step of the run: the canary stepped, or a canary started.
    """

    run_id: str
    ingest: IngestOutcome
    drift: DriftReport | None
    decision: RetrainDecision
    canary: CanaryOutcome
    train: TrainSummary | None = None
    verdict: Verdict | None = None
    aliases: AliasState | None = None
    rollout: RolloutStep | None = None

    @property
    def records(self) -> pd.DataFrame:
        """Every accepted record of the lookback (labels joined)."""
        assert self.ingest.window is not None  # ingest_step always returns the rows
        return self.ingest.window.records


#: The pipelines' names (:data:`driftloop.kfp.pipeline.PIPELINE_NAME` and
#: ``CANARY_PIPELINE_NAME``; a test keeps them equal): the Pushgateway grouping key.
PIPELINE, CANARY_PIPELINE = "continuous-training", "canary-analysis"
AB_PIPELINE = "ab-analysis"


class _Artifacts:
    """Where the in-process run keeps the artifacts a pipeline run passes between tasks."""

    def __init__(self, folder: Path) -> None:
        self.records = folder / "records.parquet"
        self.current = folder / "current.parquet"
        self.quarantine = folder / "quarantine.parquet"
        self.drift = folder / "drift.json"
        self.folder = folder
        self.model = folder / "model"
        self.eval_set = folder / "eval_set.parquet"
        self.training = folder / "training.parquet"
        self.tuning = folder / "tuning"
        self.verdict = folder / "verdict.json"
        self.review_queue = folder / "review_queue.jsonl"
        self.disagreements = folder / "disagreements.parquet"

    def ingest_shard(self, shard: int) -> Path:
        """Where ingest shard ``shard`` writes its part (a folder)."""
        return self.folder / f"ingest-shard-{shard}"

    def drift_shard(self, shard: int) -> Path:
        """Where drift shard ``shard`` writes its profile."""
        return self.folder / f"drift-shard-{shard}.npz"


def _ingest(store: Store, schema: Schema, paths: _Artifacts, *, run_id: str, now: dt.datetime,
            window_days: int, lookback_days: int, config: Config) -> IngestOutcome:
    """The pipeline's ParallelFor over ingest shards, one after the other, then the merge."""
    parts = [paths.ingest_shard(i) for i in range(config.ingest.shards)]
    for i, part in enumerate(parts):
        ingest_shard_step(store, schema, part, run_id=run_id, now=now, shard=i,
                          shards=config.ingest.shards, window_days=window_days,
                          lookback_days=lookback_days)
    return ingest_step(store, schema, run_id=run_id, now=now, window_days=window_days,
                       lookback_days=lookback_days, records_path=paths.records,
                       current_path=paths.current, quarantine_path=paths.quarantine,
                       part_paths=parts)


def run_canary_analysis(
    store: Store, schema: Schema, model_name: str, *, now: dt.datetime, run_id: str,
    backend: RolloutBackend, config: Config | None = None, lookback_days: int = 30,
    notifier: Notifier | None = None, pushgateway_url: str = "",
) -> RolloutStep | None:
    """The ``canary-analysis`` pipeline in process: ingest up to ``now``, judge the canary.

    Run on the canary's own cadence (e.g. hourly): no drift, no training. The confidence
    sequence behind the analysis stays valid however often it looks.

    Returns:
        The rollout step, or ``None`` when no canary is in progress.
    """
    notifier = notifier or NullNotifier()
    with _exit_handler(store, model_name, run_id, notifier, pushgateway_url,
                       CANARY_PIPELINE), \
            tempfile.TemporaryDirectory(prefix="driftloop-canary-") as tmp:
        paths = _Artifacts(Path(tmp))
        ingested = _ingest(store, schema, paths, run_id=run_id, now=now, window_days=1,
                           lookback_days=lookback_days, config=config or Config())
        return analyse_canary_step(store, model_name, paths.records, run_id=run_id,
                                   now=ingested.now, backend=backend, notifier=notifier,
                                   config=config).step


def run_ab_analysis(
    store: Store, schema: Schema, model_name: str, *, now: dt.datetime, run_id: str,
    backend: RolloutBackend | None = None, config: Config | None = None,
    lookback_days: int = 30, notifier: Notifier | None = None, pushgateway_url: str = "",
) -> ABOutcome:
    """The ``ab-analysis`` pipeline in process: ingest up to ``now``, judge the A/B tests.

    Returns:
        The A/B step (no analyses when no test is running).
    """
    notifier = notifier or NullNotifier()
    with _exit_handler(store, model_name, run_id, notifier, pushgateway_url, AB_PIPELINE), \
            tempfile.TemporaryDirectory(prefix="driftloop-ab-") as tmp:
        paths = _Artifacts(Path(tmp))
        ingested = _ingest(store, schema, paths, run_id=run_id, now=now, window_days=1,
                           lookback_days=lookback_days, config=config or Config())
        return ab_step(store, model_name, paths.records, run_id=run_id, now=ingested.now,
                       backend=backend, notifier=notifier, config=config)


@contextlib.contextmanager
def _exit_handler(store: Store, model_name: str, run_id: str, notifier: Notifier,
                  pushgateway_url: str, pipeline: str) -> Iterator[None]:
    """The pipeline's exit task: :func:`exit_step` however the body ended.

    Unlike a pipeline's, an in-process run's caller gets the exception and reports it:
    a failure is announced only to a notifier that reaches people elsewhere (not the log,
    which would repeat the error line), and a store that refused a write is not written
    again (nothing could be recorded or pushed from it).
    """
    try:
        yield
    except (StoreError, OSError) as exc:
        record_failure(store, run_key(run_id), exc)  # best effort: it swallows a refusal
        raise
    except Exception as exc:
        record_failure(store, run_key(run_id), exc)
        quiet = isinstance(notifier, LogNotifier | NullNotifier)
        exit_step(store, model_name=model_name, run_id=run_id, state="FAILED",
                  error=f"{type(exc).__name__}: {exc}",
                  notifier=NullNotifier() if quiet else notifier,
                  pushgateway_url=pushgateway_url, pipeline_name=pipeline)
        raise
    exit_step(store, model_name=model_name, run_id=run_id, state=SUCCEEDED,
              notifier=notifier, pushgateway_url=pushgateway_url, pipeline_name=pipeline)


def run_loop(
    store: Store, schema: Schema, model_name: str, *, now: dt.datetime, run_id: str,
    config: Config | None = None, force: bool = False, window_days: int = 1,
    lookback_days: int = 30, notifier: Notifier | None = None,
    backend: RolloutBackend | None = None, pushgateway_url: str = "",
) -> LoopResult:
    """Run ingest → canary → drift → decide → train → evaluate → notify → promote.

    Args:
        store: The data store.
        schema: The records' schema.
        model_name: Model name in the registry.
        now: The run's logical time.
        run_id: The run's folder under ``runs/``.
        config: Every threshold (default: :class:`Config`).
        force: Retrain regardless of the rules (and of a canary in flight).
        window_days: Days whose records count as current for drift.
        lookback_days: Days of records and feedback read for labels and training.
        notifier: Receives model-update and rollback events (default: none).
        backend: The serving rollout backend (left open). None: registry aliases only (a
            promote verdict moves the champion alias at once). With one, a canary in
            progress is judged and stepped first and no new challenger is trained while
            it is in flight; a promote verdict starts a canary.
        pushgateway_url: A Prometheus Pushgateway's base URL: the run's decisions are
            pushed there when it ends (``""``: none).
    """
    notifier = notifier or NullNotifier()
    with _exit_handler(store, model_name, run_id, notifier, pushgateway_url, PIPELINE), \
            tempfile.TemporaryDirectory(prefix="driftloop-run-") as tmp:
        return _run_loop(store, schema, model_name, now=now, run_id=run_id,
                         config=config or Config(), force=force, window_days=window_days,
                         lookback_days=lookback_days, notifier=notifier, backend=backend,
                         paths=_Artifacts(Path(tmp)))


def _run_loop(
    store: Store, schema: Schema, model_name: str, *, now: dt.datetime, run_id: str,
    config: Config, force: bool, window_days: int, lookback_days: int, notifier: Notifier,
    backend: RolloutBackend | None, paths: _Artifacts,
) -> LoopResult:
    ingested = _ingest(store, schema, paths, run_id=run_id, now=now, window_days=window_days,
                       lookback_days=lookback_days, config=config)
    # without a backend this is the pipeline's canary task with rollout_backend "none"
    canary = analyse_canary_step(store, model_name, paths.records, run_id=run_id,
                                 now=ingested.now, backend=backend, notifier=notifier,
                                 config=config)
    curate_step(store, schema, model_name, paths.records, run_id=run_id, now=ingested.now,
                queue_path=paths.review_queue, disagreements_path=paths.disagreements,
                config=config)
    # the pipeline's ParallelFor over drift shards, one after the other
    n_shards = config.drift.shards
    shard_paths = [paths.drift_shard(i) for i in range(n_shards)]
    for i, path in enumerate(shard_paths):
        drift_shard_step(store, schema, model_name, path, run_id=run_id, now=now,
                         window_days=window_days, shard=i, shards=n_shards)
    drift = drift_merge_step(store, schema, model_name, shard_paths, run_id=run_id,
                             now=ingested.now, window_days=window_days, config=config)
    paths.drift.write_text(drift.to_json())
    decision = decide_step(store, schema, model_name, paths.records, paths.drift,
                           run_id=run_id, now=ingested.now, force=force, config=config,
                           canary_in_progress=canary.in_progress)
    result = LoopResult(run_key(run_id), ingested, drift.report, decision, canary,
                        rollout=canary.step)
    if not decision.retrain:
        return result
    # the pipeline's plan_candidates → ParallelFor(tune_candidate) → select_challenger,
    # the candidates one after another
    planned = plan_candidates_step(store, schema, model_name, paths.records, run_id=run_id,
                                   now=ingested.now, training_path=paths.training,
                                   config=config)
    tuned = [tune_step(store, schema, model_name, paths.training, name, run_id=run_id,
                       config=config, work_dir=paths.tuning / name)
             for name in planned.candidates]
    result.train = select_step(store, schema, model_name, paths.records, tuned, run_id=run_id,
                               now=ingested.now, model_dir=paths.model,
                               eval_path=paths.eval_set, config=config)
    evaluated = evaluate_step(store, schema, model_name, paths.model, paths.eval_set,
                              run_id=run_id, config=config)
    result.verdict = evaluated.verdict
    paths.verdict.write_text(dumps(evaluated.verdict))
    if evaluated.decision in ("promote", "needs_approval"):
        notify_step(paths.verdict, model_name=model_name, run_id=run_id, notifier=notifier)
    if evaluated.decision == "promote":
        promoted = promote_step(store, model_name, paths.verdict, run_id=run_id,
                                backend=backend, config=config)
        result.aliases = promoted.aliases
        result.rollout = promoted.rollout or result.rollout
    else:
        result.aliases = Registry(store, model_name).aliases()
    return result
