"""Run records: what each step of a run decided, under ``runs/<run-id>/`` in the store.

The lowest floor the steps share (only the store and serialisation below it), so the loop,
the rollout policy and the KFP steps all record results without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from driftloop.clock import utc_now_iso
from driftloop.data.storage import Store
from driftloop.serde import JsonResult, dumps

__all__ = ["RunFailure", "RunStatus", "record_failure", "record_result"]


def record_result(store: Store, run_id: str, name: str, result: Any) -> str:
    """Write a step's result as ``runs/<run-id>/<name>.json`` (and ``.md`` when renderable)."""
    key = f"runs/{run_id}/{name}.json"
    store.write_text(key, dumps(result) + "\n")
    if hasattr(result, "to_markdown"):
        store.write_text(f"runs/{run_id}/{name}.md", result.to_markdown())
    return store.url(key)


@dataclass
class RunFailure(JsonResult):
    """Why a run stopped, as recorded in ``runs/<run-id>/failure.json``.

    Attributes:
        error: The exception's type.
        message: Its message.
        failed_at: When it was recorded (wall clock, UTC).
        retry: What a retry of the same run does.
    """

    error: str
    message: str
    failed_at: str
    retry: str = ("the same inputs resume it: a version already registered with the same "
                  "training data is reused, finished steps are written again")


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
        pushed: Samples pushed to the Pushgateway (0: none pushed).
        push_error: Why the push to the Pushgateway failed.
    """

    state: str
    error: str = ""
    task: str = ""
    finished_at: str = ""
    notified: bool = False
    delivery_error: str | None = None
    pushed: int = 0
    push_error: str | None = None


def record_failure(store: Store, run_id: str, exc: BaseException) -> str | None:
    """Record ``exc`` under ``runs/<run-id>/failure.json`` (None: the store refused too)."""
    try:
        return record_result(store, run_id, "failure",
                             RunFailure(type(exc).__name__, str(exc), utc_now_iso()))
    except Exception:  # a read-only or broken store: the original error matters more
        return None
