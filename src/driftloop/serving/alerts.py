"""The alert rules on driftloop's series, as a Prometheus rules file and a PrometheusRule.

One definition (:func:`alert_rules`) makes both files under ``manifests/monitoring/``
(:mod:`driftloop.serving.monitoring` writes them): ``rules.yaml`` for a plain Prometheus
(``rule_files:``; Prometheus' rule-file format, ``docs/configuration/alerting_rules.md``),
and ``prometheusrule.yaml``, the same groups as the ``spec`` of a ``monitoring.coreos.com/v1``
``PrometheusRule`` (prometheus-operator v0.93.0,
``example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml``: ``spec.groups[]``
of ``name`` + ``rules[]`` of ``alert``, ``expr``, ``for``, ``labels``, ``annotations``).
``tests/monitoring/rules_test.yaml`` holds the ``promtool test rules`` cases (each alert
firing and not firing) and ``tests/e2e/test_monitoring.py`` evaluates every expression
against a real Prometheus that scraped a served scenario.

Every threshold is a field of :class:`Thresholds` (flags of ``python -m
driftloop.serving.monitoring``): live accuracy depends on the model, the schedule on the
deployment. Expressions compare a parenthesised signal with a number literal
(``(signal) > 0.05``), so :func:`driftloop.serving.monitoring.disarm` can turn every
comparison into a ``bool`` one and check that each signal has series.

Label sets: the serving and sink series aggregate ``by (namespace, ...)`` so a dev and a
prod namespace scraped by one Prometheus stay apart (no ``namespace`` label outside a
cluster: one group); the pushed series carry ``pipeline`` and ``model`` (the Pushgateway's
grouping key, kept by scraping it with ``honor_labels: true``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: The rules file's group (one group: every rule is evaluated at Prometheus' interval).
GROUP = "driftloop"
SERVING = "namespace, model_name, model_version"


@dataclass(frozen=True)
class Thresholds:
    """What the alert rules compare with (defaults: the committed files).

    Attributes:
        min_accuracy: Live accuracy (labels equal to the prediction) below which a version
            alerts.
        accuracy_window: The window over which live accuracy is counted.
        min_labels: Labels a version needs in that window before its accuracy alerts.
        drift_for: How long the latest runs must keep finding drift (24h = two daily runs).
        champion_max_age_days: Champion age (at the latest run) that alerts: the trigger's
            ``max_age_days`` plus the time a canary takes, or the age beyond which a model
            is stale for this use.
        canary_stuck: How long the canary may keep one traffic share (> 0) before it alerts.
        rollback_window: How long a rollback (a run's pushed rollout action) keeps alerting.
        error_ratio: 5xx answers / all answers (predictor per version, sink per route).
        error_window: Window of that ratio.
        min_requests: Answers the window needs before the ratio alerts.
        feedback_silence: No feedback row for this long while predictions are logged.
        run_max_gap_hours: Hours since the latest run ended that alert (daily runs: 36 h
            is one missed run and a half day).
    """

    min_accuracy: float = 0.7
    accuracy_window: str = "6h"
    min_labels: int = 50
    drift_for: str = "24h"
    champion_max_age_days: float = 30.0
    canary_stuck: str = "3d"
    rollback_window: str = "2d"
    error_ratio: float = 0.05
    error_window: str = "10m"
    min_requests: int = 20
    feedback_silence: str = "1d"
    run_max_gap_hours: float = 36.0


def _number(value: float) -> str:
    """A threshold as PromQL writes it: ``30``, not ``30.0``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _alert(name: str, expr: str, for_: str, severity: str, summary: str,
           description: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_ != "0m":
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


def alert_rules(t: Thresholds | None = None) -> list[dict[str, Any]]:
    """The alerting rules, in the order the README lists them."""
    t = t or Thresholds()
    w = t.accuracy_window
    labels = f"sum by ({SERVING}) (increase(driftloop_feedback_labels_total[{w}]))"
    correct = f"sum by ({SERVING}) (increase(driftloop_feedback_correct_total[{w}]))"
    ew = t.error_window

    def ratio(metric: str, by: str) -> str:
        return (f'(sum by ({by}) (rate({metric}{{code=~"5.."}}[{ew}]))\n'
                f"  / sum by ({by}) (rate({metric}[{ew}]))) > {_number(t.error_ratio)}\n"
                f"and\n(sum by ({by}) (increase({metric}[{ew}]))) >= {t.min_requests}")

    pct = "{{ $value | humanizePercentage }}"
    return [
        _alert("DriftloopLiveAccuracyLow",
               f"({correct}\n  / {labels}) < {_number(t.min_accuracy)}\n"
               f"and\n({labels}) >= {t.min_labels}",
               "30m", "warning",
               "Live accuracy of {{ $labels.model_name }} {{ $labels.model_version }} is "
               f"{pct}",
               f"Feedback labels joined by the sink over {w}: below "
               f"{_number(t.min_accuracy)} with at least {t.min_labels} labels. A retrain "
               "should follow from the trigger's performance rule; check the latest run."),
        _alert("DriftloopDriftPersisting",
               "(driftloop_drift_detected) == 1", t.drift_for, "warning",
               "Drift persists for {{ $labels.model }} ({{ $labels.pipeline }})",
               f"Every run for {t.drift_for} found drift (driftloop_drift_detected == 1); "
               "retraining has not brought the data back to the champion's reference. See "
               "driftloop_drift_effect per feature."),
        _alert("DriftloopChampionTooOld",
               f"(driftloop_champion_age_seconds) > {_number(t.champion_max_age_days * 86400)}",
               "1h", "warning",
               "Champion {{ $labels.model }} is {{ $value | humanizeDuration }} old",
               f"No new champion for more than {_number(t.champion_max_age_days)} days at "
               "the latest run: challengers are not trained or keep losing the gate."),
        _alert("DriftloopCanaryStuck",
               "(driftloop_canary_traffic_percent) > 0\n"
               "and on (pipeline, model)\n"
               f"(changes(driftloop_canary_traffic_percent[{t.canary_stuck}])) == 0",
               t.canary_stuck, "warning",
               "Canary of {{ $labels.model }} stuck at {{ $value }}%",
               f"The canary's traffic share has not changed for {t.canary_stuck}: it holds "
               "for want of labels, or the runs stopped stepping it."),
        _alert("DriftloopCanaryRolledBack",
               "max without (action) (max_over_time(\n"
               f"  driftloop_rollout_action{{action=\"rollback\"}}[{t.rollback_window}])) == 1",
               "0m", "warning",
               "Canary of {{ $labels.model }} was rolled back",
               f"A run in the last {t.rollback_window} rolled the canary back (worse live "
               "accuracy, error rate or latency): see that run's rollout.md."),
        _alert("DriftloopPredictorErrors",
               ratio("driftloop_serving_requests_total", SERVING), "5m", "critical",
               "{{ $labels.model_name }} {{ $labels.model_version }} answers "
               f"{pct} 5xx",
               f"The predictor's 5xx ratio over {ew} exceeds {_number(t.error_ratio)} "
               f"(at least {t.min_requests} requests)."),
        _alert("DriftloopSinkErrors",
               ratio("driftloop_sink_requests_total", "namespace, route"), "5m", "critical",
               "The payload sink answers {{ $labels.route }} with " + pct + " 5xx",
               f"The sink's 5xx ratio over {ew} exceeds {_number(t.error_ratio)}: its store "
               "write fails (503), so logged predictions or feedback are lost upstream."),
        _alert("DriftloopFeedbackStopped",
               f'(sum by (namespace, job) (increase(driftloop_feedback_received_total'
               f'{{outcome!="rejected"}}[{t.feedback_silence}]))) == 0\n'
               "and on (namespace, job)\n"
               f"(sum by (namespace, job) (increase(driftloop_sink_records_total"
               f"[{t.feedback_silence}]))) > 0",
               "1h", "warning",
               "No feedback has arrived for {{ $labels.job }} in " + t.feedback_silence,
               f"Predictions are logged but no feedback row was stored in "
               f"{t.feedback_silence}: live accuracy and the canary's labels stop."),
        _alert("DriftloopRunFailed",
               "(driftloop_run_success) == 0", "0m", "critical",
               "The latest run of {{ $labels.pipeline }} for {{ $labels.model }} failed",
               "driftloop_run_success is 0: the run ended FAILED or CANCELLED "
               "(driftloop_run_info{state}); its runs/<run-id>/ folder says where."),
        _alert("DriftloopRunMissing",
               "(time() - driftloop_run_finished_timestamp_seconds) > "
               f"{_number(t.run_max_gap_hours * 3600)}",
               "0m", "warning",
               "No run of {{ $labels.pipeline }} for {{ $labels.model }} for "
               "{{ $value | humanizeDuration }}",
               f"The latest run ended more than {_number(t.run_max_gap_hours)} h ago: "
               "the recurring run is paused, failing before its exit handler, or cannot "
               "reach the Pushgateway."),
    ]


def rules_file(t: Thresholds | None = None) -> dict[str, Any]:
    """Prometheus' rule-file document: ``{"groups": [{"name", "rules"}]}``."""
    return {"groups": [{"name": GROUP, "rules": alert_rules(t)}]}


def prometheus_rule(t: Thresholds | None = None, *, name: str = "driftloop") -> dict[str, Any]:
    """The same groups as a prometheus-operator ``PrometheusRule`` (namespace: the overlay's)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "driftloop",
                                              "app.kubernetes.io/component": "alerts"}},
        "spec": rules_file(t),
    }


def thresholds_dict(t: Thresholds) -> dict[str, Any]:
    """The thresholds as a plain dict (written into the files' header comment)."""
    return asdict(t)


__all__ = ["GROUP", "Thresholds", "alert_rules", "prometheus_rule", "rules_file",
           "thresholds_dict"]
