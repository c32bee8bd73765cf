"""A/B analysis: per-variant numbers, the clustered sequential test, the stop rule."""

from __future__ import annotations

import datetime as dt
import random

import numpy as np
import pandas as pd
import pytest

from driftloop.config import ABConfig
from driftloop.decide.ab import NO_WINNER, WINNER, analyse_ab, clustered_difference
from driftloop.decide.ab_assign import ABTest, Variant, assign
from driftloop.decide.sequential import stratified_difference

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TEST = ABTest("t1", "m", (Variant("a", "champion", 0.5), Variant("b", "v2", 0.5)),
              started_at=START.isoformat())


def records(acc: dict[str, float], *, users: int = 400, days: int = 3, per_day: int = 5,
            seed: int = 0, unkeyed: int = 0, unkeyed_acc: float | None = None,
            errors: dict[str, float] | None = None) -> pd.DataFrame:
    """Logged, labelled responses of sticky users; accuracy per variant."""
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    rows = []
    for u in range(users):
        key = f"u{u}"
        variant = assign(TEST, key, pick).variant
        for d in range(days):
            for j in range(per_day):
                ts = START + dt.timedelta(days=d, hours=1 + j)
                ok = rng.random() < acc[variant]
                rows.append({"id": f"{key}-{d}-{j}", "timestamp": ts, "user_id": key,
                             "ab_variant": variant, "ab_keyed": True, "label": "x",
                             "prediction": "x" if ok else "y",
                             "error": bool(rng.random() < (errors or {}).get(variant, 0.0)),
                             "latency_ms": 5.0})
    for i in range(unkeyed):
        a = assign(TEST, None, pick)
        bad = unkeyed_acc is not None and a.variant == "b"  # only b's unkeyed are off
        ok = rng.random() < (unkeyed_acc if bad and unkeyed_acc is not None else acc[a.variant])
        rows.append({"id": f"anon-{i}", "timestamp": START + dt.timedelta(hours=2),
                     "user_id": None, "ab_variant": a.variant, "ab_keyed": False,
                     "label": "x", "prediction": "x" if ok else "y", "error": False,
                     "latency_ms": 5.0})
    return pd.DataFrame(rows)


NOW = START + dt.timedelta(days=3)


def test_a_clearly_better_variant_wins_and_is_reported_for_approval() -> None:
    result = analyse_ab(records({"a": 0.70, "b": 0.85}), TEST, config=ABConfig(), now=NOW)
    assert result.decision == WINNER and result.stop
    assert result.winner == "b" and result.winner_target == "v2"
    assert result.action == "needs_approval"
    (c,) = result.comparisons
    assert c.ci_low is not None and c.ci_low > 0 and c.diff == pytest.approx(0.15, abs=0.04)
    assert result.mixed_users == 0
    auto = analyse_ab(records({"a": 0.70, "b": 0.85}), TEST,
                      config=ABConfig(auto_promote=True), now=NOW)
    assert auto.action == "promote"
    assert ABTest.from_json(TEST.to_json()) == TEST
    assert type(result).from_json(result.to_json()) == result


def test_a_clearly_worse_variant_makes_the_control_win() -> None:
    result = analyse_ab(records({"a": 0.85, "b": 0.70}), TEST, config=ABConfig(), now=NOW)
    assert result.winner == "a" and result.winner_target == "champion"


def test_too_few_labels_continue_and_say_so() -> None:
    result = analyse_ab(records({"a": 0.5, "b": 0.99}, users=20, days=1), TEST,
                        config=ABConfig(), now=NOW)
    assert result.decision == "continue" and not result.stop and result.winner is None
    size = next(r for r in result.rules if r.name == "sample_size")
    assert not size.passed and size.threshold == 100


def test_unkeyed_responses_are_counted_apart_and_never_decide() -> None:
    # unkeyed b responses are terrible; keyed ones are as good as a: no winner from them
    rec = records({"a": 0.8, "b": 0.8}, unkeyed=3000, unkeyed_acc=0.0)
    result = analyse_ab(rec, TEST, config=ABConfig(), now=NOW)
    assert result.winner is None
    by = {s.name: s for s in result.variants}
    assert by["a"].unkeyed + by["b"].unkeyed == 3000
    assert by["a"].requests + by["b"].requests == 400 * 3 * 5


def test_the_variance_is_per_user_when_users_differ() -> None:
    # each user is always right or always wrong: 15 responses carry one user's information
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(600), 15)
    treated = users % 2 == 1
    correct = np.repeat(rng.random(600) < 0.7, 15).astype(float)
    strata = np.zeros(len(users), dtype=np.int64)
    clustered = clustered_difference(correct, treated, strata, users)
    binomial = stratified_difference([correct[~treated].sum()], [(~treated).sum()],
                                     [correct[treated].sum()], [treated.sum()])
    assert clustered.diff == pytest.approx(binomial.diff)
    assert 10 < clustered.variance / binomial.variance < 20  # ~ the 15 responses per user


def test_a_traffic_shift_between_days_does_not_make_a_winner() -> None:
    # day 0 easy traffic mostly to a, day 1 hard traffic mostly to b, equal models: pooled
    # accuracy differs by ~0.3, the per-day comparison finds nothing
    rng = np.random.default_rng(2)
    rows = []
    for d, (share_b, acc) in enumerate(((0.1, 0.9), (0.9, 0.5))):
        for i in range(4000):
            v = "b" if rng.random() < share_b else "a"
            rows.append({"timestamp": START + dt.timedelta(days=d, hours=3), "id": f"{d}-{i}",
                         "user_id": f"{d}-{i}", "ab_variant": v, "ab_keyed": True,
                         "label": "x", "prediction": "x" if rng.random() < acc else "y"})
    frame = pd.DataFrame(rows)
    pooled = frame.assign(ok=frame["label"] == frame["prediction"]).groupby("ab_variant")["ok"]
    assert pooled.mean()["a"] - pooled.mean()["b"] > 0.2
    result = analyse_ab(frame, TEST, config=ABConfig(), now=NOW)
    assert result.winner is None
    assert abs(result.comparisons[0].diff or 1) < 0.05


def test_equal_variants_on_a_large_sample_stop_for_futility() -> None:
    result = analyse_ab(records({"a": 0.8, "b": 0.8}, users=3000, days=8, per_day=5, seed=3),
                        TEST, config=ABConfig(mde=0.05), now=NOW)
    assert result.decision == NO_WINNER and result.stop
    assert any("futility" in r for r in result.reasons)


def test_the_max_duration_stops_an_inconclusive_test() -> None:
    rec = records({"a": 0.8, "b": 0.81})
    late = analyse_ab(rec, TEST, config=ABConfig(max_days=2), now=NOW)
    early = analyse_ab(rec, TEST, config=ABConfig(max_days=30), now=NOW)
    assert late.decision == NO_WINNER and any("max duration" in r for r in late.reasons)
    assert early.decision == "continue" and early.labels_needed > 6000 // 2


def test_a_better_variant_with_more_errors_cannot_win() -> None:
    rec = records({"a": 0.70, "b": 0.85}, errors={"a": 0.0, "b": 0.2})
    result = analyse_ab(rec, TEST, config=ABConfig(), now=NOW)
    assert result.winner is None
    assert any(r.name == "error_rate[b]" and not r.passed for r in result.rules)


def test_only_rows_since_the_start_count() -> None:
    rec = records({"a": 0.8, "b": 0.8})
    before = rec.assign(timestamp=rec["timestamp"] - pd.Timedelta(days=30),
                        prediction="y", ab_variant="b", id=rec["id"] + "-old")
    both = pd.concat([rec, before], ignore_index=True)
    assert analyse_ab(both, TEST, config=ABConfig(), now=NOW).variants[1].requests == \
        analyse_ab(rec, TEST, config=ABConfig(), now=NOW).variants[1].requests


def test_rows_aggregated_per_user_and_day_give_the_same_difference_and_variance() -> None:
    rng = np.random.default_rng(4)
    users = rng.integers(0, 300, 5000)
    treated = users % 2 == 1
    strata = rng.integers(0, 3, 5000)
    correct = (rng.random(5000) < 0.6 + 0.1 * (users % 3 == 0)).astype(float)
    per_response = clustered_difference(correct, treated, strata, users)
    agg = pd.DataFrame({"u": users, "h": strata, "t": treated, "c": correct}).groupby(
        ["u", "h", "t"], as_index=False)["c"].agg(["sum", "count"])
    grouped = clustered_difference(agg["sum"].to_numpy(), agg["t"].to_numpy(),
                                   agg["h"].to_numpy(), agg["u"].to_numpy(),
                                   agg["count"].to_numpy())
    assert grouped.diff == pytest.approx(per_response.diff)
    assert grouped.variance == pytest.approx(per_response.variance)
    assert (grouped.n1, grouped.n2) == (per_response.n1, per_response.n2)


def test_three_variants_split_alpha_and_the_best_credible_one_wins() -> None:
    three = ABTest("t3", "m", (Variant("a", "champion", 0.34), Variant("b", "v2", 0.33),
                               Variant("c", "v3", 0.33)), started_at=START.isoformat())
    rng = np.random.default_rng(5)
    acc = {"a": 0.70, "b": 0.72, "c": 0.85}
    rows = []
    for u in range(1500):
        v = assign(three, f"u{u}", random.Random(0)).variant
        for j in range(6):
            rows.append({"id": f"{u}-{j}", "timestamp": START + dt.timedelta(hours=j),
                         "user_id": f"u{u}", "ab_variant": v, "ab_keyed": "true",
                         "label": "x", "prediction": "x" if rng.random() < acc[v] else "y"})
    result = analyse_ab(pd.DataFrame(rows), three, config=ABConfig(), now=NOW)
    assert [c.variant for c in result.comparisons] == ["b", "c"]
    assert all(c.alpha == pytest.approx(0.025) for c in result.comparisons)
    assert result.winner == "c" and result.winner_target == "v3"


def test_a_bad_setting_is_one_line_naming_it() -> None:
    from driftloop.config import config_from_dict
    from driftloop.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ab\.mde: must be in \(0, 1\)"):
        config_from_dict({"ab": {"mde": 0}})
    assert config_from_dict({"ab": {"auto_promote": True}}).ab.auto_promote
