"""A run's decisions as Prometheus metrics, pushed to a Pushgateway when the run ends.

A pipeline run is a batch job: nothing is left to scrape once it ends, so the exit step
pushes what the run recorded under ``runs/<run-id>/`` to a Prometheus Pushgateway (the
convention for batch jobs), and Prometheus scrapes the gateway. The grouping key is
``job="driftloop"``, ``pipeline`` and ``model``: each run replaces its pipeline's group
(HTTP PUT), so the series always describe the latest run of that pipeline for that model
and their number stays bounded. No run id is a label (one new series per run would grow
without bound); ``driftloop_run_info`` names nothing but the bounded ``state``.

Names follow Prometheus' conventions: the ``driftloop_`` prefix, base units (seconds,
ratios as 0..1), gauges only (a push replaces values, it does not accumulate them).
Label sets are bounded: ``feature`` (the schema's columns), ``rule`` (the trigger's
rules), ``decision`` (three verdicts), ``state`` (three run states), ``action`` (the
rollout policy's seven actions), ``version`` (one
series: the current champion).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from driftloop.clock import parse_time
from driftloop.data.storage import Store
from driftloop.errors import DriftloopError
from driftloop.models.registry import AliasChange, Registry
from driftloop.rollout.progressive import ACTIONS
from driftloop.steps.records import RunRecord, read_run

logger = logging.getLogger(__name__)

JOB = "driftloop"
VERDICTS = ("promote", "needs_approval", "reject")
STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class Sample:
    """One gauge value: metric name, help text, labels, value."""

    name: str
    help: str
    labels: tuple[tuple[str, str], ...]
    value: float


def _samples(record: RunRecord, *, champion_created: str | None, champion: str | None,
             now: dt.datetime, rolled_back: bool = False) -> list[Sample]:
    out: list[Sample] = []

    def add(name: str, help_: str, value: float | None, **labels: str) -> None:
        if value is None or not math.isfinite(float(value)):
            return  # an absent series says "not measured"; NaN would plot as a gap anyway
        out.append(Sample(f"driftloop_{name}", help_, tuple(sorted(labels.items())),
                          float(value)))

    status = record.status
    if status is not None:
        for state in STATES:
            add("run_info", "1 for the state the latest run ended in.",
                float(status.state == state), state=state)
        add("run_success", "1 when the latest run succeeded, else 0.",
            float(status.state == "SUCCEEDED"))
        if status.finished_at:
            end = parse_time(status.finished_at)
            add("run_finished_timestamp_seconds", "When the latest run ended (Unix time).",
                end.timestamp())
            started = record.ingest.started_at if record.ingest is not None else ""
            if started:
                add("run_duration_seconds", "Wall time of the latest run, ingest to exit.",
                    (end - parse_time(started)).total_seconds())
    if record.ingest is not None:
        c = record.ingest.counts
        add("ingest_rows", "Rows read by the latest run's ingest.", c.rows_in, outcome="in")
        add("ingest_rows", "Rows read by the latest run's ingest.", c.accepted,
            outcome="accepted")
        add("ingest_rows", "Rows read by the latest run's ingest.", c.quarantined,
            outcome="quarantined")
        add("ingest_rows", "Rows read by the latest run's ingest.", c.duplicates,
            outcome="duplicate")
    drift = record.drift
    if drift is not None:
        add("drift_detected", "1 when the latest run found drift, 0 when not (absent: "
            "insufficient data or no champion).",
            float(drift.drifted) if drift.status in ("drift", "no_drift") else None)
        add("drift_features_drifted", "Features the latest run found drifted.",
            len(drift.drifted_features))
        add("drift_current_rows", "Rows of the current window compared for drift.",
            drift.n_current)
        for f in drift.features:
            add("drift_statistic", "The feature's test statistic (KS D, chi-squared).",
                f.statistic, feature=f.name)
            add("drift_p_value", "The feature's test p-value before correction.",
                f.p_value, feature=f.name)
            add("drift_effect", "The feature's effect size (PSI by default).", f.effect,
                feature=f.name)
            add("drift_effect_threshold", "The effect size a significant feature needs.",
                f.effect_threshold, feature=f.name)
    decision = record.decision
    if decision is not None:
        add("retrain_decision", "1 when the latest run decided to retrain.",
            float(decision.retrain))
        for rule in decision.rules:
            add("trigger_rule_fired", "1 when the trigger rule fired in the latest run.",
                float(rule.fired), rule=rule.name)
    if record.train is not None:
        add("training_rows", "Rows the latest challenger was trained on.",
            record.train.train_rows)
    verdict = record.verdict
    if verdict is not None:
        for name in VERDICTS:
            add("verdict", "1 for the gate's verdict on the latest challenger.",
                float(verdict.decision == name), decision=name)
        add("gate_improvement_ratio", "The challenger's relative error reduction.",
            verdict.improvement_rel)
    if record.rollout is not None or rolled_back:
        # the record keeps the run's last step only: a rollback followed by a new canary
        # in the same run is found in the alias history (``rolled_back``)
        done = {record.rollout.action} if record.rollout is not None else set()
        if rolled_back:
            done.add("rollback")
        for action in ACTIONS:
            add("rollout_action", "1 for each thing the latest run's rollout steps did.",
                float(action in done), action=action)
        step = record.rollout
        add("canary_traffic_percent", "Percent of traffic on the canary after the run.",
            step.to_percent if step is not None and step.action in ("start", "advance", "hold")
            else 0.0)
    if champion is not None:
        add("champion_info", "1, labelled with the champion's version.", 1.0,
            version=champion)
    if champion_created:
        created = parse_time(champion_created)
        add("champion_created_timestamp_seconds", "When the champion was trained.",
            created.timestamp())
        add("champion_age_seconds", "Age of the champion at the end of the latest run.",
            (now - created).total_seconds())
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def exposition(samples: list[Sample]) -> str:
    """The samples in Prometheus' text exposition format (0.0.4), one HELP/TYPE per name."""
    lines: list[str] = []
    seen: set[str] = set()
    for s in sorted(samples, key=lambda s: (s.name, s.labels)):
        if s.name not in seen:
            seen.add(s.name)
            lines += [f"# HELP {s.name} {s.help}", f"# TYPE {s.name} gauge"]
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels)
        lines.append(f"{s.name}{{{labels}}} {s.value!r}" if labels else f"{s.name} {s.value!r}")
    return "\n".join(lines) + "\n"


def run_samples(store: Store, run_id: str, model_name: str, *,
                now: dt.datetime | None = None) -> list[Sample]:
    """The gauges of what run ``run_id`` recorded, with the registry's champion.

    The champion's age is taken at ``now`` (default: the run's logical time, from its
    decision; wall time for a run that decided nothing).
    """
    record = read_run(store, run_id)
    registry = Registry(store, model_name)
    champion = registry.champion()
    created = registry.metadata(champion).get("created_at") if champion else None
    if now is None:  # the run's logical time: a replay's model age is the replayed one
        now = (parse_time(record.decision.decided_at) if record.decision is not None
               else dt.datetime.now(dt.UTC))
    return _samples(record, champion_created=created, champion=champion, now=now,
                    rolled_back=rolled_back(registry.aliases().history, run_id))


def rolled_back(history: list[AliasChange], run_id: str) -> bool:
    """Whether run ``run_id`` cleared a canary without making it the champion (a rollback).

    A completed canary clears the ``canary`` alias too, but in the same run its version
    becomes the champion.
    """
    mine = [c for c in history if c.run_id == run_id]
    promoted = {c.to_version for c in mine if c.alias == "champion"}
    return any(c.alias == "canary" and c.to_version is None and c.from_version is not None
               and c.from_version not in promoted for c in mine)


def group_url(base: str, *, pipeline: str, model: str) -> str:
    """The Pushgateway URL of the group ``job/pipeline/model`` (labels URL-escaped)."""
    if not base.startswith(("http://", "https://")):
        raise DriftloopError(f"pushgateway_url {base!r}: must start with http:// or https://")
    parts = ["metrics", "job", JOB, "pipeline", pipeline, "model", model]
    return base.rstrip("/") + "/" + "/".join(urllib.parse.quote(p, safe="") for p in parts)


def push_run(store: Store, run_id: str, model_name: str, *, url: str, pipeline: str,
             put: Callable[[str, bytes], Any] | None = None) -> int:
    """Push the run's gauges to the Pushgateway at ``url``, replacing its group.

    Returns:
        How many samples were pushed.

    Raises:
        DriftloopError: The gateway did not accept the push (one line: URL and status).
    """
    samples = run_samples(store, run_id, model_name)
    body = exposition(samples).encode()
    target = group_url(url, pipeline=pipeline, model=model_name)
    (put or _http_put)(target, body)
    return len(samples)


def _http_put(url: str, body: bytes) -> None:
    # urllib, not a client library: the pipeline image holds only the core dependencies
    request = urllib.request.Request(url, data=body, method="PUT", headers={
        "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
    try:
        with urllib.request.urlopen(request, timeout=10.0):
            pass
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace").strip()[:200]
        raise DriftloopError(f"{url}: push refused with HTTP {exc.code}: {text}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DriftloopError(f"{url}: push failed ({exc})") from None
