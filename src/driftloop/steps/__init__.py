"""One function per pipeline step, over store URIs and local file paths.

Each KFP component (``driftloop.kfp.components``) resolves its artifact paths and calls
exactly one ``*_step`` function here; the function does the work through
:mod:`driftloop.steps.loop`, records its typed result under ``runs/<run-id>/`` in the store and
returns a typed outcome that knows its Markdown, JSON and metrics. Nothing here imports
kfp, so every step is unit-tested as a plain function.

Artifacts between steps are files: records, the current window, the quarantine and the
evaluation set are Parquet; the drift report and the verdict are JSON (``null`` for a
drift report that was skipped because no champion serves yet); a model is a folder with
``model.joblib`` and ``metadata.json``, downloaded (sha256-verified) from the registry.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftloop.clock import logical_time, run_logical_time
from driftloop.config import Config, DriftConfig, GateConfig, NotifyConfig, TriggerConfig
from driftloop.data.ingest import IngestCounts, IngestError, IngestReport, IngestResult
from driftloop.data.runs import record_failure, record_result
from driftloop.data.schema import Schema, load_schema
from driftloop.data.storage import Store, open_store
from driftloop.decide.drift import DriftReport
from driftloop.decide.gate import Verdict
from driftloop.decide.trigger import RetrainDecision
from driftloop.errors import DriftloopError
from driftloop.models.registry import AliasState, Registry
from driftloop.models.train import ModelMetadata, predict_frame
from driftloop.notify import Delivery, Event, NullNotifier, make_notifier, notify_or_raise
from driftloop.rollout import progressive
from driftloop.rollout.progressive import RolloutStep
from driftloop.serde import JsonResult, dumps, loads
from driftloop.steps import loop

TrainSummary = loop.TrainSummary

logger = logging.getLogger(__name__)

SUCCEEDED = "SUCCEEDED"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# --- shared helpers -----------------------------------------------------------------------


def run_key(job_name: str) -> str:
    """Turn a KFP run (job) name into the ``<run-id>`` folder name of ``runs/``.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``-``; a local
    kfp run name (``continuous-training-2026-01-02-10-00-00-123456``) stays as it is.

    Raises:
        DriftloopError: Nothing usable is left of the name.
    """
    key = re.sub(r"\.{2,}", ".", _UNSAFE.sub("-", job_name)).strip("-.")[:120]
    if not key:
        raise DriftloopError(f"run id {job_name!r}: needs at least one letter or digit")
    return key


def pipeline_config(
    *, p_value: float | None = None, min_samples: int | None = None,
    effect_threshold: float | None = None, min_new_labels: int | None = None,
    perf_drop: float | None = None,
    max_age_days: float | None = None, auto_threshold: float | None = None,
) -> Config:
    """The default :class:`Config` with the pipeline's threshold parameters applied.

    ``None`` keeps a field's default. The config classes check every value.
    """
    base = Config()

    def pick(section: Any, **values: Any) -> Any:
        given = {k: v for k, v in values.items() if v is not None}
        return replace(section, **given) if given else section

    return replace(
        base,
        drift=pick(base.drift, p_value=p_value, min_samples=min_samples,
                   effect_threshold=effect_threshold),
        trigger=pick(base.trigger, min_new_labels=min_new_labels, perf_drop=perf_drop,
                     max_age_days=max_age_days),
        gate=pick(base.gate, auto_threshold=auto_threshold),
    )


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read a Parquet artifact; a one-line error names a missing or unreadable file."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise DriftloopError(f"{path}: file does not exist") from None
    except Exception as exc:
        raise DriftloopError(f"{path}: not a readable Parquet file ({exc})") from None


def _write_frame(frame: pd.DataFrame, path: str | Path) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(target, index=False)


def _open(store_uri: str, schema_uri: str) -> tuple[Store, Schema]:
    return open_store(store_uri), load_schema(schema_uri)


def _window(records: pd.DataFrame, current: pd.DataFrame | None = None) -> loop.Window:
    # Downstream steps read only the records (and the current window): the ingest
    # report itself is recorded once, by the ingest step, under runs/<run-id>/.
    report = IngestReport("ok" if len(records) else "no_data", "", "", IngestCounts())
    result = IngestResult(records, pd.DataFrame(), report)
    return loop.Window(result=result, current=records.iloc[:0] if current is None else current)


def _finite_metrics(values: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, value in values.items():
        if value is None or isinstance(value, bool | np.bool_):
            continue
        number = float(value)
        if math.isfinite(number):
            out[name] = number
    return out


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")


def _read_json_artifact(cls: type[Any], path: str | Path, what: str) -> Any:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DriftloopError(f"{path}: {what} file does not exist") from None
    if text.strip() == "null":
        return None
    try:
        return loads(cls, text)
    except (ValueError, TypeError, KeyError) as exc:
        raise DriftloopError(f"{path}: not a valid {what} ({exc})") from None


# --- ingest --------------------------------------------------------------------------------


@dataclass
class IngestOutcome:
    """What the ingest step read and where its logical time stands.

    Attributes:
        report: The ingest report (row accounting, quarantine reasons).
        now: The run's logical time (ISO-8601), passed on to every later step.
        n_records: Accepted records of the lookback.
        n_current: Records of the current window (compared for drift).
        n_labelled: Accepted records with a label.
    """

    report: IngestReport
    now: str
    n_records: int
    n_current: int
    n_labelled: int

    def metrics(self) -> dict[str, float]:
        """Row accounting for the KFP Metrics artifact."""
        counts = {k: float(v) for k, v in vars(self.report.counts).items()}
        return {**counts, "current_rows": float(self.n_current)}


def ingest_step(
    store_uri: str, schema_uri: str, *, run_id: str, records_path: str | Path,
    current_path: str | Path, quarantine_path: str | Path, run_date: str = "",
    scheduled_time: str = "", window_days: int = 1, lookback_days: int = 30,
) -> IngestOutcome:
    """Ingest the lookback, write records / current window / quarantine as Parquet.

    Records the ingest report as ``runs/<run-id>/ingest.json``.

    Args:
        store_uri: Store root (folder or ``gs://``).
        schema_uri: Schema file (local or ``gs://``).
        run_id: The run's id: its folder under ``runs/`` (made path-safe by :func:`run_key`).
        records_path: Where to write every accepted record of the lookback (labels joined).
        current_path: Where to write the current window's records.
        quarantine_path: Where to write the quarantined rows with their reasons.
        run_date: See :func:`logical_time`; wins over ``scheduled_time`` (a replay).
        scheduled_time: A recurring run's scheduled time (see :func:`run_logical_time`).
        window_days: Days whose records count as current for drift.
        lookback_days: Days of records and feedback read for labels and training.
    """
    run_id = run_key(run_id)
    store, schema = _open(store_uri, schema_uri)
    now = run_logical_time(run_date, scheduled_time)
    try:
        window = loop.run_ingest(store, schema, now=now, window_days=window_days,
                                 lookback_days=lookback_days)
    except IngestError as exc:
        if exc.result is not None:  # keep what was read before failing the task
            record_result(store, run_id, "ingest", exc.result.report)
            _write_frame(exc.result.quarantine.astype("string"), quarantine_path)
        record_failure(store, run_id, exc)
        raise
    record_result(store, run_id, "ingest", window.result.report)
    _write_frame(window.records, records_path)
    _write_frame(window.current, current_path)
    # Quarantined rows are for people to read: strings keep mixed raw values writable.
    _write_frame(window.result.quarantine.astype("string"), quarantine_path)
    records = window.records
    labelled = int(records["label"].notna().sum()) if "label" in records else 0
    return IngestOutcome(window.result.report, now.isoformat(), len(records),
                         len(window.current), labelled)


# --- drift ---------------------------------------------------------------------------------


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
            values[f"psi_{_metric_name(f.name)}"] = f.psi
            values[f"pvalue_{_metric_name(f.name)}"] = f.p_value
            values[f"effect_{_metric_name(f.name)}"] = f.effect
        return _finite_metrics(values)


def drift_step(
    store_uri: str, schema_uri: str, model_name: str, current_path: str | Path, *, run_id: str,
    p_value: float = DriftConfig.p_value, min_samples: int = DriftConfig.min_samples,
    effect_threshold: float = DriftConfig.effect_threshold,
) -> DriftOutcome:
    """Compare the current window with the champion's stored reference profile.

    Records ``runs/<run-id>/drift.json`` and ``drift.md`` (not when skipped).

    Args:
        store_uri: Store root.
        schema_uri: Schema file.
        model_name: Model name in the registry.
        current_path: Parquet file of the current window (from :func:`ingest_step`).
        run_id: The run's id (made path-safe by :func:`run_key`).
        p_value: Significance level of the per-feature tests, before correction.
        min_samples: Current rows needed for a drift decision.
        effect_threshold: Effect size a significant feature needs to count as drifted.
    """
    run_id = run_key(run_id)
    store, schema = _open(store_uri, schema_uri)
    config = pipeline_config(p_value=p_value, min_samples=min_samples,
                             effect_threshold=effect_threshold)
    champion = loop.load_champion(Registry(store, model_name))
    report = loop.run_drift(champion, read_frame(current_path), schema, config)
    if report is not None:
        record_result(store, run_id, "drift", report)
    return DriftOutcome(report)


# --- canary --------------------------------------------------------------------------------


def _backend(store_uri: str, isvc_name: str, namespace: str, rollout_backend: str,
             rollout_state: str) -> Any:
    """The rollout backend of the run, or None for registry-only (``none`` or no service)."""
    if rollout_backend == "none" or not isvc_name:
        return None
    from driftloop.rollout import make_backend

    return make_backend(rollout_backend, name=isvc_name, namespace=namespace or "default",
                        state_dir=rollout_state or None, store_uri=store_uri)


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
        return _finite_metrics(values)


def _serving_stats(url: str, model_name: str, records: pd.DataFrame, canary: str,
                   now: dt.datetime) -> dict[str, Any]:
    """Each version's serving counts from Prometheus since the canary's first response."""
    from driftloop.serving.prometheus import serving_stats

    served = (pd.to_datetime(records.loc[records["model_version"].astype(str) == canary,
                                         "timestamp"], utc=True)
              if len(records) and "model_version" in records else pd.Series([], dtype=object))
    since = served.min().to_pydatetime() if len(served) else now - dt.timedelta(days=1)
    return dict(serving_stats(url, model_name, since=since, until=now))


def analyse_canary_step(
    store_uri: str, model_name: str, records_path: str | Path, *, run_id: str, now: str,
    isvc_name: str = "", namespace: str = "", rollout_backend: str = "local",
    rollout_state: str = "", webhook: str = "", min_labelled: int | None = None,
    max_holds: int | None = None, prometheus_url: str = "",
) -> CanaryOutcome:
    """Judge the canary in progress on live traffic and advance, hold or roll it back.

    Calls :func:`driftloop.rollout.progressive.step_canary`; records ``runs/<run-id>/rollout.json``
    and ``.md`` when a canary was stepped. A re-run of the same run returns its recorded
    step and changes nothing.

    Args:
        store_uri: Store root.
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
    """
    run_id = run_key(run_id)
    registry = Registry(open_store(store_uri), model_name)
    canary = registry.aliases().canary
    if canary is None:
        earlier = progressive.recorded_step(registry, run_id)
        if earlier is not None and earlier.action in ("advance", "hold", "rollback"):
            # a re-run of this run
            return CanaryOutcome("" if earlier.action == "rollback" else earlier.version,
                                 earlier)
        return CanaryOutcome("", None)
    backend = _backend(store_uri, isvc_name, namespace, rollout_backend, rollout_state)
    if backend is None:
        return CanaryOutcome(canary, None)
    canary_config = Config().canary
    if min_labelled is not None:
        canary_config = replace(canary_config, min_labelled=min_labelled)
    if max_holds is not None:
        canary_config = replace(canary_config, max_holds=max_holds)
    records = read_frame(records_path)
    serving = (_serving_stats(prometheus_url, model_name, records, canary, logical_time(now))
               if prometheus_url else None)
    with backend:
        step = progressive.step_canary(
            registry, backend, records, config=canary_config,
            notifier=make_notifier(_notifier_config(webhook)), run_id=run_id,
            model_name=model_name, now=logical_time(now), serving=serving)
    if step is not None and step.action == progressive.ROLLBACK:
        return CanaryOutcome("", step)  # nothing in flight: the rules may retrain now
    return CanaryOutcome(canary, step)


# --- decide --------------------------------------------------------------------------------


def decide_step(
    store_uri: str, schema_uri: str, model_name: str, records_path: str | Path,
    drift_path: str | Path, *, run_id: str, now: str, force: bool = False,
    min_new_labels: int = TriggerConfig.min_new_labels,
    perf_drop: float = TriggerConfig.perf_drop,
    max_age_days: float = TriggerConfig.max_age_days, canary_in_progress: str = "",
) -> RetrainDecision:
    """Decide whether to retrain; records ``runs/<run-id>/decision.json`` and ``.md``.

    Args:
        store_uri: Store root.
        schema_uri: Schema file.
        model_name: Model name in the registry.
        records_path: Parquet file of the lookback's records (from :func:`ingest_step`).
        drift_path: The drift report JSON (from :func:`drift_step`; ``null`` = skipped).
        run_id: The run's id (made path-safe by :func:`run_key`).
        now: The run's logical time (ISO-8601, from :func:`ingest_step`).
        force: Retrain regardless of the rules.
        min_new_labels: New labels since the last training cutoff that trigger.
        perf_drop: Relative drop of the champion's live accuracy that triggers.
        max_age_days: Days without any training (promoted or not) that trigger a scheduled
            retrain (0: no schedule).
        canary_in_progress: The version whose canary was in flight at the start of the run
            (from :func:`analyse_canary_step`; ``""``: none). Blocks retraining unless forced.
    """
    run_id = run_key(run_id)
    store, schema = _open(store_uri, schema_uri)
    config = pipeline_config(min_new_labels=min_new_labels, perf_drop=perf_drop,
                             max_age_days=max_age_days)
    registry = Registry(store, model_name)
    drift = _read_json_artifact(DriftReport, drift_path, "drift report")
    decision = loop.run_decide(registry, loop.load_champion(registry),
                               _window(read_frame(records_path)), drift, schema,
                               now=logical_time(now), config=config, force=force,
                               canary_in_progress=canary_in_progress or None)
    record_result(store, run_id, "decision", decision)
    return decision


# --- train ---------------------------------------------------------------------------------


def _recorded(store: Store, run_id: str, name: str, cls: type[Any]) -> Any:
    """This run's recorded result ``runs/<run-id>/<name>.json``, or None."""
    key = f"runs/{run_id}/{name}.json"
    return loads(cls, store.read_text(key)) if store.exists(key) else None


def train_step(
    store_uri: str, schema_uri: str, model_name: str, records_path: str | Path, *,
    run_id: str, now: str, model_dir: str | Path, eval_path: str | Path,
) -> TrainSummary:
    """Train and register a challenger; write its model folder and its evaluation set.

    The registered version is downloaded (sha256-verified) into ``model_dir``; the rows
    held out from training go to ``eval_path`` as Parquet. Records ``train.json``.

    Args:
        store_uri: Store root.
        schema_uri: Schema file.
        model_name: Model name in the registry.
        records_path: Parquet file of the lookback's records (from :func:`ingest_step`).
        run_id: The run's id (made path-safe by :func:`run_key`).
        now: The run's logical time (ISO-8601).
        model_dir: Folder to receive ``model.joblib``, ``metadata.json`` and the profile.
        eval_path: Where to write the held-out evaluation set.
    """
    run_id = run_key(run_id)
    store, schema = _open(store_uri, schema_uri)
    registry = Registry(store, model_name)
    decision, drift = _recorded(store, run_id, "decision", RetrainDecision), _recorded(
        store, run_id, "drift", DriftReport)
    outcome = loop.run_train(store, registry, loop.load_champion(registry),
                             _window(read_frame(records_path)), schema,
                             now=logical_time(now), config=Config(), model_name=model_name,
                             decision=decision, drift=drift)
    _write_frame(outcome.eval_set, eval_path)
    registry.download(outcome.version, Path(model_dir))
    summary = loop.summarise_training(outcome, registry)
    record_result(store, run_id, "train", summary)
    return summary


# --- evaluate ------------------------------------------------------------------------------


@dataclass
class Curves:
    """The challenger's confusion matrix and ROC curve on the evaluation set.

    Attributes:
        labels: Class names, in the order of the matrix rows (true) and columns (predicted).
        matrix: Confusion counts.
        positive: The class the ROC curve is for (``micro-average`` for > 2 classes).
        fpr: False positive rates.
        tpr: True positive rates.
        thresholds: Score thresholds (capped at 1).
    """

    labels: list[str]
    matrix: list[list[int]]
    positive: str
    fpr: list[float]
    tpr: list[float]
    thresholds: list[float]


def classification_curves(model: Any, eval_set: pd.DataFrame, schema: Schema) -> Curves:
    """Confusion matrix and ROC of ``model`` on the labelled rows of ``eval_set``.

    Binary: the ROC of the second class (``classes_[1]``); more classes: the micro-average
    of the one-vs-rest curves.
    """
    from sklearn.metrics import confusion_matrix, roc_curve

    df = eval_set.loc[eval_set["label"].notna()] if "label" in eval_set else eval_set.iloc[0:0]
    classes = [str(c) for c in model.classes_]
    if df.empty:  # a first model without fresh held-out labels: nothing to draw
        zeros = [[0] * len(classes) for _ in classes]
        return Curves(classes, zeros, classes[-1] if classes else "", [], [], [])
    y = df["label"].astype(str).to_numpy()
    pred, proba = predict_frame(model, df, schema)
    matrix = confusion_matrix(y, np.asarray(pred, dtype=str), labels=classes)
    if len(classes) == 2:
        positive, truth, score = classes[1], (y == classes[1]).astype(int), proba[:, 1]
    else:
        onehot = (y[:, None] == np.asarray(classes)[None, :]).astype(int)
        positive, truth, score = "micro-average", onehot.ravel(), proba.ravel()
    if truth.min() == truth.max():  # one class only: no curve is defined
        fpr = tpr = thresholds = np.array([])
    else:
        fpr, tpr, thresholds = roc_curve(truth, score)
    return Curves(classes, matrix.astype(int).tolist(), positive, fpr.tolist(), tpr.tolist(),
                  np.minimum(thresholds, 1.0).tolist())


@dataclass
class EvaluateOutcome:
    """The gate's verdict on the challenger, with its classification curves."""

    verdict: Verdict
    curves: Curves

    @property
    def decision(self) -> str:
        """``promote``, ``needs_approval`` or ``reject``."""
        return self.verdict.decision

    def metrics(self) -> dict[str, float]:
        """Evaluation metrics for the KFP Metrics artifact."""
        v = self.verdict
        values: dict[str, Any] = {f"challenger_{k}": x for k, x in v.challenger.metrics.items()}
        if v.champion is not None:
            values |= {f"champion_{k}": x for k, x in v.champion.metrics.items()}
            values["champion_latency_p95_ms"] = v.champion.latency_p95_ms
        values |= {"improvement_rel": v.improvement_rel, "ci_low": v.ci_low,
                   "ci_high": v.ci_high, "eval_rows": v.challenger.n,
                   "challenger_latency_p95_ms": v.challenger.latency_p95_ms}
        return _finite_metrics(values)


def evaluate_step(
    store_uri: str, schema_uri: str, model_name: str, model_dir: str | Path,
    eval_path: str | Path, *, run_id: str, auto_threshold: float = GateConfig.auto_threshold,
) -> EvaluateOutcome:
    """Score the challenger in ``model_dir`` against the champion and apply the gate.

    Records ``runs/<run-id>/verdict.json`` and ``verdict.md``.

    Args:
        store_uri: Store root.
        schema_uri: Schema file.
        model_name: Model name in the registry.
        model_dir: The challenger's folder (from :func:`train_step`); its
            ``metadata.json`` names the registered version, which is loaded verified.
        eval_path: Parquet evaluation set (from :func:`train_step`).
        run_id: The run's id (made path-safe by :func:`run_key`).
        auto_threshold: Relative improvement needed to promote without a person.
    """
    run_id = run_key(run_id)
    store, schema = _open(store_uri, schema_uri)
    config = pipeline_config(auto_threshold=auto_threshold)
    registry = Registry(store, model_name)
    meta_path = Path(model_dir) / "metadata.json"
    try:
        version = ModelMetadata.from_json(meta_path.read_text()).version
    except FileNotFoundError:
        raise DriftloopError(f"{meta_path}: the challenger's metadata does not exist") from None
    eval_set = read_frame(eval_path)
    verdict = loop.run_evaluate(registry, loop.load_champion(registry), version, eval_set,
                                schema, config)
    record_result(store, run_id, "verdict", verdict)
    curves = classification_curves(registry.load_model(version), eval_set, schema)
    return EvaluateOutcome(verdict, curves)


# --- notify and promote ----------------------------------------------------------------------


def _notifier_config(webhook: str) -> NotifyConfig:
    return NotifyConfig(backend="webhook", webhook_url=webhook) if webhook else NotifyConfig()


def notify_step(
    verdict_path: str | Path, *, model_name: str, run_id: str, webhook: str = "",
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

    Raises:
        NotificationError: A webhook is set and the delivery failed.
    """
    run_id = run_key(run_id)
    verdict = _read_json_artifact(Verdict, verdict_path, "verdict")
    if verdict is None:
        raise DriftloopError(f"{verdict_path}: no verdict to announce")
    version = verdict.challenger.version
    details = {"version": version, "decision": verdict.decision, "reasons": verdict.reasons,
               "primary_metric": verdict.primary_metric,
               "improvement_rel": verdict.improvement_rel}
    if verdict.decision == "promote":
        event = Event("model_update", f"promoting {version} to champion", model_name, details,
                      run_id=run_id)
    else:
        event = Event("info", f"{version}: verdict {verdict.decision}, no model change",
                      model_name, details, run_id=run_id)
    return notify_or_raise(make_notifier(_notifier_config(webhook)), event,
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


def promote_step(
    store_uri: str, model_name: str, verdict_path: str | Path, *, run_id: str,
    isvc_name: str = "", namespace: str = "", rollout_backend: str = "local",
    rollout_state: str = "",
) -> PromoteOutcome:
    """Start the challenger's canary when the verdict says promote.

    With a rollout backend and an InferenceService the challenger starts as a canary at
    the first traffic step (:func:`driftloop.rollout.progressive.start_canary`; the first model is
    deployed at 100% and promoted at once); later runs advance it. Without (``none`` or
    no ``isvc_name``) the champion alias moves at once. The announcement is
    :func:`notify_step`'s job (it runs first), so nothing is sent here. Records
    ``runs/<run-id>/aliases.json`` (and ``rollout.json``).

    Args:
        store_uri: Store root.
        model_name: Model name in the registry.
        verdict_path: The verdict JSON (from :func:`evaluate_step`).
        run_id: The run's id (made path-safe by :func:`run_key`).
        isvc_name: The InferenceService serving the model (``""``: registry only).
        namespace: Its Kubernetes namespace.
        rollout_backend: ``local``, ``kubernetes`` or ``none`` (registry only).
        rollout_state: The local backend's state folder (``""``: ``<store>/rollout``).
    """
    run_id = run_key(run_id)
    store = open_store(store_uri)
    verdict = _read_json_artifact(Verdict, verdict_path, "verdict")
    if verdict is None:
        raise DriftloopError(f"{verdict_path}: no verdict to act on")
    registry = Registry(store, model_name)
    backend = None
    if verdict.decision == "promote":
        backend = _backend(store_uri, isvc_name, namespace, rollout_backend, rollout_state)
    try:
        aliases = loop.run_promote(registry, verdict, notifier=NullNotifier(), run_id=run_id,
                                   model_name=model_name, backend=backend)
    finally:
        if backend is not None:
            backend.close()
    record_result(store, run_id, "aliases", aliases)
    version = verdict.challenger.version
    promoted = verdict.decision == "promote" and aliases.champion == version
    rollout = progressive.recorded_step(registry, run_id) if backend is not None else None
    return PromoteOutcome(version, promoted, aliases, isvc_name, namespace, rollout)


@dataclass
class RunStatus(JsonResult):
    """How a run ended, as recorded in ``runs/<run-id>/status.json`` by the exit task.

    Attributes:
        state: ``SUCCEEDED``, ``FAILED`` or ``CANCELLED``.
        error: The error message of a failed run.
        task: The task (or task group) the status is about.
        finished_at: When the exit task ran (ISO-8601 UTC).
        notified: Whether a failure notification was delivered.
        delivery_error: Why a failure notification was not delivered.
    """

    state: str
    error: str = ""
    task: str = ""
    finished_at: str = ""
    notified: bool = False
    delivery_error: str | None = None


def exit_step(
    store_uri: str, *, model_name: str, run_id: str, state: str, error: str = "",
    task: str = "", webhook: str = "",
) -> RunStatus:
    """Record how the run ended and send a ``failure`` event unless it succeeded.

    Never raises for a store or delivery problem: the run's outcome is already decided;
    what could not be recorded or delivered is logged and returned.

    Args:
        store_uri: Store root.
        model_name: Model name.
        run_id: The run's id (made path-safe by :func:`run_key`).
        state: The final state of the pipeline's body (``SUCCEEDED``, ``FAILED``, ...).
        error: The error message of a failed body.
        task: The task the status is about.
        webhook: ``http(s)://`` URL for the failure event (``""``: log it).
    """
    run_id = run_key(run_id)
    status = RunStatus(state=state, error=error, task=task,
                       finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    if state != SUCCEEDED:
        event = Event("failure", f"run {run_id} of {model_name} ended {state}", model_name,
                      {"state": state, "error": error, "task": task}, run_id=run_id)
        try:
            delivery = make_notifier(_notifier_config(webhook)).send(event)
        except DriftloopError as exc:  # e.g. a malformed webhook URL
            delivery = Delivery("webhook", False, str(exc))
        status.notified, status.delivery_error = delivery.ok, delivery.error
    try:
        record_result(open_store(store_uri), run_id, "status", status)
    except (DriftloopError, OSError) as exc:
        logger.warning("run %s: could not record the final status: %s", run_id, exc)
    return status


# --- reading a run back ----------------------------------------------------------------------


@dataclass
class RunRecord:
    """Everything one run recorded under ``runs/<run-id>/`` (``None``: not recorded)."""

    run_id: str
    ingest: IngestReport | None = None
    drift: DriftReport | None = None
    decision: RetrainDecision | None = None
    train: TrainSummary | None = None
    verdict: Verdict | None = None
    aliases: AliasState | None = None
    rollout: RolloutStep | None = None
    status: RunStatus | None = None
    recorded: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The decision chain, one line per step that ran."""
        out = []
        if self.ingest is not None:
            out.append(f"ingest   {self.ingest.summary()}")
        if self.drift is not None:
            out.append(f"drift    {self.drift.status}: "
                       + ("; ".join(self.drift.reasons) or "no feature drifted"))
        elif self.decision is not None:
            out.append("drift    skipped: no champion yet")
        if self.decision is not None:
            out.append(f"decide   {'retrain' if self.decision.retrain else 'no retrain'}: "
                       + "; ".join(self.decision.reasons))
        if self.train is not None:
            t = self.train
            score = "n/a" if t.validation_score is None else f"{t.validation_score:.3f}"
            out.append(f"train    {t.version}: {t.train_rows} rows, validation "
                       f"{t.primary_metric}={score}")
        if self.verdict is not None:
            out.append(f"evaluate {self.verdict.decision}: " + "; ".join(self.verdict.reasons))
        if self.aliases is not None:
            out.append(f"registry champion={self.aliases.champion} "
                       f"previous={self.aliases.previous}")
        if self.rollout is not None:
            r = self.rollout
            out.append(f"rollout  {r.action} {r.version} {r.from_percent}% -> "
                       f"{r.to_percent}%: " + "; ".join(r.reasons))
        if self.status is not None:
            extra = f": {self.status.error}" if self.status.error else ""
            out.append(f"status   {self.status.state}{extra}")
        return out


#: What a run writes under ``runs/<run-id>/`` (``<name>.json``, some also ``.md``), in order.
_RECORD_TYPES: dict[str, type[Any]] = {
    "ingest": IngestReport, "drift": DriftReport, "decision": RetrainDecision,
    "train": TrainSummary, "verdict": Verdict, "aliases": AliasState,
    "rollout": RolloutStep, "status": RunStatus,
}


def list_runs(store: Store) -> list[str]:
    """The ids of every run recorded in the store, sorted."""
    return sorted({key.split("/")[1] for key in store.list("runs") if key.count("/") >= 2})


def read_run(store: Store, run_id: str) -> RunRecord:
    """Read back what run ``run_id`` recorded.

    Raises:
        DriftloopError: The store has no record of the run.
    """
    record = RunRecord(run_id)
    for name, cls in _RECORD_TYPES.items():
        key = f"runs/{run_id}/{name}.json"
        if store.exists(key):
            setattr(record, name, loads(cls, store.read_text(key)))
            record.recorded.append(name)
    if not record.recorded:
        raise DriftloopError(f"{store.url(f'runs/{run_id}')}: no run recorded under this id")
    return record
