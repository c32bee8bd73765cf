"""Simulated users: real HTTP traffic through the gateway and delayed feedback to the sink.

The demo's clock is simulated (one pipeline run per simulated day), so the gateway's
payload logger and the sink both read :class:`SimClock`, which :class:`Traffic` moves
along as it sends each day's requests. A share of the predictions gets the true label as
user feedback after a random delay (exponential, in hours); feedback that falls due after
the end of a day is posted on a later day, as real feedback would be.

:func:`static_counterfactual` scores the served traffic a second time with the first
champion, never retrained, to say what continuous training bought.
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd

from driftloop.data.schema import Schema
from driftloop.errors import DriftloopError


class SimClock:
    """A settable clock (epoch seconds) shared by the gateway's logger and the sink."""

    def __init__(self, moment: dt.datetime) -> None:
        self.now = moment.timestamp()

    def __call__(self) -> float:  # noqa: D102 - the clock protocol: epoch seconds
        return self.now

    def set(self, moment: dt.datetime) -> None:
        """Move to ``moment`` (the simulated time never goes back)."""
        self.now = max(self.now, moment.timestamp())

    @property
    def moment(self) -> dt.datetime:
        """The current simulated time (UTC)."""
        return dt.datetime.fromtimestamp(self.now, dt.UTC)


@dataclass(frozen=True)
class TrafficConfig:
    """How the simulated users behave.

    Attributes:
        feedback_share: Share of predictions that get a user-feedback label.
        feedback_delay_hours: Mean delay of a label after its prediction (exponential).
        batch: Rows per HTTP request (V1 ``instances``).
        seed: Seed of the feedback draws.
        users: Simulated users with ids (0: anonymous requests). Each request is one
            user's, drawn uniformly, and carries the id in the ``x-user-id`` header (the
            key of a sticky A/B split); the served rows then say which user and variant.
    """

    feedback_share: float = 0.3
    feedback_delay_hours: float = 6.0
    batch: int = 5
    seed: int = 0
    users: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.feedback_share <= 1.0:
            raise DriftloopError(f"feedback_share: must be within 0..1 (got {self.feedback_share})")
        if self.users < 0:
            raise DriftloopError(f"users: must be >= 0 (got {self.users})")
        if self.feedback_delay_hours < 0 or self.batch < 1:
            raise DriftloopError("feedback_delay_hours must be >= 0 and batch >= 1 "
                                 f"(got {self.feedback_delay_hours}, {self.batch})")


@dataclass
class DayTraffic:
    """What one simulated day of traffic did.

    Attributes:
        day: Index of the simulated day.
        requests: HTTP requests sent.
        rows: Rows predicted.
        served: Per row: id, day, model version, prediction, true label, whether a
            feedback label was drawn for it.
        feedback_posted: Feedback labels posted during the day (any day's predictions).
    """

    day: int
    requests: int = 0
    rows: int = 0
    served: list[dict[str, Any]] = field(default_factory=list)
    feedback_posted: int = 0


class Traffic:
    """Sends each day's rows through the gateway and posts the feedback that falls due.

    Args:
        gateway_url: The gateway (``http://127.0.0.1:port``).
        sink_url: The payload sink (its ``/feedback`` route takes the labels).
        model_name: Model name on the inference path.
        features: Feature columns sent in each instance (with the row's ``id``).
        clock: The simulated clock (moved along by :meth:`replay_day`).
        config: Share, delay, batch and seed.
    """

    def __init__(self, gateway_url: str, sink_url: str, model_name: str, features: list[str],
                 clock: SimClock, config: TrafficConfig | None = None) -> None:
        self.model_name = model_name
        self.features = features
        self.clock = clock
        self.config = config or TrafficConfig()
        self._rng = np.random.default_rng(self.config.seed)
        # its own stream, so that naming users leaves the feedback draws as they were
        self._users = np.random.default_rng([self.config.seed, 1])
        self._due: list[tuple[float, str, str]] = []  # (due epoch, id, label), a heap
        self._gateway = httpx.Client(base_url=gateway_url, timeout=60.0)
        self._sink = httpx.Client(base_url=sink_url, timeout=60.0)
        self.feedback_posted = 0

    def close(self) -> None:
        """Close the HTTP clients."""
        self._gateway.close()
        self._sink.close()

    def __enter__(self) -> Traffic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending_feedback(self) -> int:
        """Labels drawn but not yet due."""
        return len(self._due)

    def post_due(self) -> int:
        """Post every feedback label due by the clock's time; return how many."""
        now = self.clock()
        rows = []
        while self._due and self._due[0][0] <= now:
            due, rid, label = heapq.heappop(self._due)
            stamp = dt.datetime.fromtimestamp(due, dt.UTC).isoformat().replace("+00:00", "Z")
            rows.append({"id": rid, "label": label, "timestamp": stamp})
        if rows:
            answer = self._sink.post("/feedback", json=rows)
            if answer.status_code != 200:
                raise DriftloopError(f"feedback: the sink answered {answer.status_code}: "
                                     f"{answer.text[:200]}")
            self.feedback_posted += len(rows)
        return len(rows)

    def _predict(self, rows: list[dict[str, Any]], user: str | None = None
                 ) -> tuple[dict[str, Any], str | None]:
        """The answer's body and its A/B variant (``x-driftloop-variant``, if any)."""
        path = f"/v1/models/{self.model_name}:predict"
        headers = {"x-user-id": user} if user else {}
        answer = self._gateway.post(path, json={"instances": rows}, headers=headers)
        if answer.status_code != 200:
            raise DriftloopError(f"POST {path}: the gateway answered {answer.status_code}: "
                                 f"{answer.text[:200]}")
        body: dict[str, Any] = answer.json()
        return body, answer.headers.get("x-driftloop-variant")

    def replay_day(self, index: int, day: dt.date, frame: pd.DataFrame, *,
                   midday: Callable[[dt.datetime], None] | None = None) -> DayTraffic:
        """Send ``frame`` (``id``, features, ``label``) spread over ``day`` through the gateway.

        Requests are spread evenly between 00:00 and 23:00; before each one, the feedback
        that fell due is posted. The clock ends at 23:59 with everything due by then
        posted. ``midday`` (e.g. the canary's own analysis) is called once with 12:00,
        after the feedback due by then was posted and before the afternoon's requests.

        Raises:
            DriftloopError: The gateway or the sink answered with an error.
        """
        out = DayTraffic(index)
        start = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)
        records = frame.to_dict(orient="records")
        batch = self.config.batch
        n_requests = max(1, -(-len(records) // batch))
        step = dt.timedelta(hours=23) / n_requests
        posted = self.feedback_posted
        for r in range(n_requests):
            chunk = records[r * batch:(r + 1) * batch]
            if not chunk:
                break
            moment = start + step * r
            if midday is not None and moment >= start + dt.timedelta(hours=12):
                noon = start + dt.timedelta(hours=12)
                self.clock.set(noon)
                self.post_due()
                midday(noon)
                midday = None
            self.clock.set(moment)
            self.post_due()
            instances = [{"id": row["id"], **{f: row[f] for f in self.features}}
                         for row in chunk]
            user = (f"user-{int(self._users.integers(self.config.users)):04d}"
                    if self.config.users else None)
            body, variant = self._predict(instances, user)
            out.requests += 1
            for row, pred in zip(chunk, body["predictions"], strict=True):
                labelled = bool(self._rng.random() < self.config.feedback_share)
                if labelled:
                    delay = self._rng.exponential(self.config.feedback_delay_hours) * 3600.0
                    heapq.heappush(self._due, (moment.timestamp() + delay, str(row["id"]),
                                               str(row["label"])))
                out.served.append({
                    "id": row["id"], "day": index,
                    "model_version": pred.get("model_version") or body.get("model_version"),
                    "prediction": pred.get("class"), "label": row["label"],
                    "labelled": labelled,
                    **({"user": user, "ab_variant": variant} if user else {}),
                })
            out.rows += len(chunk)
        self.clock.set(start + dt.timedelta(hours=23, minutes=59))
        self.post_due()
        out.feedback_posted = self.feedback_posted - posted
        return out


def live_accuracy(served: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per day and model version on the predictions that got a feedback label.

    Args:
        served: :attr:`DayTraffic.served` rows of every day.

    Returns:
        Columns ``day``, ``model_version``, ``labelled``, ``accuracy`` (one row per day
        and version that served labelled predictions).
    """
    labelled = served[served["labelled"]]
    if labelled.empty:
        return pd.DataFrame(columns=["day", "model_version", "labelled", "accuracy"])
    correct = (labelled["prediction"] == labelled["label"]).rename("correct")
    grouped = labelled.assign(correct=correct).groupby(["day", "model_version"])["correct"]
    return grouped.agg(labelled="size", accuracy="mean").reset_index()


@dataclass
class Counterfactual:
    """What the first champion, never retrained, would have scored on the served traffic.

    Both accuracies are measured on the same rows (paired): the labelled served rows the
    static model did not train on.

    Attributes:
        static_version: The first champion (the static model).
        daily: Per day: ``day``, ``labelled`` (paired rows), ``served`` (accuracy of what
            was served), ``static`` (accuracy the static model would have had).
        rows: Paired rows in all.
        excluded: Labelled served rows left out because the static model trained on them.
        served: Accuracy of what was served, over all paired rows.
        static: The static model's accuracy on them.
        interval: ``confidence`` interval of ``served - static`` (paired bootstrap).
        confidence: Its level.
        resamples: Bootstrap resamples.
        retrains: Retrains during the served days.
        promotions: Versions that became champion after the first one.
    """

    static_version: str
    daily: pd.DataFrame
    rows: int
    excluded: int
    served: float
    static: float
    interval: tuple[float, float]
    confidence: float = 0.95
    resamples: int = 2000
    retrains: int = 0
    promotions: int = 0

    @property
    def gain(self) -> float:
        """Served minus static accuracy, in accuracy points (percentage points)."""
        return 100.0 * (self.served - self.static)

    def line(self) -> str:
        """The one-line summary the demo prints and the report shows."""
        at = (f"at {self.retrains} retrain{'' if self.retrains == 1 else 's'} and "
              f"{self.promotions} promotion{'' if self.promotions == 1 else 's'}")
        if self.rows == 0:
            return ("continuous training: no labelled served rows to compare with the "
                    f"static model, {at}")
        low, high = (100.0 * v for v in self.interval)
        return (f"continuous training: {self.gain:+.1f} points of live accuracy over the "
                f"static model ({self.served:.3f} served vs {self.static:.3f} for the first "
                f"champion, never retrained; {self.confidence:.0%} interval "
                f"[{low:+.1f}, {high:+.1f}] from a paired bootstrap over the same "
                f"{self.rows} labelled rows, seeded), {at}")


def static_predictions(model: Any, schema: Schema, frames: list[pd.DataFrame],
                       ids: Any) -> pd.Series:
    """The static model's prediction of each row of ``frames`` whose id is in ``ids``.

    Args:
        model: The static model (a fitted pipeline).
        schema: Its schema.
        frames: The days' rows (``id``, the features, ``label``).
        ids: Ids of the rows to score (the labelled served rows).

    Returns:
        Predicted class names indexed by id.
    """
    from driftloop.models.train import predict_frame

    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["id"])
    rows = rows.loc[rows["id"].astype(str).isin(set(map(str, ids)))]
    if rows.empty:
        return pd.Series(dtype=object)
    pred, _ = predict_frame(model, rows, schema)
    return pd.Series(pred, index=rows["id"].astype(str).to_numpy(), dtype=object)


def static_counterfactual(
    served: pd.DataFrame, static: pd.Series, static_version: str, *,
    trained_ids: Any = (), retrains: int = 0, promotions: int = 0, seed: int = 0,
    resamples: int = 2000, confidence: float = 0.95,
) -> Counterfactual:
    """Compare what was served with what the static model would have served, row by row.

    Only labelled served rows count, and only those the static model did not train on
    (``trained_ids``); each is scored twice: the prediction actually served and the
    static model's (``static``, by id). The interval is the paired bootstrap percentile
    interval of the accuracy difference (:func:`driftloop.decide.bootstrap.paired_bootstrap_ci`,
    seeded): both accuracies come from the same resampled rows each time.

    Args:
        served: :attr:`DayTraffic.served` rows of every day.
        static: The static model's prediction per id (:func:`static_predictions`).
        static_version: The static model's version.
        trained_ids: Ids of the static model's training rows.
        retrains: Retrains during the served days (for the summary line).
        promotions: New champions after the first (for the summary line).
        seed: Seed of the bootstrap.
        resamples: Bootstrap resamples.
        confidence: Level of the interval.

    Raises:
        DriftloopError: A paired row has no static prediction.
    """
    from driftloop.decide.bootstrap import paired_bootstrap_ci

    labelled = served.loc[served["labelled"].astype(bool)] if len(served) else served
    ids = labelled["id"].astype(str) if len(labelled) else pd.Series(dtype=str)
    trained = ids.isin(set(map(str, trained_ids)))
    rows = labelled.loc[~trained.to_numpy()] if len(labelled) else labelled
    missing = sorted(set(rows["id"].astype(str)) - set(static.index)) if len(rows) else []
    if missing:
        raise DriftloopError(f"counterfactual: no static prediction for {len(missing)} "
                             f"labelled rows (e.g. {missing[0]})")
    empty = pd.DataFrame(columns=["day", "labelled", "served", "static"])
    if rows.empty:
        return Counterfactual(static_version, empty, 0, int(trained.sum()), math.nan,
                              math.nan, (math.nan, math.nan), confidence, resamples,
                              retrains, promotions)
    truth = rows["label"].astype(str).to_numpy()
    served_pred = rows["prediction"].astype(str).to_numpy()
    static_pred = static.loc[rows["id"].astype(str)].astype(str).to_numpy()
    frame = pd.DataFrame({"day": rows["day"].to_numpy(), "served": served_pred == truth,
                          "static": static_pred == truth})
    daily = frame.groupby("day").agg(labelled=("served", "size"), served=("served", "mean"),
                                     static=("static", "mean")).reset_index()
    low, high = paired_bootstrap_ci(truth, static_pred, served_pred, "accuracy",
                                    resamples=resamples, confidence=confidence, seed=seed)
    return Counterfactual(static_version, daily, len(rows), int(trained.sum()),
                          float(frame["served"].mean()), float(frame["static"].mean()),
                          (low, high), confidence, resamples, retrains, promotions)
