"""The pipeline's steps: one module per step, each called by its KFP component and by the loop.

A step function takes the store, the schema and the artifact paths, does its work over
the core (:mod:`driftloop.data`, :mod:`driftloop.models`, :mod:`driftloop.decide`,
:mod:`driftloop.rollout`), records its typed result under ``runs/<run-id>/`` and returns
a typed outcome that knows its Markdown, JSON and metrics. Nothing here imports kfp, so
every step is unit-tested as a plain function.

=========================  ====================================  ======================
step                       module                                component
=========================  ====================================  ======================
:func:`ingest_step`        :mod:`driftloop.steps.ingest`         ``ingest``
:func:`analyse_canary_step` :mod:`driftloop.steps.canary`        ``analyse_canary``
:func:`drift_step`         :mod:`driftloop.steps.drift`          ``detect_drift``
:func:`decide_step`        :mod:`driftloop.steps.decide`         ``decide_retrain``
:func:`train_step`         :mod:`driftloop.steps.train`          ``train_model``
:func:`evaluate_step`      :mod:`driftloop.steps.evaluate`       ``evaluate_challenger``
:func:`notify_step`        :mod:`driftloop.steps.promote`        ``notify``
:func:`promote_step`       :mod:`driftloop.steps.promote`        ``promote_model``
:func:`exit_step`          :mod:`driftloop.steps.status`         ``notify_on_exit``
=========================  ====================================  ======================

The in-process loop (:mod:`driftloop.steps.loop`) calls the same functions in the
pipeline's order. Component bodies call ``steps.<name>_step``: that is why this package
names them (the compiled YAML holds those bodies).
"""

from driftloop.steps.canary import analyse_canary_step
from driftloop.steps.decide import decide_step
from driftloop.steps.drift import drift_step
from driftloop.steps.evaluate import evaluate_step
from driftloop.steps.ingest import ingest_step
from driftloop.steps.promote import notify_step, promote_step
from driftloop.steps.status import exit_step
from driftloop.steps.train import train_step

__all__ = [
    "analyse_canary_step", "decide_step", "drift_step", "evaluate_step", "exit_step",
    "ingest_step", "notify_step", "promote_step", "train_step",
]
