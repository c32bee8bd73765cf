"""Run the pipeline on this machine through ``kfp.local`` (SubprocessRunner, no venv).

Every task runs as a subprocess of the current interpreter, which has driftloop
installed, so the components import the same code as in the image. The pipeline is the
one in ``pipelines/continuous_training.yaml`` without the storage-credentials secret
(a local run uses the local store, or the caller's own credentials for ``gs://``).

After the run, the decision chain is read back from ``runs/<run-id>/`` in the store:
nothing is taken from KFP's outputs.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import io
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from driftloop.config import Config
from driftloop.errors import DriftloopError

#: Config fields a pipeline run can set, as (section, field, pipeline parameter).
PIPELINE_THRESHOLDS: tuple[tuple[str, str, str], ...] = (
    ("drift", "p_value", "p_value"),
    ("drift", "effect_threshold", "effect_threshold"),
    ("drift", "min_samples", "min_samples"),
    ("trigger", "min_new_labels", "min_new_labels"),
    ("trigger", "perf_drop", "perf_drop"),
    ("trigger", "max_age_days", "max_age_days"),
    ("gate", "auto_threshold", "auto_threshold"),
    ("canary", "min_labelled", "canary_min_labelled"),
    ("canary", "max_holds", "canary_max_holds"),
    ("drift", "shards", "drift_shards"),  # n shards: the list [0, ..., n-1]
    ("ingest", "shards", "ingest_shards"),  # the same
    ("tuning", "tuning_seconds", "tuning_seconds"),
    ("tuning", "storage", "tuning_storage"),
    ("tuning", "updates", "warm_updates"),
)
#: ``tuning.enabled`` and ``tuning.n_trials`` are one pipeline parameter: ``n_trials`` 0 is off.
_TUNING_SWITCH = {("tuning", "enabled"), ("tuning", "n_trials")}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The last line of a task's traceback, e.g. "driftloop.errors.StoreError: x: does not exist".
_EXCEPTION = re.compile(r"^\s*((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception): .*)$",
                        re.MULTILINE)


@dataclass
class LocalRun:
    """The outcome of one local pipeline run.

    Attributes:
        run_id: The run's id (its folder under ``runs/`` in the store).
        state: ``SUCCEEDED`` or ``FAILED``.
        seconds: Wall time of the run.
        tasks: The tasks that ran, in the order they finished.
        record: What the run recorded in the store (``None`` if nothing was).
        error: For a failed run, kfp's message and the failing task's exception (when
            the tasks' output was captured).
        log: The tasks' output (empty when it was streamed elsewhere).
    """

    run_id: str | None
    state: str
    seconds: float
    tasks: list[str] = field(default_factory=list)
    record: Any = None
    error: str | None = None
    log: str = ""

    @property
    def ok(self) -> bool:
        """Whether the run succeeded."""
        return self.state == "SUCCEEDED"


def pipeline_arguments(config: Config) -> dict[str, Any]:
    """The pipeline's threshold parameters and webhook from a :class:`Config`.

    Raises:
        DriftloopError: ``config`` changes a field that is not a pipeline parameter
            (a pipeline run could not honour it), or asks for SMTP notifications.
    """
    default = Config()
    settable = {(section, name) for section, name, _ in PIPELINE_THRESHOLDS}
    fixed = [
        f"{section}.{f.name}"
        # runtime: a task's threads come from its pod's CPU limit (driftloop.threads)
        for section in ("drift", "trigger", "train", "tuning", "gate", "canary", "runtime")
        for f in dataclasses.fields(getattr(default, section))
        if (section, f.name) not in settable | _TUNING_SWITCH
        and getattr(getattr(config, section), f.name) != getattr(getattr(default, section), f.name)
    ]
    if fixed:
        raise DriftloopError(f"config: {', '.join(fixed)} cannot be set for a pipeline run; "
                             "its parameters are "
                             + ", ".join(f"{s}.{n}" for s, n, _ in PIPELINE_THRESHOLDS))
    if config.notify.backend == "smtp":
        raise DriftloopError("config: notify.backend smtp is not available in the pipeline; "
                             "use a webhook")
    args: dict[str, Any] = {
        param: getattr(getattr(config, section), name)
        for section, name, param in PIPELINE_THRESHOLDS
    }
    args["drift_shards"] = list(range(config.drift.shards))  # the ParallelFor's items
    args["ingest_shards"] = list(range(config.ingest.shards))
    args["n_trials"] = config.tuning.n_trials if config.tuning.enabled else 0
    args["notify_webhook"] = (config.notify.webhook_url or ""
                              if config.notify.backend == "webhook" else "")
    return args


def _run_dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()


def _finished_tasks(run_dir: Path) -> list[str]:
    # a ParallelFor's tasks sit one level down, in for-loop-<k>-iteration-<i>/<task>/
    done = [*run_dir.glob("*/executor_output.json"),
            *run_dir.glob("for-loop-*-iteration-*/*/executor_output.json")]
    return [p.parent.name for p in sorted(done, key=lambda p: p.stat().st_mtime_ns)]


def run_local(
    store_uri: str,
    schema_uri: str,
    model_name: str,
    *,
    run_date: str = "",
    force_retrain: bool = False,
    window_days: int | None = None,
    lookback_days: int | None = None,
    config: Config | None = None,
    isvc_name: str = "",
    namespace: str = "local",
    pipeline_root: str | Path | None = None,
    stream: TextIO | None = None,
    canary_only: bool = False,
    pushgateway_url: str = "",
) -> LocalRun:
    """Run the continuous-training pipeline (or the canary analysis) once through ``kfp.local``.

    Args:
        store_uri: Store root (a folder, or ``gs://`` with the caller's credentials).
        schema_uri: Schema file.
        model_name: Model name in the registry.
        run_date: ISO date of the logical run (``""``: today, UTC).
        force_retrain: Retrain regardless of the rules.
        window_days: Current window for drift (default: the pipeline's).
        lookback_days: Days read for labels (default: the pipeline's).
        config: Thresholds and webhook (see :func:`pipeline_arguments`).
        isvc_name: InferenceService name passed to the pipeline (default: the model name).
        namespace: Its namespace.
        pipeline_root: Where kfp.local keeps the task artifacts; default a temporary
            folder removed after the run.
        stream: Where the tasks' output goes (default: captured in :attr:`LocalRun.log`).
        canary_only: Run the ``canary-analysis`` pipeline instead (ingest → analyse_canary);
            arguments it does not declare are left out.
        pushgateway_url: A Pushgateway the exit task pushes the run's decisions to.

    Returns:
        The run's outcome with the decision chain read back from the store. A failed run
        is returned (``state == "FAILED"``), not raised.
    """
    from kfp import local

    from driftloop.data.storage import open_store
    from driftloop.kfp.pipeline import build_canary_pipeline, build_pipeline
    from driftloop.steps.common import run_key
    from driftloop.steps.records import read_run

    arguments: dict[str, Any] = {
        "store_uri": str(store_uri), "schema_uri": str(schema_uri), "model_name": model_name,
        "isvc_name": isvc_name or model_name, "namespace": namespace, "run_date": run_date,
        "force_retrain": force_retrain, **pipeline_arguments(config or Config()),
        "pushgateway_url": pushgateway_url,
    }
    if window_days is not None:
        arguments["window_days"] = window_days
    if lookback_days is not None:
        arguments["lookback_days"] = lookback_days
    store = open_store(store_uri)
    if canary_only:
        pipeline = build_canary_pipeline(gcs_secret="", schedule_time=False)
        declared = set(pipeline.component_spec.inputs or {})
        arguments = {k: v for k, v in arguments.items() if k in declared}
    else:
        pipeline = build_pipeline(gcs_secret="", schedule_time=False)
    temporary = pipeline_root is None
    root = Path(tempfile.mkdtemp(prefix="driftloop-kfp-") if temporary else str(pipeline_root))
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = _run_dirs(root)
    captured = io.StringIO()
    out = stream if stream is not None else captured
    state, error = "SUCCEEDED", None
    start = time.perf_counter()
    # kfp 2.17's local runner patches builtins.print around every task
    # (kfp/local/logging_utils.py::indented_print) and restores what it found; the
    # iterations of a ParallelFor run in threads (parallel_executor.py), so an
    # interleaved restore can leave the indenting print installed for good, which then
    # writes four spaces to stdout before every later print of this process.
    original_print = builtins.print
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
                   raise_on_error=True)
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            # The project image holds this very interpreter's packages: not a mismatch.
            warnings.filterwarnings("ignore", message=".*non-Python base image",
                                    category=RuntimeWarning)
            try:
                pipeline(**arguments)
            except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE"
                state, error = "FAILED", _ANSI.sub("", str(exc))
        seconds = time.perf_counter() - start
        new = sorted(_run_dirs(root) - before)
        run_dir = root / new[-1] if new else None
        tasks = _finished_tasks(run_dir) if run_dir is not None else []
    finally:
        builtins.print = original_print
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    log = captured.getvalue()
    if error is not None:
        causes = _EXCEPTION.findall(log)
        if causes:
            error += f" Cause: {causes[-1].strip()}"
    run_id = run_key(run_dir.name) if run_dir is not None else None
    record = None
    if run_id is not None:
        with contextlib.suppress(DriftloopError):
            record = read_run(store, run_id)
    return LocalRun(run_id, state, seconds, tasks, record, error, log)


def print_chain(run: LocalRun, file: TextIO | None = None) -> None:
    """Print a local run's decision chain, one line per step, then the outcome."""
    out = file or sys.stderr
    lines = run.record.lines() if run.record is not None else []
    for line in lines:
        print(line, file=out)
    where = f"runs/{run.run_id}/" if run.run_id else "(no run record)"
    print(f"kfp.local {run.state.lower()} in {run.seconds:.1f}s: {len(run.tasks)} tasks "
          f"({', '.join(run.tasks)}); records under {where}", file=out)
    if run.error:
        print(f"error: {run.error}", file=out)
