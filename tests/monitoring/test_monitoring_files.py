"""The generated monitoring files: committed = fresh generation, and well formed.

The dashboard JSON, ``rules.yaml`` and ``prometheusrule.yaml`` under
``manifests/monitoring/`` come from ``python -m driftloop.serving.monitoring``; this test
fails when someone edits the code and forgets ``make monitoring`` (or edits the files by
hand). The queries themselves run against a real Prometheus in
``tests/e2e/test_monitoring.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest
import yaml

from driftloop.serving.alerts import Thresholds, alert_rules
from driftloop.serving.dashboard import dashboard, queries
from driftloop.serving.monitoring import (
    DASHBOARD_FILE,
    RULES_FILE,
    comparisons,
    disarm,
    main,
    render,
    stale,
    substitute,
    variable_values,
)

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"


def test_the_committed_files_are_a_fresh_generation() -> None:
    assert stale(MONITORING) == [], "run `make monitoring` and commit the result"
    assert main(["--check", str(MONITORING)]) == 0


def test_check_names_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    (tmp_path / RULES_FILE).write_text((tmp_path / RULES_FILE).read_text() + "# edited\n")
    assert main(["--check", str(tmp_path)]) == 1
    assert f"{tmp_path / RULES_FILE}: differs from a fresh generation" in capsys.readouterr().err


def test_thresholds_come_from_the_flags(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--min-accuracy", "0.85", "--canary-stuck", "5d"]) == 0
    rules = yaml.safe_load((tmp_path / RULES_FILE).read_text())["groups"][0]["rules"]
    by_name = {r["alert"]: r for r in rules}
    assert ") < 0.85\n" in by_name["DriftloopLiveAccuracyLow"]["expr"]
    assert by_name["DriftloopCanaryStuck"]["for"] == "5d"
    assert "[5d]" in by_name["DriftloopCanaryStuck"]["expr"]
    assert main(["--check", str(tmp_path), "--min-accuracy", "0.85", "--canary-stuck",
                 "5d"]) == 0


def test_the_dashboard_has_the_panels_the_issue_asks_for() -> None:
    model = json.loads((MONITORING / DASHBOARD_FILE).read_text())
    titles = {p["title"] for p in model["panels"] if p["type"] != "row"}
    assert {"Live accuracy per version", "Prediction confidence", "p95 latency per version",
            "5xx ratio per version", "Drift effect per feature", "Label lag",
            "Canary traffic", "Champion age"} <= titles
    names = {a["name"] for a in model["annotations"]["list"] if "expr" in a}
    assert names == {"Retrain", "Canary step", "Promotion", "Rollback"}
    accuracy = next(p for p in model["panels"] if p["title"] == "Live accuracy per version")
    expr = accuracy["targets"][0]["expr"]
    assert "driftloop_feedback_correct_total" in expr and "driftloop_feedback_labels_total" in expr
    drift = next(p for p in model["panels"] if p["title"] == "Drift effect per feature")
    assert [t["expr"].split("(")[2].split("{")[0] for t in drift["targets"]] == [
        "driftloop_drift_effect", "driftloop_drift_effect_threshold"]


def test_panels_sit_on_the_grid_without_overlapping() -> None:
    model = dashboard()
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in model["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        mine = {(x, y) for x, y in itertools.product(range(g["x"], g["x"] + g["w"]),
                                                     range(g["y"], g["y"] + g["h"]))}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and all(t["datasource"] == panel["datasource"]
                                            for t in panel["targets"])


def test_every_query_uses_only_defined_variables() -> None:
    model = dashboard()
    values = variable_values(model)
    assert values == {"model_name": ".*", "model": ".*", "window": "1h"}
    for where, expr in queries(model):
        text = substitute(expr, values)
        assert "$" not in text, (where, text)
    with pytest.raises(KeyError, match=r"\$modle"):
        substitute('up{model=~"$modle"}', values)


def test_disarm_makes_each_comparison_a_bool_one() -> None:
    assert disarm("(x) > 0.05\nand\n(y) >= 20") == "(x) > bool 0.05\nand\n(y) >= bool 20"
    assert disarm("(time() - t) > 129600") == "(time() - t) > bool 129600"
    assert disarm("(a) == 0 and on (p) (b) != -1") == "(a) == bool 0 and on (p) (b) != bool -1"
    # label matchers and quoted values are left alone; disarming twice changes nothing
    text = 'sum(rate(r{code=~"5..", outcome!="rejected", le="0.5"}[5m])) < .7'
    assert disarm(text) == text.replace("< .7", "< bool .7")
    assert disarm(disarm(text)) == disarm(text)
    assert comparisons(text) == 1 and comparisons(disarm(text)) == 0


def test_every_alert_compares_a_signal_with_a_number() -> None:
    for rule in alert_rules():
        assert comparisons(rule["expr"]) >= 1, rule["alert"]
        assert comparisons(disarm(rule["expr"])) == 0
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} == set(rule["annotations"])


def test_every_alert_has_its_own_threshold_fields() -> None:
    """A threshold that no expression uses would be a flag that does nothing."""
    default = {r["alert"]: r for r in alert_rules()}
    for field, other in {"min_accuracy": 0.5, "accuracy_window": "3h", "min_labels": 9,
                         "drift_for": "9h", "champion_max_age_days": 9.0,
                         "canary_stuck": "9d", "rollback_window": "9d", "error_ratio": 0.09,
                         "error_window": "9m", "min_requests": 9, "feedback_silence": "9h",
                         "run_max_gap_hours": 9.0}.items():
        moved = {r["alert"]: r for r in alert_rules(Thresholds(**{field: other}))}
        assert moved != default, field
    assert set(render()) == {"driftloop-dashboard.json", "rules.yaml", "prometheusrule.yaml"}


def test_the_readme_shows_every_alert_as_generated() -> None:
    readme = (MONITORING / "README.md").read_text()
    for rule in alert_rules():
        heading = (f"### `{rule['alert']}` ({rule['labels']['severity']}, for "
                   f"{rule.get('for', '0m')})")
        assert heading in readme, heading
        assert f"```promql\n{rule['expr']}\n```" in readme, rule["alert"]
    for field in dataclasses.fields(Thresholds):
        assert f"`{field.name}`" in readme, field.name
