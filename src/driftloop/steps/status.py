"""The exit step: how a run ended (``runs/<run-id>/status.json``), and a failure event."""

from __future__ import annotations

import datetime as dt
import logging

from driftloop.data.runs import RunStatus, record_result
from driftloop.data.storage import Store
from driftloop.errors import DriftloopError
from driftloop.notify import Delivery, Event, Notifier, make_notifier
from driftloop.steps.common import (
    as_store,
    logged_step,
    notifier_config,
    run_key,
)

logger = logging.getLogger(__name__)

SUCCEEDED = "SUCCEEDED"




@logged_step("notify_on_exit")
def exit_step(
    store: Store | str, *, model_name: str, run_id: str, state: str, error: str = "",
    task: str = "", webhook: str = "", pushgateway_url: str = "",
    pipeline_name: str = "continuous-training", notifier: Notifier | None = None,
) -> RunStatus:
    """Record how the run ended, send a ``failure`` event unless it succeeded, push metrics.

    Never raises for a store or delivery problem: the run's outcome is already decided;
    what could not be recorded or delivered is logged and returned.

    Args:
        store: The store, or its root URI.
        model_name: Model name.
        run_id: The run's id (made path-safe by :func:`run_key`).
        state: The final state of the pipeline's body (``SUCCEEDED``, ``FAILED``, ...).
        error: The error message of a failed body.
        task: The task the status is about.
        webhook: ``http(s)://`` URL for the failure event (``""``: log it).
        pushgateway_url: A Prometheus Pushgateway's base URL: the run's decisions are
            pushed there as gauges (:mod:`driftloop.steps.pushgateway`; ``""``: none).
        pipeline_name: The pipeline, part of the Pushgateway grouping key.
        notifier: Sends the failure event instead of ``webhook`` (an in-process caller's).
    """
    run_id = run_key(run_id)
    status = RunStatus(state=state, error=error, task=task,
                       finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    if state != SUCCEEDED:
        event = Event("failure", f"run {run_id} of {model_name} ended {state}", model_name,
                      {"state": state, "error": error, "task": task}, run_id=run_id)
        try:
            delivery = (notifier or make_notifier(notifier_config(webhook))).send(event)
        except DriftloopError as exc:  # e.g. a malformed webhook URL
            delivery = Delivery("webhook", False, str(exc))
        status.notified, status.delivery_error = delivery.ok, delivery.error
    try:
        store = as_store(store)
        record_result(store, run_id, "status", status)
    except (DriftloopError, OSError) as exc:
        logger.warning("run %s: could not record the final status: %s", run_id, exc)
        return status
    if pushgateway_url:
        from driftloop.steps.pushgateway import push_run

        try:
            status.pushed = push_run(store, run_id, model_name, url=pushgateway_url,
                                     pipeline=pipeline_name)
        except (DriftloopError, OSError) as exc:
            status.push_error = str(exc)
            logger.warning("run %s: %s", run_id, exc)
        try:  # the push's outcome, beside the state it reported
            record_result(store, run_id, "status", status)
        except (DriftloopError, OSError) as exc:
            logger.warning("run %s: could not record the push: %s", run_id, exc)
    return status
