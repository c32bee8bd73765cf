"""The real-data demo end to end: tweets served over HTTP, feedback, the loop per day.

Traffic goes through the local gateway to real predictor servers on 127.0.0.1; the
gateway logs each pair to the real payload sink; the store is then read by the loop. The
in-process run also runs ``--ab static`` (the first champion, frozen, in a sticky A/B test
against the retrained champion); the kfp.local run is the plain demo.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from driftloop.cli import main
from driftloop.data.storage import LocalStore
from driftloop.demo.live import AB_TEST_ID, DemoResult, run_live_demo
from driftloop.demo.traffic import TrafficConfig
from driftloop.errors import DriftloopError
from driftloop.models.registry import Registry

DATA = Path(__file__).resolve().parents[2] / "data"
#: kserve 0.20 answers with ORJSONResponse, which FastAPI deprecates on every request.
pytestmark = pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")


def _lines(store: LocalStore, prefix: str) -> list[dict]:
    return [json.loads(line) for key in store.list(prefix)
            for line in store.read_text(key).splitlines() if line.strip()]


def test_the_tweets_demo_finds_the_topic_change_and_keeps_every_record(tmp_path: Path):
    out = tmp_path / "demo"
    printed = io.StringIO()
    # with the A/B test of the first champion, frozen (--ab static): half of the users'
    # requests go to it; the loop's checks below hold either way (the same traffic)
    result = run_live_demo(out, "tweets", data_dir=DATA, in_process=True, days=4,
                           rows_per_day=300, traffic=TrafficConfig(seed=4), seed=4,
                           stream=printed, ab="static")
    store = LocalStore(out / "store")
    # every prediction was logged by the gateway and stored by the sink, none twice
    records = _lines(store, "requests")
    assert result.log_failures == 0
    assert sorted(r["id"] for r in records) == sorted(result.served["id"])
    assert all(r["logged"] == "pair" and r["model_version"] for r in records)
    # every feedback label the users posted is in the store, on the day it was posted
    feedback = _lines(store, "feedback")
    assert len(feedback) == sum(r.labels for r in result.rows)
    assert 0.15 < len(feedback) / len(records) < 0.31  # 30 % drawn, some still in flight
    days = result.rows[1:]
    assert [r.regime for r in days] == ["airline", "airline", "apple", "apple"]
    # airline traffic is what the champion knows; the apple tweets drift at once
    assert [r.drift for r in days[:2]] == ["no_drift", "no_drift"]
    assert days[2].drift == "drift" and "drift" in days[2].fired and days[2].retrain
    first = result.rows[0].champion
    champion_acc = [r.accuracy[first][1] for r in days]
    assert min(champion_acc[:2]) > max(champion_acc[2:]) + 0.1
    text = printed.getvalue()
    assert "| day | regime | requests |" in text and text.count("\n| ") >= 5
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    # the counterfactual: the first champion, frozen, on the same labelled served rows
    cf = result.counterfactual
    assert cf is not None and cf.static_version == first
    labelled = result.served[result.served["labelled"]]
    assert cf.rows == len(labelled) and cf.excluded == 0  # it trained on the seed rows only
    ok = (labelled["prediction"] == labelled["label"]).groupby(labelled["day"])
    daily = cf.daily.set_index("day")
    assert list(daily.index) == [0, 1, 2, 3]
    assert (daily["labelled"] == ok.size()).all() and (daily["served"] == ok.mean()).all()
    for d, part in labelled.groupby("day"):
        if set(part["model_version"]) == {first}:  # it served that day: the same answers
            assert daily.loc[d, "static"] == daily.loc[d, "served"]
    if set(labelled["model_version"]) == {first}:  # nothing else served: nothing gained
        assert cf.gain == 0.0 and cf.interval == (0.0, 0.0)
    assert cf.retrains == sum(r.retrain for r in days)
    assert "served vs static model (same rows)" in text
    assert next(line.split(" | ")[-1].rstrip(" |") for line in text.splitlines()
                if line.startswith("| ") and " | airline | " in line) == (
        f"{daily.loc[0, 'served']:.2f} vs {daily.loc[0, 'static']:.2f} "
        f"(n={daily.loc[0, 'labelled']})")
    assert cf.line() in text and cf.line().startswith("continuous training: ")
    assert f"at {cf.retrains} retrain" in cf.line() and f"and {cf.promotions} promotion" in (
        cf.line())
    assert "What continuous training bought" in html and "Feature importance by version" in html
    # every version recorded its permutation importance on rows it did not train on
    registry = Registry(store, "tweets")
    for version in registry.versions():
        found = registry.metadata(version)["feature_importance"]
        assert [f["name"] for f in found["features"]] == ["text"] and found["rows"] > 0
        assert found["features"][0]["mean"] > 0
    assert "validation split" in registry.metadata(first)["feature_importance"]["source"]
    _check_static_ab(result, first, text, html)


def _check_static_ab(result: DemoResult, first: str, text: str, html: str) -> None:
    """--ab static: sticky users, the frozen copy answers its variant, the closing line."""
    served = result.served
    assert served.groupby("user")["ab_variant"].nunique().max() == 1
    assert set(served["ab_variant"]) == {"static", "retrained"}
    static = served[served["ab_variant"] == "static"]
    assert set(static["model_version"]) == {first}  # frozen, whatever the loop promoted
    analysis = result.ab
    assert analysis is not None and analysis.test_id == AB_TEST_ID
    assert analysis.mixed_users == 0
    (comparison,) = analysis.comparisons
    assert (comparison.variant, comparison.control) == ("retrained", "static")
    # every label the analysis counted was drawn for a served row of that variant
    labelled = {s.name: s.labelled for s in analysis.variants}
    for name in ("static", "retrained"):
        drawn = int(served.loc[served["ab_variant"] == name, "labelled"].sum())
        assert 0 < labelled[name] <= drawn
    line = next(t for t in text.splitlines() if t.startswith(f"A/B test {AB_TEST_ID} (live"))
    assert "0 saw both variants" in line and f"decision {analysis.decision}" in line
    assert comparison.diff is not None and comparison.ci_low is not None
    assert f"{100 * comparison.diff:+.1f} points" in line
    assert f"[{100 * comparison.ci_low:+.1f}, " in line
    assert AB_TEST_ID in html


def test_a_wrong_ab_mode_or_share_is_refused(tmp_path: Path):
    with pytest.raises(DriftloopError, match="ab: 'dynamic' is not one of static"):
        run_live_demo(tmp_path / "x", ab="dynamic")
    with pytest.raises(DriftloopError, match=r"ab_share: must be within \(0, 1\)"):
        run_live_demo(tmp_path / "x", ab="static", ab_share=1.0)


def test_make_demo_runs_the_pipeline_through_kfp_local(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--scenario", "tweets", "--out", str(out), "--data", str(DATA),
                 "--days", "1"]) == 0
    text = capsys.readouterr().out
    assert "pipeline runs through kfp.local" in text
    store = LocalStore(out / "store")
    runs = sorted(p.name for p in (out / "store" / "runs").iterdir())
    assert len(runs) == 2 and all(r.startswith("continuous-training") for r in runs)
    status = [json.loads(store.read_text(f"runs/{r}/status.json"))["state"] for r in runs]
    assert status == ["SUCCEEDED", "SUCCEEDED"]
    assert len(_lines(store, "requests")) == 1000
    assert (out / "report.html").exists() and (out / "served.csv").exists()
