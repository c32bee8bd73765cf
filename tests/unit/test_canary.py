import numpy as np
import pandas as pd
import pytest

from driftloop.canary import CanaryAnalysis, analyse_canary, next_step
from driftloop.config import CanaryConfig
from driftloop.errors import ConfigError

CFG = CanaryConfig(min_labelled=100, tolerance=0.02)


def _traffic(n_champ, acc_champ, n_canary, acc_canary, seed=0, labelled=1.0, **extra):
    rng = np.random.default_rng(seed)
    frames = []
    for version, n, acc in (("v1", n_champ, acc_champ), ("v2", n_canary, acc_canary)):
        label = rng.choice(["a", "b"], n)
        right = rng.random(n) < acc
        pred = np.where(right, label, np.where(label == "a", "b", "a"))
        has = rng.random(n) < labelled
        frame = pd.DataFrame({"model_version": version, "prediction": pred,
                              "label": np.where(has, label, None)})
        for col, values in extra.get(version, {}).items():
            frame[col] = values
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _analyse(records, current=10, config=CFG):
    return analyse_canary(records, champion_version="v1", canary_version="v2",
                          current_percent=current, config=config)


def test_equal_quality_with_enough_labels_advances_step_by_step():
    records = _traffic(4000, 0.85, 4000, 0.86)
    first = _analyse(records, current=10)
    assert first.decision == "advance" and first.next_percent == 50 and not first.completes
    last = _analyse(records, current=50)
    assert last.next_percent == 100 and last.completes


def test_clearly_worse_canary_rolls_back_to_zero():
    a = _analyse(_traffic(2000, 0.85, 400, 0.60))
    assert a.decision == "rollback" and a.next_percent == 0
    assert a.ci_high is not None and a.ci_high < -CFG.tolerance


def test_too_few_labels_holds_and_says_how_many():
    a = _analyse(_traffic(2000, 0.85, 300, 0.30, labelled=0.2))
    assert a.decision == "hold" and a.next_percent == 10
    assert "each needs >= 100" in a.reasons[0]


def test_inconclusive_interval_holds():
    a = _analyse(_traffic(150, 0.80, 150, 0.78, seed=2))
    assert a.decision == "hold"
    assert a.ci_low < -CFG.tolerance < a.ci_high


def test_champion_and_canary_roles_are_not_interchangeable():
    records = _traffic(2000, 0.60, 2000, 0.85)  # here the *champion* is the bad one
    assert _analyse(records).decision == "advance"
    swapped = analyse_canary(records, champion_version="v2", canary_version="v1",
                             current_percent=10, config=CFG)
    assert swapped.decision == "rollback"


def test_error_rate_rise_rolls_back_even_with_good_accuracy():
    errors = {"v1": {"error": False}, "v2": {"error": np.arange(3000) % 10 == 0}}
    a = _analyse(_traffic(3000, 0.85, 3000, 0.85, **errors))
    assert a.decision == "rollback" and "error rate" in a.reasons[0]


def test_analysis_round_trips_through_json_and_renders():
    a = _analyse(_traffic(3000, 0.85, 3000, 0.85))
    assert CanaryAnalysis.from_json(a.to_json()) == a
    assert "| v2 | canary |" in a.to_markdown()


@pytest.mark.parametrize(("current", "expected"), [(0, 10), (10, 50), (50, 100), (100, 100)])
def test_next_step(current, expected):
    assert next_step(current, (10, 50, 100)) == expected


def test_steps_must_end_at_100():
    with pytest.raises(ConfigError, match=r"canary\.steps"):
        CanaryConfig(steps=(10, 50))


def test_since_canary_started_keeps_rows_from_the_canarys_first_response_on():
    from driftloop.canary import since_canary_started

    ts = pd.to_datetime(["2026-03-01T00:00Z", "2026-03-02T00:00Z", "2026-03-02T06:00Z",
                         "2026-03-03T00:00Z"])
    frame = pd.DataFrame({"timestamp": ts, "model_version": ["v1", "v1", "v2", "v1"]})
    kept = since_canary_started(frame, "v2")
    assert list(kept["timestamp"]) == list(ts[2:])
    assert since_canary_started(frame, "v9").empty
