"""plan_training: which rows a challenger trains on, is judged on and is profiled on."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from driftloop.config import Config
from driftloop.data.schema import schema_from_dict
from driftloop.decide.trigger import ChampionInfo
from driftloop.models.train import split_holdout, training_problem
from driftloop.steps.plan import MIN_EVAL_ROWS, plan_training

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
SCHEMA = schema_from_dict({"columns": [{"name": "x", "kind": "numeric"}],
                           "labels": ["a", "b"]})


def _records(days: int, per_day: int, *, labelled: bool = True, prefix: str = "r") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = days * per_day
    ts = [T0 + dt.timedelta(days=i // per_day, minutes=i % per_day) for i in range(n)]
    return pd.DataFrame({
        "id": [f"{prefix}{i}" for i in range(n)],
        "timestamp": pd.to_datetime(ts, utc=True),
        "x": rng.normal(size=n),
        "label": [("a" if i % 2 else "b") if labelled else None for i in range(n)],
        # each label arrives half a day after its record
        "label_timestamp": pd.to_datetime([t + dt.timedelta(hours=12) for t in ts], utc=True)
        if labelled else pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns, UTC]"),
    })


def _champion(cutoff_day: float) -> ChampionInfo:
    cutoff = T0 + dt.timedelta(days=cutoff_day)
    return ChampionInfo("v1", cutoff, cutoff, "f1_macro", 0.8)


def test_the_gate_judges_on_the_last_eval_days_after_the_champion_cutoff():
    records = _records(20, 100)
    now = T0 + dt.timedelta(days=20)
    plan = plan_training(pd.DataFrame(), records, _champion(10), now=now, config=Config())
    ts = pd.to_datetime(plan.eval_set["timestamp"], utc=True)
    # Config().gate.eval_days == 3: only rows served on days 17, 18 and 19
    assert ts.min() >= pd.Timestamp(now - dt.timedelta(days=3))
    assert len(plan.eval_set) >= MIN_EVAL_ROWS
    _, held_out = split_holdout(records, Config().train.eval_fraction, Config().train.seed)
    recent = held_out.loc[pd.to_datetime(held_out["timestamp"], utc=True)
                          >= pd.Timestamp(now - dt.timedelta(days=3))]
    assert set(plan.eval_set["id"]) == set(recent["id"])
    assert not set(plan.eval_set["id"]) & set(plan.training["id"])
    assert "last 3 days" in plan.eval_source


def test_too_few_recent_labels_widen_to_the_newest_held_out_rows_since_the_cutoff():
    records = _records(20, 20)  # ~6 held-out rows a day: 3 days give fewer than 50
    now = T0 + dt.timedelta(days=20)
    plan = plan_training(pd.DataFrame(), records, _champion(5), now=now, config=Config())
    assert len(plan.eval_set) == MIN_EVAL_ROWS
    _, held_out = split_holdout(records, Config().train.eval_fraction, Config().train.seed)
    chosen = held_out["id"].isin(plan.eval_set["id"])
    newest_left_out = pd.to_datetime(held_out.loc[~chosen, "timestamp"], utc=True).max()
    assert pd.to_datetime(plan.eval_set["timestamp"], utc=True).min() >= newest_left_out
    cutoff = pd.Timestamp(T0 + dt.timedelta(days=5))
    assert (pd.to_datetime(plan.eval_set["label_timestamp"], utc=True) > cutoff).all()


def test_with_too_few_fresh_labels_the_gate_waits_instead_of_judging_on_training_rows():
    # Regression: with fewer than 50 held-out production labels part of the champion's own
    # training set (the reference) was held out, and the champion was judged on it.
    seed = _records(10, 60, prefix="s")
    reference, _ = split_holdout(seed, Config().train.eval_fraction, Config().train.seed)
    records = pd.concat([_records(1, 40, prefix="p").assign(
        timestamp=lambda f: f["timestamp"] + pd.Timedelta(days=11),
        label_timestamp=lambda f: f["label_timestamp"] + pd.Timedelta(days=11)),
        _records(2, 100, labelled=False)], ignore_index=True)
    now = T0 + dt.timedelta(days=12)
    plan = plan_training(reference, records, _champion(10), now=now, config=Config())
    assert not set(plan.eval_set["id"]) & set(reference["id"])
    assert not set(plan.eval_set["id"]) & set(plan.training["id"])
    assert 0 < len(plan.eval_set) < MIN_EVAL_ROWS
    assert plan.eval_needed == MIN_EVAL_ROWS - len(plan.eval_set)


def test_the_reference_never_shrinks_and_the_first_model_trains_on_every_seed_row():
    # Regression: each cycle held out 30 % of the reference for good (1,500 -> 286 rows in
    # five cycles) and the first model dropped 31 % of the seed set for no comparison.
    seed = _records(10, 150, prefix="s")
    first = plan_training(seed, seed.iloc[0:0], None, now=T0 + dt.timedelta(days=10),
                          config=Config())
    assert set(first.training["id"]) == set(seed["id"])
    reference = first.training
    for cycle in range(5):
        now = T0 + dt.timedelta(days=11 + cycle)
        prod = _records(1, 200, prefix=f"c{cycle}-").assign(
            timestamp=lambda f, d=10 + cycle: f["timestamp"] + pd.Timedelta(days=d),
            label_timestamp=lambda f, d=10 + cycle: f["label_timestamp"] + pd.Timedelta(days=d))
        plan = plan_training(reference, prod, _champion(9.9 + cycle), now=now, config=Config())
        assert set(reference["id"]) <= set(plan.training["id"])
        reference = plan.training
    assert len(reference) >= len(seed)


@pytest.mark.parametrize("changed", [{"seed": 7}, {"eval_fraction": 0.5}])
def test_rows_that_judge_a_model_stay_out_of_training_whatever_the_configuration(changed):
    # Regression: changing train.seed or train.eval_fraction put 438 of 589 eval rows into
    # both models' training sets.
    import dataclasses

    records = _records(20, 100)
    base = Config()
    first = plan_training(pd.DataFrame(), records.iloc[:1000], None,
                          now=T0 + dt.timedelta(days=10), config=base)
    other = dataclasses.replace(base, train=dataclasses.replace(base.train, **changed))
    plan = plan_training(first.training, records, _champion(10.5),
                         now=T0 + dt.timedelta(days=20), config=other)
    assert len(plan.eval_set) >= MIN_EVAL_ROWS
    judged = set(plan.eval_set["id"])
    assert not judged & set(first.training["id"])  # not in the champion's training
    assert not judged & set(plan.training["id"])  # nor in the challenger's


def test_the_feature_reference_is_all_traffic_of_the_training_period_not_the_labelled_rows():
    # Regression: the reference was only rows the model did not train on (as few as 100),
    # skewed when feedback comes mostly for some kind of row.
    labelled = _records(10, 100)
    unlabelled = _records(10, 300, labelled=False, prefix="u")
    records = pd.concat([labelled, unlabelled], ignore_index=True)
    now = T0 + dt.timedelta(days=10)
    plan = plan_training(pd.DataFrame(), records, None, now=now, config=Config())
    assert plan.feature_rows is not None and len(plan.feature_rows) == len(records)
    assert "complete days" in plan.feature_source


def test_the_drift_profile_uses_recent_rows_the_model_never_trained_on():
    records = pd.concat([_records(20, 100), _records(1, 150, labelled=False, prefix="u")
                         .assign(timestamp=lambda f: f["timestamp"] + pd.Timedelta(days=19))],
                        ignore_index=True)
    now = T0 + dt.timedelta(days=20)
    plan = plan_training(pd.DataFrame(), records, _champion(10), now=now, config=Config())
    assert not set(plan.profile_rows["id"]) & set(plan.training["id"])
    assert pd.to_datetime(plan.profile_rows["timestamp"], utc=True).min() >= pd.Timestamp(
        now - dt.timedelta(days=3))
    assert plan.profile_rows["id"].str.startswith("u").any()  # unlabelled rows count too
    assert "not trained on" in plan.profile_source


def test_the_drift_profile_falls_back_to_training_rows_and_says_so():
    records = _records(2, 30)
    now = T0 + dt.timedelta(days=2)
    plan = plan_training(pd.DataFrame(), records, None, now=now, config=Config())
    assert len(plan.eval_set) < Config().drift.min_samples
    assert plan.profile_rows is plan.training
    assert "cross-fitted" in plan.profile_source


@pytest.mark.parametrize(("labels", "problem"), [
    (["a"] * 40, "only one class"),
    (["a", "b"] * 3, "at least 10"),
    (["a", "c"] * 20, "not in schema labels"),
    (["a", "b"] * 20, None),
])
def test_training_problem_names_why_rows_cannot_train(labels, problem):
    frame = pd.DataFrame({"label": labels})
    found = training_problem(frame, SCHEMA)
    assert (found is None) if problem is None else (problem in found)


def test_a_verdict_that_needs_approval_notifies_the_commands_to_run(tmp_path):
    from driftloop.data.storage import LocalStore
    from driftloop.decide.gate import ModelScore, Verdict
    from driftloop.models.registry import Registry
    from driftloop.notify import Delivery, NullNotifier
    from driftloop.steps.promote import run_promote

    class Recorder(NullNotifier):
        def __init__(self) -> None:
            self.events = []

        def send(self, event):
            self.events.append(event)
            return Delivery(self.backend, True, None)

    score = ModelScore("v2", 100, {"f1_macro": 0.9}, 0.1, 0.1, {})
    verdict = Verdict("needs_approval", False, ["better, not clearly"], [], "f1_macro", 0.01,
                      -0.01, 0.03, score, score, "2026-01-01T00:00:00+00:00",
                      next_steps=["approve: `driftloop promote v2 --store S --model m`"])
    registry = Registry(LocalStore(tmp_path / "s", create=True), "m")
    notifier = Recorder()
    run_promote(registry, verdict, notifier=notifier, run_id="r", model_name="m")
    assert [e.kind for e in notifier.events] == ["info"]
    assert "driftloop promote v2" in notifier.events[0].details["next_steps"][0]
    assert registry.champion() is None  # nothing moved without a person


def test_a_promote_verdict_does_not_move_the_champion_over_one_it_was_not_compared_with(
        tmp_path):
    # Regression: two concurrent runs judged v2 and v3 against v1; the second promotion
    # silently replaced v2, a champion v3 was never compared with.
    import hashlib
    import json

    from driftloop.data.storage import LocalStore
    from driftloop.decide.gate import ModelScore, Verdict
    from driftloop.models.registry import Registry
    from driftloop.notify import NullNotifier
    from driftloop.steps.promote import run_promote

    registry = Registry(LocalStore(tmp_path / "s", create=True), "m")
    for v in ("v1", "v2", "v3"):
        folder = tmp_path / v
        folder.mkdir()
        data = f"model {v}".encode()
        (folder / "model.joblib").write_bytes(data)
        (folder / "metadata.json").write_text(json.dumps(
            {"version": v, "model_sha256": hashlib.sha256(data).hexdigest()}))
        registry.register(folder)
    registry.promote("v1", reason="seed")

    def verdict(version: str) -> Verdict:
        champ = ModelScore("v1", 100, {"f1_macro": 0.8}, 0.1, 0.1, {})
        chall = ModelScore(version, 100, {"f1_macro": 0.9}, 0.1, 0.1, {})
        return Verdict("promote", False, ["better"], [], "f1_macro", 0.1, 0.05, 0.15, champ,
                       chall, "2026-01-01T00:00:00+00:00")

    first, second = verdict("v2"), verdict("v3")  # both judged against v1
    run_promote(registry, first, notifier=NullNotifier(), run_id="a", model_name="m")
    aliases = run_promote(registry, second, notifier=NullNotifier(), run_id="b",
                          model_name="m")
    assert aliases.champion == "v2" and registry.champion() == "v2"
    record = json.loads(registry.store.read_text("runs/b/promotion.json"))
    assert record["version"] == "v3" and record["judged_against"] == "v1"
    assert record["champion"] == "v2" and "champion changed, not promoted" in record["reason"]
