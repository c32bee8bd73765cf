"""The whole loop in one process on the generated sample store, day by day."""

import datetime as dt
import json
from pathlib import Path

import pytest

from driftloop.config import Config
from driftloop.data.storage import open_store
from driftloop.demo.sample import sample_schema, write_sample_store
from driftloop.models.registry import Registry
from driftloop.steps.loop import run_loop


def _end_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop") / "store"
    info = write_sample_store(root, days=4, rows_per_day=400, drift_day=2, seed=3)
    store = open_store(root)
    results = [
        run_loop(store, sample_schema(), "sample", now=_end_of(info.first_day + dt.timedelta(d)),
                 run_id=f"day-{d}", config=Config(), lookback_days=4)
        for d in range(info.days)
    ]
    return store, results


def test_first_run_trains_and_promotes_the_first_model(days):
    store, results = days
    first = results[0]
    assert first.drift is None and first.decision.fired == ["no_champion"]
    assert first.verdict is not None and first.verdict.first_model
    assert first.verdict.decision == "promote"
    assert first.aliases is not None and first.aliases.champion == first.train.version
    # The stored model loads only through the sha256 check and predicts the schema's labels.
    model = Registry(store, "sample").load_model(first.train.version)
    assert set(model.classes_) == {"no", "yes"}


def test_quiet_day_does_not_retrain(days):
    _, results = days
    quiet = results[1]
    assert quiet.drift is not None and quiet.drift.status == "no_drift"
    assert not quiet.decision.retrain and quiet.train is None


def test_drift_day_flags_the_shifted_feature_and_retrains(days):
    _, results = days
    drifted = results[2]
    assert drifted.drift is not None and drifted.drift.drifted
    assert "x0" in drifted.drift.drifted_features
    assert "segment" not in drifted.drift.drifted_features
    assert drifted.decision.retrain and "drift" in drifted.decision.fired
    assert drifted.verdict is not None


def test_every_run_is_recorded_and_accounted_for(days):
    from driftloop.steps.records import read_run

    store, results = days
    for r in results:
        assert r.ingest.report.counts.balanced()
        # the curation step's record reads back with the rest of the chain
        record = read_run(store, r.run_id)
        assert "curation" in record.recorded and record.curation is not None
        curate = next(line for line in record.lines() if line.startswith("curate"))
        assert f"{record.curation.disagreements.disagreements} of " \
            f"{record.curation.disagreements.labelled} recent labels" in curate
        decision = json.loads(store.read_text(f"runs/{r.run_id}/decision.json"))
        assert decision["retrain"] == r.decision.retrain
        if r.verdict is not None:
            verdict = json.loads(store.read_text(f"runs/{r.run_id}/verdict.json"))
            assert verdict["decision"] == r.verdict.decision
            assert store.exists(f"runs/{r.run_id}/verdict.md")
    history = Registry(store, "sample").aliases().history
    promoted = [r.train.version for r in results if r.verdict and r.verdict.decision == "promote"]
    assert [h.to_version for h in history if h.alias == "champion"] == promoted


def test_demo_prints_the_chain_and_timeline(tmp_path: Path, capsys):
    from driftloop.demo.synthetic import run_demo

    run_demo(tmp_path / "demo", days=2, seed=1, in_process=True)
    out = capsys.readouterr().out
    for step in ("ingest", "drift", "decide", "train", "evaluate", "registry"):
        assert f"   {step}" in out
    assert "| day | accepted |" in out


def test_label_volume_counts_from_the_last_training_even_when_not_promoted(tmp_path: Path):
    from dataclasses import replace

    from driftloop.decide.trigger import count_new_labels

    info = write_sample_store(tmp_path / "s", days=3, rows_per_day=400, drift_day=9, seed=5)
    store, schema = open_store(info.root), sample_schema()
    strict = replace(Config(), gate=replace(Config().gate, auto_threshold=10.0))
    days = [_end_of(info.first_day + dt.timedelta(d)) for d in range(3)]
    run_loop(store, schema, "sample", now=days[0], run_id="d0", config=strict)
    held = run_loop(store, schema, "sample", now=days[1], run_id="d1", config=strict, force=True)
    assert held.verdict is not None and held.verdict.decision != "promote"
    third = run_loop(store, schema, "sample", now=days[2], run_id="d2", config=strict)
    rule = next(r for r in third.decision.rules if r.name == "label_volume")
    records = third.records
    registry = Registry(store, "sample")
    since_challenger = count_new_labels(records, dt.datetime.fromisoformat(
        registry.metadata(held.train.version)["training_cutoff"]))
    champion_cutoff = registry.metadata(registry.champion())["training_cutoff"]
    since_champion = count_new_labels(records, dt.datetime.fromisoformat(champion_cutoff))
    assert rule.measured == since_challenger < since_champion


def test_drift_without_new_labels_waits_and_even_a_forced_run_waits_for_fresh_labels(
    tmp_path: Path,
):
    # No feedback at all: drift alone used to train a challenger on the champion's rows
    # and then fail the run in evaluate (an empty evaluation set).
    info = write_sample_store(tmp_path / "s", days=3, rows_per_day=400, drift_day=1, seed=4,
                              label_share=0.0)
    store, schema = open_store(info.root), sample_schema()
    days = [_end_of(info.first_day + dt.timedelta(d)) for d in range(3)]
    run_loop(store, schema, "sample", now=days[0], run_id="d0", lookback_days=3)
    waiting = run_loop(store, schema, "sample", now=days[1], run_id="d1", lookback_days=3)
    assert waiting.drift is not None and waiting.drift.drifted
    assert "drift" in waiting.decision.fired and not waiting.decision.retrain
    assert waiting.train is None
    assert any(r.name == "nothing_new" and r.fired for r in waiting.decision.rules)
    forced = run_loop(store, schema, "sample", now=days[2], run_id="d2", lookback_days=3,
                      force=True)
    # Judging the champion on its own training rows (the old reference hold-out) is not an
    # option: the run trains nothing and says how many fresh labels the gate needs.
    assert forced.train is None and not forced.decision.retrain
    wait = [r for r in forced.decision.rules if r.name == "eval_labels"]
    assert wait and wait[0].fired and "wait for labels" in forced.decision.reasons[0]
