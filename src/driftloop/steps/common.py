"""What every step shares: run ids, the pipeline's config knobs, artifact files.

A step takes its store and schema as URIs (a KFP component passes its string parameters)
or as open objects (the in-process loop, :mod:`driftloop.steps.loop`, passes the ones it
holds); :func:`as_store` and :func:`as_schema` accept both. Artifacts between steps are
files: Parquet for row sets, JSON for typed results.

Every ``*_step`` function is wrapped by :func:`logged_step`: what it logs carries the
step's name, its run id and its model (:func:`step_context`), and in a KFP container the
image's ``DRIFTLOOP_LOG_FORMAT`` picks the log format when the first step runs
(:func:`driftloop.logs.configure_from_env`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np

from driftloop.config import Config, NotifyConfig
from driftloop.data.schema import Schema, load_schema
from driftloop.data.storage import Store, open_store
from driftloop.errors import DriftloopError
from driftloop.logs import configure_from_env, log_context
from driftloop.serde import loads
from driftloop.threads import thread_limits

if TYPE_CHECKING:  # pandas loads with the first frame: light steps never read one
    import pandas as pd

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_LOCAL_ITERATION = re.compile(r"(/[A-Za-z0-9_-]+-iteration-\d+)+$")

_P = ParamSpec("_P")
_R = TypeVar("_R")


@contextlib.contextmanager
def step_context(step: str, *, run_id: str | None = None,
                 model: str | None = None) -> Iterator[None]:
    """Log the block's records with ``step``, ``run_id`` and ``model`` (when given).

    The first step of a process also installs the log format of ``DRIFTLOOP_LOG_FORMAT``
    (the pipeline image sets ``json``) unless an entry point chose one already; nothing
    is read at import time. The block runs within the ``step`` thread budget
    (:func:`driftloop.threads.thread_limits`): in a KFP task the pod's CPUs decide it,
    inside ``driftloop run`` the run's budget bounds it. It starts after the step's module
    (and its libraries) loaded, so their pools are sized too.
    """
    configure_from_env()
    with log_context(step=step, run_id=run_id, model=model), thread_limits("step"):
        yield


def logged_step(step: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Run a ``*_step`` function inside :func:`step_context`.

    The run id and the model come from the call's own ``run_id`` and ``model_name``
    arguments (positional or keyword), so the step's signature stays as it is.
    """
    def wrap(func: Callable[_P, _R]) -> Callable[_P, _R]:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                bound = signature.bind_partial(*args, **kwargs).arguments
            except TypeError:  # a wrong call: let the function itself say so
                bound = {}
            with step_context(step, run_id=bound.get("run_id"),
                              model=bound.get("model_name")):
                return func(*args, **kwargs)

        return run

    return wrap


def run_key(job_name: str) -> str:
    """Turn a KFP run (job) name into the ``<run-id>`` folder name of ``runs/``.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``-``; a local
    kfp run name (``continuous-training-2026-01-02-10-00-00-123456``) stays as it is.

    Raises:
        DriftloopError: Nothing usable is left of the name.
    """
    # kfp 2.17's local runner names a ParallelFor iteration's DAG "<run>/<loop>-iteration-<i>"
    # and resolves the job-name placeholder to that inside the loop
    # (kfp/local/orchestrator/task_spec_utils.py::get_nested_pipeline_resource_name);
    # on a cluster every task gets the run's own name. Both mean the same run.
    job_name = _LOCAL_ITERATION.sub("", job_name)
    key = re.sub(r"\.{2,}", ".", _UNSAFE.sub("-", job_name)).strip("-.")[:120]
    if not key:
        raise DriftloopError(f"run id {job_name!r}: needs at least one letter or digit")
    return key


def pipeline_config(
    base: Config | None = None, *, p_value: float | None = None, min_samples: int | None = None,
    effect_threshold: float | None = None, min_new_labels: int | None = None,
    perf_drop: float | None = None,
    max_age_days: float | None = None, auto_threshold: float | None = None,
) -> Config:
    """``base`` (default: :class:`Config`) with the pipeline's threshold parameters applied.

    ``None`` keeps ``base``'s value. The config classes check every value.
    """
    base = base or Config()

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


def shard_count(shards: int | Sequence[int], parameter: str) -> int:
    """The number of shards from a count or from the pipeline's list ``[0, 1, ..., n-1]``.

    ``parameter`` names the pipeline parameter in the error.

    Raises:
        DriftloopError: An empty list, or one that is not ``0..n-1`` in order.
    """
    # a list from a pipeline parameter may hold floats (JSON numbers)
    items = list(range(shards)) if isinstance(shards, int) else [int(s) for s in shards]
    if not items or items != list(range(len(items))):
        given = shards if isinstance(shards, int) else list(shards)
        raise DriftloopError(f"{parameter}: {given} must be [0, 1, ..., n-1] with n >= 1")
    return len(items)


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read a Parquet artifact; a one-line error names a missing or unreadable file."""
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise DriftloopError(f"{path}: file does not exist") from None
    except Exception as exc:
        raise DriftloopError(f"{path}: not a readable Parquet file ({exc})") from None


def write_frame(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a row set as a Parquet artifact (its folder is created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(target, index=False)


def as_store(store: Store | str) -> Store:
    """The store itself, or the store at a URI (a folder or ``gs://bucket/prefix``)."""
    return open_store(store) if isinstance(store, str) else store


def as_schema(schema: Schema | str) -> Schema:
    """The schema itself, or the schema file at a URI (JSON or YAML, local or ``gs://``)."""
    return load_schema(schema) if isinstance(schema, str) else schema


def open_inputs(store: Store | str, schema: Schema | str) -> tuple[Store, Schema]:
    """:func:`as_store` and :func:`as_schema` of a step's first two arguments."""
    return as_store(store), as_schema(schema)


def finite_metrics(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values`` as floats (KFP Metrics reject NaN, None, bools)."""
    out = {}
    for name, value in values.items():
        if value is None or isinstance(value, bool | np.bool_):
            continue
        number = float(value)
        if math.isfinite(number):
            out[name] = number
    return out


def metric_name(text: str) -> str:
    """``text`` as a KFP metric name (letters, digits and ``_``)."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")


def read_json_artifact(cls: type[Any], path: str | Path, what: str) -> Any:
    """A typed result from a JSON artifact (``null``: None); one-line errors name the file."""
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


def recorded(store: Store, run_id: str, name: str, cls: type[Any]) -> Any:
    """This run's recorded result ``runs/<run-id>/<name>.json``, or None."""
    key = f"runs/{run_id}/{name}.json"
    return loads(cls, store.read_text(key)) if store.exists(key) else None


def backend_for(store: Store | str, isvc_name: str, namespace: str, rollout_backend: str,
                rollout_state: str) -> Any:
    """The rollout backend of the run, or None for registry-only (``none`` or no service)."""
    if rollout_backend == "none" or not isvc_name:
        return None
    from driftloop.rollout import make_backend

    store_uri = store if isinstance(store, str) else store.url("")
    return make_backend(rollout_backend, name=isvc_name, namespace=namespace or "default",
                        state_dir=rollout_state or None, store_uri=store_uri)


def notifier_config(webhook: str) -> NotifyConfig:
    """A webhook notifier's config for a URL, else the logging notifier's."""
    return NotifyConfig(backend="webhook", webhook_url=webhook) if webhook else NotifyConfig()
