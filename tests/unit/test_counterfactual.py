"""The counterfactual: what the first champion, never retrained, would have scored."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from driftloop.config import TrainConfig
from driftloop.data.schema import schema_from_dict
from driftloop.demo.live import first_champion, promotions_after
from driftloop.demo.traffic import static_counterfactual, static_predictions
from driftloop.errors import DriftloopError
from driftloop.models.train import predict_frame, train_model

SCHEMA = schema_from_dict({"name": "tab", "labels": ["neg", "pos"], "columns": [
    {"name": "x", "kind": "numeric"}, {"name": "z", "kind": "numeric"}]})


def served_rows(day: int, truth: list[str], served: list[str], labelled: list[bool]) -> list:
    return [{"id": f"d{day}-{i}", "day": day, "model_version": "v", "prediction": p,
             "label": t, "labelled": lab}
            for i, (t, p, lab) in enumerate(zip(truth, served, labelled, strict=True))]


def test_only_labelled_rows_count_and_both_models_are_scored_on_the_same_rows():
    served = pd.DataFrame(
        served_rows(0, ["a", "a", "b", "b", "a"], ["a", "a", "b", "a", "a"],
                    [True, True, True, True, False])
        + served_rows(1, ["a", "b", "b", "a"], ["a", "b", "b", "a"], [True, True, True, True]))
    # the static model: right on 2 of day 0's labelled rows, 1 of day 1's; the unlabelled
    # row d0-4 (served right, static wrong) must not count
    static = pd.Series({"d0-0": "a", "d0-1": "b", "d0-2": "b", "d0-3": "a", "d0-4": "b",
                        "d1-0": "b", "d1-1": "a", "d1-2": "b", "d1-3": "b"})
    cf = static_counterfactual(served, static, "v-first", retrains=2, promotions=1)
    assert cf.rows == 8 and cf.excluded == 0
    daily = cf.daily.set_index("day")
    assert daily.loc[0, "labelled"] == 4 and daily.loc[1, "labelled"] == 4
    assert daily.loc[0, "served"] == 0.75 and daily.loc[0, "static"] == 0.5
    assert daily.loc[1, "served"] == 1.0 and daily.loc[1, "static"] == 0.25
    assert cf.served == 7 / 8 and cf.static == 3 / 8
    assert cf.gain == pytest.approx(50.0)
    low, high = cf.interval
    assert low <= 0.5 <= high
    line = cf.line()
    assert line.startswith("continuous training: +50.0 points of live accuracy over the "
                           "static model")
    assert "same 8 labelled rows" in line and line.endswith("at 2 retrains and 1 promotion")


def test_a_demo_that_serves_the_static_model_gains_exactly_nothing():
    rng = np.random.default_rng(0)

    def frame(n: int, prefix: str) -> pd.DataFrame:
        x, z = rng.normal(size=n), rng.normal(size=n)
        label = np.where(x + 0.8 * rng.normal(size=n) > 0, "pos", "neg")
        return pd.DataFrame({"id": [f"{prefix}{i}" for i in range(n)], "x": x, "z": z,
                             "label": label.astype(object)})

    seed = frame(300, "s").assign(timestamp=pd.Timestamp("2026-03-01", tz="UTC"))
    model = train_model(seed, SCHEMA, TrainConfig(max_iter=30), model_name="m",
                        now=dt.datetime(2026, 3, 2, tzinfo=dt.UTC)).model
    days = [frame(150, f"d{d}-") for d in range(2)]
    served = []
    for d, day in enumerate(days):  # the predictor scores one request at a time
        for start in range(0, len(day), 10):
            chunk = day.iloc[start:start + 10]
            pred, _ = predict_frame(model, chunk, SCHEMA)
            served += [{"id": r.id, "day": d, "model_version": "v-first", "prediction": p,
                        "label": r.label, "labelled": bool(rng.random() < 0.3)}
                       for r, p in zip(chunk.itertuples(), pred, strict=True)]
    served_frame = pd.DataFrame(served)
    labelled = served_frame.loc[served_frame["labelled"], "id"]
    static = static_predictions(model, SCHEMA, days, labelled)
    assert len(static) == len(labelled)
    cf = static_counterfactual(served_frame, static, "v-first", seed=3)
    assert cf.rows == len(labelled) > 60
    assert cf.gain == 0.0 and cf.interval == (0.0, 0.0)
    assert (cf.daily["served"] == cf.daily["static"]).all()
    assert 0.6 < cf.static < 0.95  # a real model, not a trivial one
    assert "+0.0 points" in cf.line()


def test_rows_the_static_model_trained_on_are_left_out_for_both():
    served = pd.DataFrame(served_rows(0, ["a"] * 6, ["a", "a", "a", "b", "b", "b"],
                                      [True] * 6))
    # it "remembers" the rows it trained on (d0-3..5), where the served model was wrong
    static = pd.Series({f"d0-{i}": ("b" if i < 3 else "a") for i in range(6)})
    with_them = static_counterfactual(served, static, "v")
    without = static_counterfactual(served, static, "v", trained_ids=["d0-3", "d0-4", "d0-5"])
    assert with_them.rows == 6 and with_them.gain == 0.0
    assert without.rows == 3 and without.excluded == 3
    assert without.served == 1.0 and without.static == 0.0 and without.gain == 100.0
    assert int(without.daily["labelled"].sum()) == 3


def test_the_interval_is_paired_and_seeded():
    rng = np.random.default_rng(1)
    n = 400
    truth = rng.choice(["a", "b"], n)
    served_ok = rng.random(n) < 0.85
    static_ok = served_ok & (rng.random(n) < 0.8)  # wrong wherever served is, and more
    flip = {"a": "b", "b": "a"}
    served = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "day": np.arange(n) % 4,
                           "model_version": "v", "label": truth, "labelled": True,
                           "prediction": [t if ok else flip[t]
                                          for t, ok in zip(truth, served_ok, strict=True)]})
    static = pd.Series([t if ok else flip[t] for t, ok in zip(truth, static_ok, strict=True)],
                       index=served["id"])
    one = static_counterfactual(served, static, "v", seed=7)
    assert one.interval == static_counterfactual(served, static, "v", seed=7).interval
    assert one.interval != static_counterfactual(served, static, "v", seed=8).interval
    low, high = one.interval
    # the differences are all >= 0 row by row: a paired interval stays above 0, while an
    # unpaired one (two independent accuracies of ~0.85 and ~0.68 on 400 rows) would
    # be about twice as wide
    assert 0 < low < one.gain / 100 < high
    assert high - low < 0.1


def test_a_labelled_row_without_a_static_prediction_is_an_error():
    served = pd.DataFrame(served_rows(0, ["a", "b"], ["a", "b"], [True, True]))
    with pytest.raises(DriftloopError, match="no static prediction"):
        static_counterfactual(served, pd.Series({"d0-0": "a"}), "v")
    nothing = static_counterfactual(served.assign(labelled=False), pd.Series(dtype=object), "v")
    assert nothing.rows == 0 and "no labelled served rows" in nothing.line()


def test_the_static_model_is_the_first_champion_and_later_champions_are_promotions():
    def change(alias: str, to: str | None) -> SimpleNamespace:
        return SimpleNamespace(alias=alias, to_version=to)

    history = [change("champion", "v1"), change("canary", "v2"), change("canary", None),
               change("canary", "v3"), change("champion", "v3"), change("previous", "v1"),
               change("champion", "v1"), change("champion", "v4")]
    registry = SimpleNamespace(aliases=lambda: SimpleNamespace(history=history))
    assert first_champion(registry) == "v1"  # type: ignore[arg-type]
    assert promotions_after(registry, "v1") == 2  # type: ignore[arg-type]
    empty = SimpleNamespace(aliases=lambda: SimpleNamespace(history=[]))
    assert first_champion(empty) is None  # type: ignore[arg-type]
