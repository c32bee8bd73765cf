"""The pipeline's steps: one module per step, each called by its KFP component and by the loop.

A step function takes the store, the schema and the artifact paths, does its work over
the core (:mod:`driftloop.data`, :mod:`driftloop.models`, :mod:`driftloop.decide`,
:mod:`driftloop.rollout`), records its typed result under ``runs/<run-id>/`` and returns
a typed outcome that knows its Markdown, JSON and metrics. Nothing here imports kfp, so
every step is unit-tested as a plain function.

=========================  ====================================  ======================
step                       module                                component
=========================  ====================================  ======================
:func:`ingest_shard_step`  :mod:`driftloop.steps.ingest`         ``ingest_shard``
:func:`ingest_step`        :mod:`driftloop.steps.ingest`         ``ingest``
:func:`analyse_canary_step` :mod:`driftloop.steps.canary`        ``analyse_canary``
:func:`ab_step`            :mod:`driftloop.steps.ab`             ``analyse_ab``
:func:`curate_step`        :mod:`driftloop.steps.review`         ``curate_feedback``
:func:`drift_shard_step`   :mod:`driftloop.steps.drift`          ``drift_shard``
:func:`drift_merge_step`   :mod:`driftloop.steps.drift`          ``detect_drift``
:func:`decide_step`        :mod:`driftloop.steps.decide`         ``decide_retrain``
:func:`train_step`         :mod:`driftloop.steps.train`          (by ``select_challenger``)
:func:`plan_candidates_step` :mod:`driftloop.steps.tune`         ``plan_candidates``
:func:`tune_step`          :mod:`driftloop.steps.tune`           ``tune_candidate``
:func:`select_step`        :mod:`driftloop.steps.tune`           ``select_challenger``
:func:`evaluate_step`      :mod:`driftloop.steps.evaluate`       ``evaluate_challenger``
:func:`notify_step`        :mod:`driftloop.steps.promote`        ``notify``
:func:`promote_step`       :mod:`driftloop.steps.promote`        ``promote_model``
:func:`exit_step`          :mod:`driftloop.steps.status`         ``notify_on_exit``
=========================  ====================================  ======================

The in-process loop (:mod:`driftloop.steps.loop`) calls the same functions in the
pipeline's order. Component bodies call ``steps.<name>_step``: that is why this package
names them (the compiled YAML holds those bodies).
"""

import importlib
from typing import Any

#: Where each step lives. Imported on first use (PEP 562), so a task imports only its own
#: step's module: the notify, promote and exit tasks never load scikit-learn or scipy.
_STEPS = {
    "ab_step": "ab", "analyse_canary_step": "canary", "curate_step": "review",
    "decide_step": "decide", "drift_step": "drift", "drift_shard_step": "drift",
    "drift_merge_step": "drift",
    "evaluate_step": "evaluate", "exit_step": "status", "ingest_step": "ingest",
    "ingest_shard_step": "ingest",
    "notify_step": "promote", "promote_step": "promote", "train_step": "train",
    "plan_candidates_step": "tune", "tune_step": "tune", "select_step": "tune",
}

__all__ = sorted(_STEPS)


def __getattr__(name: str) -> Any:
    if name not in _STEPS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_STEPS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_STEPS])
