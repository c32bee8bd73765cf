"""The demo's timeline rows, live accuracy and HTML report."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from driftloop.data.schema import schema_from_dict
from driftloop.demo.report import (
    DayRow,
    attach_counterfactual,
    importance_table,
    print_timeline,
    table_rows,
    write_report,
)
from driftloop.demo.scenarios import Scenario
from driftloop.demo.traffic import DayTraffic, live_accuracy, static_counterfactual

DAY = dt.date(2026, 3, 2)


def _feature(name: str, p: float, threshold: float = 0.0167) -> SimpleNamespace:
    return SimpleNamespace(name=name, test="KS", p_value=p, threshold=threshold,
                           drifted=p < threshold)


def _record(*, drift_p: tuple[float, float] = (0.5, 0.4), retrain: bool = False,
            fired: tuple[str, ...] = (), verdict: str | None = None,
            rollout: tuple[str, str, int, int] | None = None,
            champion: str = "v-one", history: tuple = (), trained: bool = True,
            ) -> SimpleNamespace:
    feats = [_feature("proba[negative]", drift_p[0]), _feature("proba[positive]", drift_p[1])]
    drifted = min(drift_p) < 0.0167
    return SimpleNamespace(
        drift=SimpleNamespace(status="drift" if drifted else "no_drift", features=feats,
                              oov_rate_current=0.2),
        decision=SimpleNamespace(retrain=retrain, fired=list(fired)),
        train=SimpleNamespace() if retrain else None,
        verdict=SimpleNamespace(decision=verdict) if verdict else None,
        rollout=(SimpleNamespace(action=rollout[0], version=rollout[1], from_percent=rollout[2],
                                 to_percent=rollout[3],
                                 completes=rollout[0] == "advance" and rollout[3] == 100,
                                 champion=rollout[1] if rollout[3] == 100 else champion)
                 if rollout else None),
        aliases=SimpleNamespace(champion=champion, history=list(history)) if trained else None,
        run_id="run-1",
    )


def _served(day: int, version: str, correct: int, wrong: int, unlabelled: int) -> list[dict]:
    rows = [{"id": f"{day}-{version}-{i}", "day": day, "model_version": version,
             "prediction": "a", "label": "a" if i < correct else "b",
             "labelled": i < correct + wrong} for i in range(correct + wrong + unlabelled)]
    return rows


def test_live_accuracy_counts_only_labelled_predictions_per_day_and_version():
    served = pd.DataFrame(_served(0, "v1", 3, 1, 5) + _served(1, "v1", 1, 1, 0)
                          + _served(1, "v2", 2, 0, 9))
    acc = live_accuracy(served).set_index(["day", "model_version"])
    assert acc.loc[(0, "v1"), "labelled"] == 4 and acc.loc[(0, "v1"), "accuracy"] == 0.75
    assert acc.loc[(1, "v1"), "accuracy"] == 0.5
    assert acc.loc[(1, "v2"), "labelled"] == 2 and acc.loc[(1, "v2"), "accuracy"] == 1.0
    assert live_accuracy(served.assign(labelled=False)).empty


def test_a_row_carries_the_measured_values_of_the_run():
    traffic = DayTraffic(2, requests=200, rows=1000, feedback_posted=301)
    acc = live_accuracy(pd.DataFrame(_served(2, "v20260304T235959Z-a9606e86", 7, 3, 0)))
    row = DayRow.from_run(2, DAY, "apple",
                          _record(drift_p=(1e-9, 0.2), retrain=True, fired=("drift",),
                                  verdict="promote",
                                  rollout=("start", "v20260304T235959Z-a9606e86", 0, 10)),
                          traffic, acc)
    assert (row.requests, row.rows, row.labels) == (200, 1000, 301)
    assert row.drift == "drift" and row.strongest is not None
    assert row.strongest.name == "proba[negative]"
    assert row.retrain and row.fired == ["drift"] and row.verdict == "promote"
    assert row.canary_percent == 10
    cells = table_rows([row])[0]
    assert cells[0] == "2" and cells[5] == "drift"
    assert "p=1.0e-09 vs 0.0167" in cells[4]
    assert cells[7] == "start …a9606e86 10%"
    assert cells[9] == "…a9606e86 0.70 (n=10)"


def test_the_drift_cell_and_plot_show_the_effect_size_next_to_p():
    record = _record(drift_p=(1e-9, 0.2))
    for f in record.drift.features:
        f.effect, f.effect_threshold = 0.31, 0.1
    row = DayRow.from_run(2, DAY, "apple", record, None,
                          live_accuracy(pd.DataFrame(_served(2, "v1", 1, 0, 0))))
    assert "p=1.0e-09 vs 0.0167, effect 0.31 vs 0.1" in table_rows([row])[0][4]
    assert row.strongest is not None and row.strongest.effect == 0.31


def test_a_blocked_trigger_is_shown_in_brackets_and_a_completed_canary_is_champion():
    # a run that trained nothing records no aliases: the champion comes from the step
    row = DayRow.from_run(3, DAY, "apple",
                          _record(fired=("drift", "performance"),
                                  rollout=("advance", "v-two", 50, 100), trained=False),
                          None, pd.DataFrame())
    cells = table_rows([row])[0]
    assert cells[5] == "(drift,performance)" and not row.retrain
    assert row.canary_percent == 0 and cells[7] == "advance v-two 100%"
    assert cells[8] == "v-two"
    out = io.StringIO()
    print_timeline([row], out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("| day | regime |") and len(lines) == 3


def test_the_report_embeds_both_plots_and_the_timeline(tmp_path: Path):
    schema = schema_from_dict({"name": "t", "labels": ["a", "b"],
                               "columns": [{"name": "text", "kind": "text"}]}, "test")
    scenario = Scenario("t", schema, pd.DataFrame(), [pd.DataFrame()] * 3,
                        ["x", "x", "y"], [2], "a test stream")
    rows = [DayRow.from_run(-1, DAY, "seed", _record(), None, pd.DataFrame())]
    served = []
    for d in range(3):
        served += _served(d, "v-one", 8 if d < 2 else 3, 2 if d < 2 else 7, 4)
        rows.append(DayRow.from_run(d, DAY + dt.timedelta(days=d), scenario.regimes[d],
                                    _record(drift_p=(0.4, 1e-20 if d == 2 else 0.3),
                                            retrain=d == 2, fired=("drift",) if d == 2 else (),
                                            rollout=("rollback", "v-x", 10, 0) if d == 1
                                            else None),
                                    None, live_accuracy(pd.DataFrame(served))))
    path = write_report(tmp_path / "report.html", scenario, rows, pd.DataFrame(served),
                        seconds=12.0, how="in this process")
    text = path.read_text()
    images = text.split("data:image/png;base64,")[1:]
    assert len(images) == 2
    for image in images:
        assert base64.b64decode(image.split("'")[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "True changes on days 2" in text
    assert "Live accuracy over all labelled predictions: 0.633" in text  # (8+8+3)/30
    assert text.count("<tr>") == 1 + len(rows)


def test_a_rollback_before_a_new_start_in_the_same_run_is_shown():
    history = (
        SimpleNamespace(run_id="run-0", alias="canary", from_version=None, to_version="v-old"),
        SimpleNamespace(run_id="run-1", alias="canary", from_version="v-old", to_version=None),
        SimpleNamespace(run_id="run-1", alias="canary", from_version=None, to_version="v-new"),
    )
    row = DayRow.from_run(7, DAY, "coachella",
                          _record(retrain=True, fired=("drift",), verdict="promote",
                                  rollout=("start", "v-new", 0, 10), history=history),
                          None, pd.DataFrame())
    assert row.rolled_back == "v-old"
    assert table_rows([row])[0][7] == "rollback v-old; start v-new 10%"
    quiet = DayRow.from_run(8, DAY, "coachella", _record(history=history[:1]), None,
                            pd.DataFrame())
    assert quiet.rolled_back == "" and table_rows([quiet])[0][7] == "-"


def _scenario() -> Scenario:
    schema = schema_from_dict({"name": "t", "labels": ["a", "b"],
                               "columns": [{"name": "text", "kind": "text"}]}, "test")
    return Scenario("t", schema, pd.DataFrame(), [pd.DataFrame()] * 2, ["x", "y"], [1],
                    "a test stream")


def _importance(**means: float) -> dict:
    feats = sorted(({"name": k, "mean": v, "std": 0.01} for k, v in means.items()),
                   key=lambda f: -f["mean"])
    return {"rows": 50, "source": "evaluation set", "metric": "accuracy", "baseline": 0.8,
            "repeats": 5, "features": feats}


def test_the_importance_table_is_feature_by_version_over_each_versions_top_features():
    importances = {"v-one": _importance(a=0.30, b=0.10, c=0.0, d=-0.01),
                   "v-two": _importance(a=0.05, b=0.02, c=0.25, d=0.0),
                   "v-old": {}}
    header, cells = importance_table(importances, top=2)
    assert header == ["feature", "v-one", "v-two", "v-old"]
    # the union of the top 2 of each version, most important (at its highest) first
    assert [c[0] for c in cells] == ["a", "c", "b"]
    assert cells[0] == ["a", "+0.300", "+0.050", "-"]
    assert cells[1] == ["c", "+0.000", "+0.250", "-"]


def test_the_report_shows_the_counterfactual_and_the_importance_by_version(tmp_path: Path):
    scenario = _scenario()
    served = pd.DataFrame(_served(0, "v-one", 8, 2, 3) + _served(1, "v-two", 9, 1, 0))
    static = pd.Series({i: ("a" if n < 6 else "b") for n, i in enumerate(served["id"])})
    cf = static_counterfactual(served, static, "v-one", retrains=1, promotions=1)
    rows = [DayRow.from_run(-1, DAY, "seed", _record(), None, pd.DataFrame())]
    for d in range(2):
        rows.append(DayRow.from_run(d, DAY + dt.timedelta(days=d), scenario.regimes[d],
                                    _record(), None, live_accuracy(served[served.day == d])))
    attach_counterfactual(rows, cf)
    cells = table_rows(rows)
    assert cells[0][10] == "-"
    day0 = cf.daily.set_index("day").loc[0]
    assert cells[1][10] == f"0.80 vs {day0.static:.2f} (n=10)"
    assert rows[2].static == (10, 0.9, float(cf.daily.set_index("day").loc[1, "static"]))
    path = write_report(tmp_path / "report.html", scenario, rows, served, seconds=1.0,
                        how="in this process", counterfactual=cf,
                        importances={"v-one": _importance(text=0.3),
                                     "v-two": _importance(text=0.4)})
    text = path.read_text()
    assert text.count("data:image/png;base64,") == 3
    assert html.escape(cf.line()) in text and "What continuous training bought" in text
    assert "Feature importance by version" in text
    assert "<tr><td>text</td><td>+0.300</td><td>+0.400</td></tr>" in text
