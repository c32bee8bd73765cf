"""The alert rules under promtool (Debian's ``prometheus`` package ships it).

``promtool check rules`` validates both shipped forms; ``promtool test rules`` runs the
unit tests in ``tests/monitoring/rules_test.yaml`` (each alert firing and not firing).
A unit test that cannot fail proves nothing: each threshold, moved, must break the cases
of its alert.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftloop.serving.alerts import Thresholds, alert_rules
from driftloop.serving.monitoring import PROMETHEUS_RULE_FILE, RULES_FILE, render

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "manifests" / "monitoring"
UNIT_TESTS = Path(__file__).with_name("rules_test.yaml")


@pytest.fixture(scope="module")
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: `make test` installs Debian's prometheus "
                    "package, which ships it (apt-get install prometheus, as root)")
    return exe


def _run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False)


def test_promtool_checks_the_rules_file(promtool: str) -> None:
    done = _run(promtool, "check", "rules", MONITORING / RULES_FILE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_the_prometheusrule_holds_the_same_groups(promtool: str, tmp_path: Path) -> None:
    rule = yaml.safe_load((MONITORING / PROMETHEUS_RULE_FILE).read_text())
    plain = yaml.safe_load((MONITORING / RULES_FILE).read_text())
    assert rule["kind"] == "PrometheusRule" and rule["spec"] == plain
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(rule["spec"]))
    done = _run(promtool, "check", "rules", tmp_path / "spec.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_runs_the_unit_tests(promtool: str) -> None:
    done = _run(promtool, "test", "rules", UNIT_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _cases() -> list[dict[str, Any]]:
    return list(yaml.safe_load(UNIT_TESTS.read_text())["tests"])


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _cases():
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert firing == names and quiet == names, (names - firing, names - quiet)


#: One moved threshold per alert; each must break that alert's unit cases.
MUTATIONS = {
    "DriftloopLiveAccuracyLow": [{"min_accuracy": 0.4}, {"min_labels": 30},
                                 {"accuracy_window": "30m"}],
    "DriftloopDriftPersisting": [{"drift_for": "26h"}],
    "DriftloopChampionTooOld": [{"champion_max_age_days": 40.0}],
    "DriftloopCanaryStuck": [{"canary_stuck": "4d"}],
    "DriftloopCanaryRolledBack": [{"rollback_window": "4h"}],
    "DriftloopPredictorErrors": [{"error_ratio": 0.2}, {"min_requests": 3},
                                 {"error_window": "1m"}],
    "DriftloopSinkErrors": [{"error_ratio": 0.2}],
    "DriftloopFeedbackStopped": [{"feedback_silence": "2d"}],
    "DriftloopRunFailed": [],  # no threshold: the mutation below flips the comparison
    "DriftloopRunMissing": [{"run_max_gap_hours": 40.0}],
}


def test_every_alert_has_a_mutation() -> None:
    assert set(MUTATIONS) == {r["alert"] for r in alert_rules()}
    fields = {f.name for f in dataclasses.fields(Thresholds)}
    moved = {k for changes in MUTATIONS.values() for c in changes for k in c}
    assert moved == fields, fields - moved


def _only(alert: str, rules_path: Path, tmp_path: Path) -> Path:
    """The unit cases of ``alert`` alone, run against ``rules_path``."""
    doc = yaml.safe_load(UNIT_TESTS.read_text())
    doc["rule_files"] = [str(rules_path)]
    doc["tests"] = [c for c in doc["tests"]
                    if any(t["alertname"] == alert for t in c["alert_rule_test"])]
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(("alert", "changes"), [
    (alert, changes) for alert, options in MUTATIONS.items() for changes in options])
def test_a_moved_threshold_fails_its_unit_tests(promtool: str, tmp_path: Path, alert: str,
                                                changes: dict[str, Any]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(render(Thresholds(**changes))[RULES_FILE])
    unchanged = tmp_path / "unchanged.yaml"
    unchanged.write_text(render()[RULES_FILE])
    assert _run(promtool, "test", "rules", _only(alert, unchanged, tmp_path)).returncode == 0
    done = _run(promtool, "test", "rules", _only(alert, rules, tmp_path))
    assert done.returncode != 0 and alert in done.stdout + done.stderr, done.stdout


def test_a_flipped_comparison_fails_its_unit_tests(promtool: str, tmp_path: Path) -> None:
    doc = yaml.safe_load(render()[RULES_FILE])
    rule = next(r for r in doc["groups"][0]["rules"] if r["alert"] == "DriftloopRunFailed")
    rule["expr"] = rule["expr"].replace("== 0", "== 1")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(doc))
    done = _run(promtool, "test", "rules", _only("DriftloopRunFailed", rules, tmp_path))
    assert done.returncode != 0 and "DriftloopRunFailed" in done.stdout + done.stderr
