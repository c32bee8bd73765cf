"""The demo scenarios cut the real streams into days with the true change points."""

from pathlib import Path

import pytest

from driftloop.demo.scenarios import ELEC2_CHANGE, load_scenario, tweets_scenario
from driftloop.errors import DriftloopError

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not (DATA / "tweets.csv").exists() or not (DATA / "elec2.csv").exists():
        pytest.fail(f"{DATA}: the data sets are missing; `make data` fetches them "
                    "(`make test` runs it first)")
    return DATA


def test_tweets_follow_the_topic_plan_with_disjoint_rows(data_dir: Path):
    s = load_scenario("tweets", data_dir, seed=3, rows_per_day=400)
    assert s.regimes == ["airline"] * 2 + ["apple"] * 3 + ["coachella"] * 3 + ["driverless"] * 3
    assert s.change_days == [2, 5, 8]
    assert all(len(d) == 400 for d in s.days) and len(s.seed_rows) == 3000
    texts = [t for d in s.days for t in d["text"]] + list(s.seed_rows["text"])
    ids = [i for d in s.days for i in d["id"]] + list(s.seed_rows["id"])
    assert len(set(ids)) == len(ids)
    # rows are not reused (the corpora hold a few retweets)
    assert len(set(texts)) > 0.97 * len(texts)
    assert set(s.seed_rows["label"]) <= {"negative", "neutral", "positive"}
    assert s.features == ["text"]
    # The first champion sees airline tweets only, and the topics differ in their labels.
    assert s.seed_rows["text"].str.lower().str.contains("coachella").sum() == 0
    neg = [d["label"].eq("negative").mean() for d in s.days]
    assert neg[0] > 0.5 and neg[5] < 0.25


def test_the_shuffle_is_seeded(data_dir: Path):
    a = load_scenario("tweets", data_dir, seed=1, rows_per_day=100)
    b = load_scenario("tweets", data_dir, seed=1, rows_per_day=100)
    c = load_scenario("tweets", data_dir, seed=2, rows_per_day=100)
    assert list(a.days[2]["text"]) == list(b.days[2]["text"])
    assert list(a.days[2]["text"]) != list(c.days[2]["text"])


def test_a_topic_too_small_for_its_days_is_refused(data_dir: Path):
    with pytest.raises(DriftloopError, match="topic 'apple' has 3658 tweets"):
        tweets_scenario(data_dir, rows_per_day=2000, plan=(("airline", 1), ("apple", 2)))


def test_elec2_marks_the_day_past_the_documented_change(data_dir: Path):
    s = load_scenario("elec2", data_dir)
    assert s.features == ["period", "nswprice", "nswdemand", "vicprice", "vicdemand",
                          "transfer"]
    first = 13_000 + 1344
    day = next(d for d in range(len(s.days)) if first + d * 672 + 336 >= ELEC2_CHANGE)
    assert s.change_days == [day] and s.regimes[day - 1] == "before"
    # Victoria's demand is a constant fill before the change and varies after it.
    assert s.seed_rows["vicdemand"].nunique() == 1
    assert s.days[-1]["vicdemand"].nunique() > 100
    assert set(s.days[0]["label"]) == {"UP", "DOWN"}


def test_unknown_scenario_is_one_clear_error(data_dir: Path):
    with pytest.raises(DriftloopError, match="scenario 'x': must be one of tweets, elec2"):
        load_scenario("x", data_dir)
