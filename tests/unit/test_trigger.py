import datetime as dt
from dataclasses import dataclass, field

import pandas as pd
import pytest

from driftloop.config import TriggerConfig
from driftloop.trigger import ChampionInfo, RetrainDecision, count_new_labels, decide_retrain

NOW = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
CHAMP = ChampionInfo("v1", NOW - dt.timedelta(days=2), NOW - dt.timedelta(days=2), "f1_macro", 0.8)


@dataclass
class Drift:
    status: str = "no_drift"
    drifted: bool = False
    reasons: list[str] = field(default_factory=list)


def _rule(decision: RetrainDecision, name: str):
    return next(r for r in decision.rules if r.name == name)


def test_no_champion_retrains_as_first_model():
    d = decide_retrain(None, now=NOW, config=TriggerConfig())
    assert d.retrain and d.fired == ["no_champion"]


def test_quiet_window_does_not_retrain():
    d = decide_retrain(CHAMP, now=NOW, config=TriggerConfig(), drift=Drift(), new_labels=10)
    assert not d.retrain and d.fired == []
    assert "no rule fired" in d.reasons[0]


@pytest.mark.parametrize(("labels", "fires"), [(499, False), (500, True), (501, True)])
def test_label_volume_at_and_below_threshold(labels, fires):
    d = decide_retrain(CHAMP, now=NOW, config=TriggerConfig(min_new_labels=500), new_labels=labels)
    rule = _rule(d, "label_volume")
    assert rule.fired is fires and d.retrain is fires
    assert (rule.measured, rule.threshold) == (labels, 500)


def test_drift_fires_and_carries_the_report_reason():
    drift = Drift("drift", True, ["feature 'x0': KS p=0.0001 < 0.025"])
    d = decide_retrain(CHAMP, now=NOW, config=TriggerConfig(), drift=drift)
    assert d.retrain and d.fired == ["drift"]
    assert "x0" in d.reasons[0]


def test_insufficient_drift_data_does_not_fire():
    drift = Drift("insufficient_data", False, ["40 rows < 100"])
    d = decide_retrain(CHAMP, now=NOW, config=TriggerConfig(), drift=drift)
    assert not d.retrain


def test_performance_drop_needs_enough_samples_and_the_relative_drop():
    cfg = TriggerConfig(perf_drop=0.10, perf_min_samples=100)
    # 0.8 -> 0.71 is an 11.25% relative drop.
    few = decide_retrain(CHAMP, now=NOW, config=cfg, current_metric=0.71, metric_samples=99)
    enough = decide_retrain(CHAMP, now=NOW, config=cfg, current_metric=0.71, metric_samples=100)
    small = decide_retrain(CHAMP, now=NOW, config=cfg, current_metric=0.73, metric_samples=500)
    assert not few.retrain and enough.retrain and not small.retrain
    assert _rule(enough, "performance").measured == pytest.approx(0.1125)


def test_schedule_fires_on_old_champion():
    old = ChampionInfo("v0", NOW - dt.timedelta(days=8), NOW, "f1_macro", 0.8)
    d = decide_retrain(old, now=NOW, config=TriggerConfig(max_age_days=7))
    assert d.retrain and d.fired == ["schedule"]
    assert _rule(d, "schedule").measured == pytest.approx(8.0)


def test_schedule_counts_from_the_latest_training_not_the_champion_age():
    # The champion is 8 days old but a challenger was trained (and rejected) 2 days ago:
    # the schedule must wait for 7 days after that training, not fire on every run.
    old = ChampionInfo("v0", NOW - dt.timedelta(days=8), NOW, "f1_macro", 0.8)
    cfg = TriggerConfig(max_age_days=7)
    recent = decide_retrain(old, now=NOW, config=cfg, last_retrain_at=NOW - dt.timedelta(days=2))
    stale = decide_retrain(old, now=NOW, config=cfg, last_retrain_at=NOW - dt.timedelta(days=9))
    assert not recent.retrain and recent.fired == []
    assert _rule(recent, "schedule").measured == pytest.approx(2.0)
    assert "not promoted" in _rule(recent, "schedule").detail
    # an older last_retrain_at than the champion (e.g. an earlier version) changes nothing
    assert stale.retrain and _rule(stale, "schedule").measured == pytest.approx(8.0)


def test_cooldown_postpones_unless_forced():
    cfg = TriggerConfig(cooldown_hours=12)
    recent = NOW - dt.timedelta(hours=3)
    drift = Drift("drift", True, ["x"])
    held = decide_retrain(CHAMP, now=NOW, config=cfg, drift=drift, last_retrain_at=recent)
    forced = decide_retrain(CHAMP, now=NOW, config=cfg, drift=drift, last_retrain_at=recent,
                            force=True)
    later = decide_retrain(CHAMP, now=NOW, config=cfg, drift=drift,
                           last_retrain_at=NOW - dt.timedelta(hours=13))
    assert not held.retrain and "postponed" in held.reasons[0]
    assert forced.retrain and later.retrain


def test_decision_json_round_trip():
    d = decide_retrain(CHAMP, now=NOW, config=TriggerConfig(), new_labels=600)
    back = RetrainDecision.from_json(d.to_json())
    assert back == d
    assert "label_volume" in d.to_markdown()


def test_count_new_labels_respects_cutoff():
    ts = pd.to_datetime(["2026-03-01", "2026-03-05", None, "2026-03-09"], utc=True)
    frame = pd.DataFrame({"label": ["a", "b", None, "a"], "label_timestamp": ts})
    assert count_new_labels(frame, dt.datetime(2026, 3, 4, tzinfo=dt.UTC)) == 2
    assert count_new_labels(frame, None) == 3


def test_no_label_since_the_last_training_postpones_unless_forced():
    drift = Drift("drift", True, ["x"])
    waiting = decide_retrain(CHAMP, now=NOW, config=TriggerConfig(), drift=drift, new_labels=0)
    forced = decide_retrain(CHAMP, now=NOW, config=TriggerConfig(), drift=drift, new_labels=0,
                            force=True)
    one = decide_retrain(CHAMP, now=NOW, config=TriggerConfig(), drift=drift, new_labels=1)
    assert not waiting.retrain and waiting.fired == ["drift"]
    assert _rule(waiting, "nothing_new").fired and "postponed" in waiting.reasons[0]
    assert forced.retrain and one.retrain


def test_rows_that_cannot_train_postpone_even_a_forced_retrain():
    problem = "training data has only one class ['a']; at least 2 classes are needed"
    d = decide_retrain(CHAMP, now=NOW, config=TriggerConfig(), new_labels=600, force=True,
                       train_problem=problem)
    assert not d.retrain and set(d.fired) == {"force", "label_volume"}
    assert _rule(d, "training_data").detail == problem
    assert d.reasons == [problem + ": retrain postponed"]


def test_a_champion_without_validation_metric_skips_the_performance_rule():
    # A champion trained on a one-sided window has no validation split (baseline NaN):
    # the rule says so instead of comparing with NaN or crashing the run.
    blind = ChampionInfo("v0", NOW - dt.timedelta(days=1), NOW, "f1_macro", float("nan"))
    d = decide_retrain(blind, now=NOW, config=TriggerConfig(), current_metric=0.1,
                       metric_samples=500, new_labels=10)
    rule = _rule(d, "performance")
    assert not rule.fired and not d.retrain
    assert "no validation f1_macro" in rule.detail
