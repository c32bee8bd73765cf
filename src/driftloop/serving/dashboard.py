"""The Grafana dashboard of the loop, as JSON generated from code.

:func:`dashboard` returns the dashboard model Grafana stores (``schemaVersion`` 39, the
Grafana 10.x/11.x JSON model: ``panels[]`` with ``gridPos`` on a 24-column grid,
``targets[]`` of Prometheus queries, ``templating.list`` variables and
``annotations.list`` queries); :mod:`driftloop.serving.monitoring` writes it to
``manifests/monitoring/driftloop-dashboard.json``, which the overlays ship as a ConfigMap
for Grafana's dashboard sidecar. Layout, top to bottom::

    +-- Live quality ---------------------------------------------------------------+
    | live accuracy per version (16)  [annotations]  | labelled responses (8)       |
    +-- Serving --------------------------------------------------------------------+
    | p95 latency per version (8) | 5xx ratio per version (8) | requests/s (8)      |
    | confidence heatmap (12)               | confidence p10 / p50 per version (12) |
    +-- Feedback -------------------------------------------------------------------+
    | label lag p50 / p95 (12)              | feedback rows by outcome (12)         |
    +-- The loop -------------------------------------------------------------------+
    | drift effect per feature vs its threshold (12) | canary traffic % (12)        |
    | champion age (6) | champion version (6) | latest run (6) | since last run (6) |
    | trigger rules fired (12)              | gate verdict (6) | improvement (6)    |
    +--------------------------------------------------------------------------------+

Annotations on every time-series panel, from the pushed series (a change marks the
moment a run pushed it): *retrain* (a run decided to retrain), *canary* (the canary's
traffic share changed), *promotion* (a new champion: its created timestamp changed) and
*rollback* (a run's pushed rollout action).

Variables: ``datasource`` (a Prometheus data source), ``model_name`` (the serving and
sink series' ``model_name``), ``model`` (the pushed series' ``model``: the registry's
name) and ``window`` (the rolling window of live accuracy, 1h-7d). Queries use Grafana's
``$__rate_interval`` for rates; :func:`driftloop.serving.monitoring.substitute` replaces
the variables the way Grafana would (All = ``.*``), so tests can run every query.
"""

from __future__ import annotations

from typing import Any

UID = "driftloop-loop"
TITLE = "driftloop: the loop at work"
DS = {"type": "prometheus", "uid": "${datasource}"}
SERVING = 'model_name=~"$model_name"'
PUSHED = 'model=~"$model"'
BY_VERSION = "model_name, model_version"


def _target(expr: str, legend: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref,
            "range": True, **extra}


class _Grid:
    """Places panels left to right on Grafana's 24-column grid, a row at a time."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0
        self.height = 0

    def _id(self) -> int:
        return len(self.panels) + 1

    def row(self, title: str) -> None:
        self.newline()
        self.panels.append({"type": "row", "id": self._id(), "title": title,
                            "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def newline(self) -> None:
        if self.x:
            self.y += self.height
            self.x = self.height = 0

    def add(self, panel: dict[str, Any], w: int, h: int = 8) -> None:
        if self.x + w > 24:
            self.newline()
        panel = {"id": self._id(), "datasource": DS, **panel,
                 "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y}}
        self.panels.append(panel)
        self.x += w
        self.height = max(self.height, h)


def _timeseries(title: str, description: str, targets: list[dict[str, Any]], *,
                unit: str = "short", minimum: float | None = None,
                maximum: float | None = None, step: bool = False,
                overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "unit": unit,
        "custom": {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 0,
                   "showPoints": "never", "spanNulls": True,
                   "lineInterpolation": "stepAfter" if step else "linear"},
    }
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return {"type": "timeseries", "title": title, "description": description,
            "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["lastNotNull"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def _stat(title: str, description: str, targets: list[dict[str, Any]], *, unit: str,
          text_mode: str = "value", thresholds: list[dict[str, Any]] | None = None,
          mappings: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "stat", "title": title, "description": description, "targets": targets,
            "fieldConfig": {"defaults": {
                "unit": unit, "mappings": mappings or [],
                "thresholds": {"mode": "absolute", "steps": thresholds or [
                    {"color": "green", "value": None}]}}, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                          "values": False},
                        "textMode": text_mode, "colorMode": "value", "graphMode": "none"}}


def _quality(grid: _Grid) -> None:
    grid.row("Live quality")
    labels, correct = (f"sum by ({BY_VERSION}) (increase(driftloop_feedback_{name}_total"
                       f"{{{SERVING}}}[$window]))" for name in ("labels", "correct"))
    grid.add(_timeseries(
        "Live accuracy per version",
        "Feedback labels equal to the prediction / labels joined, over the rolling window "
        "$window, per model version (counted by the payload sink). Annotations: retrain, "
        "canary step, promotion, rollback.",
        [_target(f"{correct}\n/\n{labels}", "{{model_name}} {{model_version}}", "A")],
        unit="percentunit", minimum=0, maximum=1), w=16)
    grid.add(_timeseries(
        "Labelled responses per version",
        "Labels joined to a logged prediction within $window: how much evidence the "
        "accuracy beside it rests on.",
        [_target(labels, "{{model_name}} {{model_version}}", "A")]), w=8)


def _serving(grid: _Grid) -> None:
    grid.row("Serving")
    requests = f"driftloop_serving_requests_total{{{SERVING}}}"
    grid.add(_timeseries(
        "p95 latency per version",
        "95th percentile of the predictor's request latency per model version.",
        [_target("histogram_quantile(0.95, sum by (model_name, model_version, le) "
                 f"(rate(driftloop_serving_request_duration_seconds_bucket{{{SERVING}}}"
                 "[$__rate_interval])))", "{{model_name}} {{model_version}}", "A")],
        unit="s", minimum=0), w=8)
    grid.add(_timeseries(
        "5xx ratio per version",
        "Share of the predictor's answers that are 5xx, per model version (the payload "
        "log never sees them: KServe logs responses only for HTTP 200).",
        [_target(f'sum by ({BY_VERSION}) (rate(driftloop_serving_requests_total'
                 f'{{{SERVING}, code=~"5.."}}[$__rate_interval]))\n/\n'
                 f"sum by ({BY_VERSION}) (rate({requests}[$__rate_interval]))",
                 "{{model_name}} {{model_version}}", "A")],
        unit="percentunit", minimum=0), w=8)
    grid.add(_timeseries(
        "Requests per second per version",
        "The predictor's answers per second by version and status code: the canary's "
        "share of the traffic shows here.",
        [_target(f"sum by ({BY_VERSION}, code) (rate({requests}[$__rate_interval]))",
                 "{{model_version}} {{code}}", "A")], unit="reqps", minimum=0), w=8)
    grid.add({
        "type": "heatmap", "title": "Prediction confidence",
        "description": "Distribution of the predicted class's probability, all versions "
                       "(driftloop_prediction_confidence buckets): a drift of the inputs "
                       "often shows as falling confidence before any label arrives.",
        "targets": [_target("sum by (le) (increase(driftloop_prediction_confidence_bucket"
                            f"{{{SERVING}}}[$__rate_interval]))", "{{le}}", "A",
                            format="heatmap")],
        "options": {"calculate": False, "yAxis": {"unit": "percentunit"},
                    "cellGap": 1, "color": {"mode": "scheme", "scheme": "Blues"},
                    "rowsFrame": {"layout": "le"}},
        "fieldConfig": {"defaults": {}, "overrides": []}}, w=12)
    grid.add(_timeseries(
        "Confidence p10 / p50 per version",
        "Median and 10th percentile of the predicted class's probability per version.",
        [_target(f"histogram_quantile({q}, sum by ({BY_VERSION}, le) "
                 f"(rate(driftloop_prediction_confidence_bucket{{{SERVING}}}"
                 "[$__rate_interval])))", f"p{int(q * 100)} {{{{model_version}}}}", ref)
         for q, ref in ((0.5, "A"), (0.1, "B"))],
        unit="percentunit", minimum=0, maximum=1), w=12)


def _feedback(grid: _Grid) -> None:
    grid.row("Feedback")
    grid.add(_timeseries(
        "Label lag",
        "Time from a prediction to its feedback label (p50 and p95), per model.",
        [_target(f"histogram_quantile({q}, sum by (model_name, le) "
                 f"(rate(driftloop_feedback_label_lag_seconds_bucket{{{SERVING}}}"
                 "[$__rate_interval])))", f"p{int(q * 100)} {{{{model_name}}}}", ref)
         for q, ref in ((0.5, "A"), (0.95, "B"))], unit="s", minimum=0), w=12)
    grid.add(_timeseries(
        "Feedback rows by outcome",
        "Feedback rows per second: joined to a logged prediction, relabelled, unmatched "
        "(no prediction in the sink's memory) and rejected bodies.",
        [_target("sum by (outcome) (rate(driftloop_feedback_received_total"
                 "[$__rate_interval]))", "{{outcome}}", "A")], unit="short", minimum=0),
        w=12)


def _loop(grid: _Grid) -> None:
    grid.row("The loop")
    threshold_override = {
        "matcher": {"id": "byFrameRefID", "options": "B"},
        "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                       {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}]}
    grid.add(_timeseries(
        "Drift effect per feature",
        "Each feature's effect size (PSI by default) at the latest run, with the effect a "
        "significant feature needs to count as drifted (dashed).",
        [_target(f"max by (feature) (driftloop_drift_effect{{{PUSHED}}})", "{{feature}}",
                 "A"),
         _target(f"max by (feature) (driftloop_drift_effect_threshold{{{PUSHED}}})",
                 "threshold {{feature}}", "B")],
        step=True, minimum=0, overrides=[threshold_override]), w=12)
    grid.add(_timeseries(
        "Canary traffic",
        "Percent of the traffic on the canary after each run (0: none, or rolled back).",
        [_target(f"max by (model) (driftloop_canary_traffic_percent{{{PUSHED}}})",
                 "{{model}}", "A")], unit="percent", minimum=0, maximum=100, step=True),
        w=12)
    grid.add(_stat(
        "Champion age", "Age of the champion at the end of the latest run.",
        [_target(f"max by (model) (driftloop_champion_age_seconds{{{PUSHED}}})", "{{model}}",
                 "A", instant=True)], unit="s",
        thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 14 * 86400},
                    {"color": "red", "value": 30 * 86400}]), w=6, h=5)
    grid.add(_stat(
        "Champion version", "The registry version the champion alias points at.",
        [_target(f"max by (model, version) (driftloop_champion_info{{{PUSHED}}})",
                 "{{version}}", "A", instant=True)], unit="none", text_mode="name"), w=6, h=5)
    grid.add(_stat(
        "Latest run", "Whether the latest run succeeded.",
        [_target(f"min by (pipeline, model) (driftloop_run_success{{{PUSHED}}})",
                 "{{pipeline}}", "A", instant=True)], unit="none",
        mappings=[{"type": "value", "options": {
            "0": {"text": "failed", "color": "red", "index": 0},
            "1": {"text": "succeeded", "color": "green", "index": 1}}}]), w=6, h=5)
    grid.add(_stat(
        "Since the latest run", "Time since the latest run ended (pushed by its exit step).",
        [_target(f"time() - max by (pipeline, model) "
                 f"(driftloop_run_finished_timestamp_seconds{{{PUSHED}}})", "{{pipeline}}",
                 "A", instant=True)], unit="s",
        thresholds=[{"color": "green", "value": None},
                    {"color": "red", "value": 36 * 3600}]), w=6, h=5)
    grid.add(_stat(
        "Trigger rules fired", "The retrain trigger's rules that fired in the latest run "
        "(none: no retrain was due).",
        [_target(f"max by (rule) (driftloop_trigger_rule_fired{{{PUSHED}}}) == 1", "{{rule}}",
                 "A", instant=True)], unit="none", text_mode="name"), w=12, h=5)
    grid.add(_stat(
        "Gate verdict", "The promotion gate's verdict on the latest challenger.",
        [_target(f"max by (decision) (driftloop_verdict{{{PUSHED}}}) == 1", "{{decision}}",
                 "A", instant=True)], unit="none", text_mode="name"), w=6, h=5)
    grid.add(_stat(
        "Challenger's improvement", "The latest challenger's relative error reduction over "
        "the champion, as the gate measured it.",
        [_target(f"max by (model) (driftloop_gate_improvement_ratio{{{PUSHED}}})", "{{model}}",
                 "A", instant=True)], unit="percentunit"), w=6, h=5)


def _annotation(name: str, expr: str, color: str, title: str) -> dict[str, Any]:
    return {"name": name, "datasource": DS, "enable": True, "iconColor": color,
            "expr": expr, "step": "60s", "titleFormat": title,
            "textFormat": "{{pipeline}} {{model}}", "tagKeys": "pipeline,model",
            "useValueForTime": False}


def annotation_queries() -> list[dict[str, Any]]:
    """The annotation queries (retrain, canary step, promotion, rollback)."""
    return [
        _annotation("Retrain",
                    f"(changes(driftloop_run_finished_timestamp_seconds{{{PUSHED}}}[2m])) > 0\n"
                    "and on (pipeline, model)\n"
                    f"(driftloop_retrain_decision{{{PUSHED}}}) == 1", "blue", "retrain"),
        _annotation("Canary step",
                    f"(changes(driftloop_canary_traffic_percent{{{PUSHED}}}[2m])) > 0",
                    "orange", "canary step"),
        _annotation("Promotion",
                    f"(changes(driftloop_champion_created_timestamp_seconds{{{PUSHED}}}[2m]))"
                    " > 0", "green", "new champion"),
        _annotation("Rollback",
                    f"(changes(driftloop_rollout_action{{{PUSHED},action=\"rollback\"}}[2m]))"
                    " > 0\nand\n"
                    f"(driftloop_rollout_action{{{PUSHED},action=\"rollback\"}}) == 1", "red",
                    "rollback"),
    ]


def _variables() -> list[dict[str, Any]]:
    def label_values(name: str, metric: str, label: str) -> dict[str, Any]:
        query = f"label_values({metric}, {label})"
        return {"name": name, "label": label, "type": "query", "datasource": DS,
                "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
                "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "sort": 1}

    windows = ["1h", "6h", "1d", "7d"]
    return [
        {"name": "datasource", "label": "Prometheus", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0},
        label_values("model_name", "driftloop_serving_requests_total", "model_name"),
        label_values("model", "driftloop_run_success", "model"),
        {"name": "window", "label": "accuracy window", "type": "custom",
         "query": ",".join(windows),
         "current": {"selected": True, "text": windows[0], "value": windows[0]},
         "options": [{"selected": w == windows[0], "text": w, "value": w} for w in windows]},
    ]


def dashboard() -> dict[str, Any]:
    """The dashboard model (what Grafana's JSON export writes)."""
    grid = _Grid()
    _quality(grid)
    _serving(grid)
    _feedback(grid)
    _loop(grid)
    return {
        "uid": UID,
        "title": TITLE,
        "description": "driftloop: live accuracy per version, serving, feedback and the "
                       "loop's decisions (generated by python -m driftloop.serving."
                       "monitoring; edit the code, not this JSON).",
        "tags": ["driftloop", "mlops", "kserve"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-7d", "to": "now"},
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
             "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
             "name": "Annotations & Alerts", "type": "dashboard"},
            *annotation_queries()]},
        "templating": {"list": _variables()},
        "panels": grid.panels,
    }


def queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """Every ``(where, PromQL)`` of a dashboard model: panel targets and annotations."""
    out = []
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for item in model["annotations"]["list"]:
        if "expr" in item:
            out.append((f"annotation {item['name']!r}", item["expr"]))
    return out


__all__ = ["TITLE", "UID", "annotation_queries", "dashboard", "queries"]
