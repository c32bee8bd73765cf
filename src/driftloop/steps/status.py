"""The exit step: how a run ended (``runs/<run-id>/status.json``), and a failure event."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from driftloop.data.runs import record_result
from driftloop.data.storage import Store
from driftloop.errors import DriftloopError
from driftloop.notify import Delivery, Event, make_notifier
from driftloop.serde import JsonResult
from driftloop.steps.common import (
    as_store,
    notifier_config,
    run_key,
)

logger = logging.getLogger(__name__)

SUCCEEDED = "SUCCEEDED"


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
    store: Store | str, *, model_name: str, run_id: str, state: str, error: str = "",
    task: str = "", webhook: str = "",
) -> RunStatus:
    """Record how the run ended and send a ``failure`` event unless it succeeded.

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
    """
    run_id = run_key(run_id)
    status = RunStatus(state=state, error=error, task=task,
                       finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    if state != SUCCEEDED:
        event = Event("failure", f"run {run_id} of {model_name} ended {state}", model_name,
                      {"state": state, "error": error, "task": task}, run_id=run_id)
        try:
            delivery = make_notifier(notifier_config(webhook)).send(event)
        except DriftloopError as exc:  # e.g. a malformed webhook URL
            delivery = Delivery("webhook", False, str(exc))
        status.notified, status.delivery_error = delivery.ok, delivery.error
    try:
        record_result(as_store(store), run_id, "status", status)
    except (DriftloopError, OSError) as exc:
        logger.warning("run %s: could not record the final status: %s", run_id, exc)
    return status
