"""Live quality per model version, measured where predictions and labels meet: the sink.

The sink writes every logged prediction to ``requests/`` and every ``POST /feedback`` label
to ``feedback/``; ingest joins them by ``id`` a run later. Prometheus should not wait for
a run, so the sink also keeps the latest predictions in memory and joins each label as it
arrives, counting per ``(model_name, model_version)``:

``driftloop_feedback_labels_total``
    Labels joined to a logged prediction (one per prediction: the first label).
``driftloop_feedback_correct_total``
    Those whose label equals the prediction. Live accuracy over any window is
    ``increase(correct[w]) / increase(labels[w])``: counters, so Prometheus can rate,
    sum and compare versions over the window a panel or an alert chooses (a pre-averaged
    gauge could not be re-aggregated).
``driftloop_feedback_label_lag_seconds`` (histogram, by ``model_name``)
    Time from the prediction (the record's ``timestamp``: the request's ``Ce-Time``) to
    the label (the feedback's ``timestamp``, default its arrival), both in the senders'
    clocks, so a replay with simulated times measures simulated lag. A negative lag
    (clock skew between the logger and the labeller) counts as 0.
``driftloop_feedback_received_total{outcome}``
    Every feedback row, by what happened to it: ``joined`` (counted above),
    ``relabelled`` (a further label for a prediction already labelled: stored, and
    ingest keeps the latest, but the live counters keep the first -- a counter cannot
    take a label back), ``unmatched`` (no prediction under that id in memory, see
    below) and ``rejected`` (a refused feedback body, 4xx: counted once per body, its
    rows are unknown). The series exist at 0 from the start, so "feedback stopped" can
    be told from "never came".

What the join remembers: an insertion-ordered map ``id -> (version, prediction, time)``
of the records the sink wrote with a prediction (a pair or a lone response; a lone
request has none). It is bounded twice: at most ``max_predictions`` entries (the oldest
go first) and none older than ``ttl`` seconds of the sink's clock (receive time). A label
whose prediction was evicted, was never logged, was logged only as a request, is still
waiting for its partner (``pending_ttl``), or was logged before the sink restarted (the
map is memory only) counts as ``unmatched``: its row is stored all the same, and ingest
still joins it from the files; only the live counters miss it. An ``id`` logged again
(a client reusing ids) points at its latest prediction. Measured: ~350 bytes per entry
with 40-character ids (~260 for the entry, ~90 for the id string;
``tests/serving/test_sink_quality.py`` keeps it under 450), so the default 200,000
entries cost ~70 MB; size ``--feedback-max-predictions`` to the predictions logged
within the usual label delay, and ``--feedback-ttl`` (default 7 days) to that delay.

Bounded labels: ``model_version`` comes from the logged responses, so at most
``max_versions`` ``(model_name, model_version)`` pairs get series of their own; later
ones are counted under ``model_version="other"`` (a log line says so once). A response
without a version counts as ``"unknown"``. ``model_name`` is the response's
``model_name`` (the predictor's and kserve's V2 responses carry it), else the event's
``Ce-Inferenceservicename``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger(__name__)

#: Outcomes of ``driftloop_feedback_received_total`` (every one has a series from start).
OUTCOMES: tuple[str, ...] = ("joined", "relabelled", "unmatched", "rejected")
#: Buckets of the label-lag histogram: a minute to a month, in seconds.
LAG_BUCKETS: tuple[float, ...] = (
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0, 86400.0,
    2 * 86400.0, 3 * 86400.0, 7 * 86400.0, 14 * 86400.0, 30 * 86400.0,
)
UNKNOWN, OTHER = "unknown", "other"
DEFAULT_MAX_PREDICTIONS = 200_000
DEFAULT_TTL = 7 * 86400.0
DEFAULT_MAX_VERSIONS = 64


class _Logged(NamedTuple):
    """One logged prediction waiting for its label."""

    series: tuple[str, str]  # (model_name, model_version) as labelled
    prediction: str
    occurred: float  # the record's timestamp, epoch seconds
    received: float  # the sink's clock when written (for the ttl)
    labelled: bool


def label_text(value: Any) -> str:
    """A prediction or label as the text feedback stores (``parse_feedback``'s rule)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _epoch(text: Any, default: float) -> float:
    if not isinstance(text, str):
        return default
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return default
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


class LiveQuality:
    """Joins feedback labels to the predictions the sink logged; exports the counts.

    Not thread-safe by itself: :class:`~driftloop.serving.sink_pairing.PayloadSink` calls
    it under its lock.

    Args:
        registry: Where the metrics are registered (the sink's own registry).
        max_predictions: Most predictions remembered for the join (oldest forgotten first).
        ttl: Seconds a prediction is remembered (sink clock, from when it was written).
        max_versions: Most ``(model_name, model_version)`` label pairs; beyond, ``other``.
    """

    def __init__(self, registry: CollectorRegistry, *,
                 max_predictions: int = DEFAULT_MAX_PREDICTIONS, ttl: float = DEFAULT_TTL,
                 max_versions: int = DEFAULT_MAX_VERSIONS) -> None:
        if max_predictions < 1 or not ttl > 0 or max_versions < 1:
            raise ValueError("max_predictions >= 1, ttl > 0 and max_versions >= 1 required")
        self.max_predictions = max_predictions
        self.ttl = float(ttl)
        self.max_versions = max_versions
        self._logged: OrderedDict[str, _Logged] = OrderedDict()
        self._series: set[tuple[str, str]] = set()
        self._warned = False
        labels = ("model_name", "model_version")
        self._labels = Counter("driftloop_feedback_labels",
                               "Feedback labels joined to a logged prediction (the first "
                               "label of each), by the version that predicted.", labels,
                               registry=registry)
        self._correct = Counter("driftloop_feedback_correct",
                                "Joined feedback labels equal to the prediction.", labels,
                                registry=registry)
        self._lag = Histogram("driftloop_feedback_label_lag_seconds",
                              "Time from a prediction to its feedback label, seconds.",
                              ("model_name",), registry=registry, buckets=LAG_BUCKETS)
        self._received = Counter("driftloop_feedback_received",
                                 "Feedback rows by outcome (joined, relabelled, unmatched); "
                                 "rejected counts refused bodies.", ("outcome",),
                                 registry=registry)
        for outcome in OUTCOMES:
            self._received.labels(outcome)

    def _series_of(self, model_name: str, version: str) -> tuple[str, str]:
        key = (model_name, version)
        if key in self._series:
            return key
        if len(self._series) < self.max_versions:
            self._series.add(key)
            # both counters get their series together: a version without a correct label
            # has correct_total 0, not a missing series (which would hide its accuracy)
            self._labels.labels(*key)
            self._correct.labels(*key)
            return key
        if not self._warned:
            self._warned = True
            log.warning("sink: more than %d model versions; further ones are counted as "
                        "model_version=%r", self.max_versions, OTHER)
        other = (model_name, OTHER)
        self._labels.labels(*other)
        self._correct.labels(*other)
        return other

    def _expire(self, now: float) -> None:
        while self._logged:
            first = next(iter(self._logged.values()))
            if now - first.received < self.ttl and len(self._logged) <= self.max_predictions:
                break
            self._logged.popitem(last=False)

    def logged(self, records: Iterable[Mapping[str, Any]], model_name: str,
               received: float) -> None:
        """Remember the written records that carry a prediction.

        Args:
            records: The records just written (``build_records``' dicts).
            model_name: The model the response names.
            received: The sink's clock when they were written.
        """
        for record in records:
            rid, prediction = record.get("id"), record.get("prediction")
            if rid is None or prediction is None:
                continue  # a lone request: nothing to score a label against
            version = record.get("model_version")
            series = self._series_of(model_name or UNKNOWN,
                                     UNKNOWN if version in (None, "") else str(version))
            key = str(rid)
            self._logged.pop(key, None)  # a reused id: its latest prediction, at the end
            self._logged[key] = _Logged(series, label_text(prediction),
                                        _epoch(record.get("timestamp"), received), received,
                                        False)
        self._expire(received)

    def feedback(self, rows: Iterable[Mapping[str, str]], now: float) -> None:
        """Join stored feedback rows (``parse_feedback``'s) to the remembered predictions."""
        self._expire(now)
        for row in rows:
            key = str(row["id"])
            entry = self._logged.get(key)
            if entry is None:
                self._received.labels("unmatched").inc()
                continue
            if entry.labelled:
                self._received.labels("relabelled").inc()
                continue
            self._logged[key] = entry._replace(labelled=True)
            self._received.labels("joined").inc()
            self._labels.labels(*entry.series).inc()
            if row["label"] == entry.prediction:
                self._correct.labels(*entry.series).inc()
            lag = _epoch(row.get("timestamp"), now) - entry.occurred
            self._lag.labels(entry.series[0]).observe(max(0.0, lag) if math.isfinite(lag)
                                                      else 0.0)

    def rejected(self) -> None:
        """Count one refused feedback body."""
        self._received.labels("rejected").inc()

    def __len__(self) -> int:
        return len(self._logged)


def response_model_name(response: Any, ext: Mapping[str, str]) -> str:
    """The model a logged response names: its ``model_name``, else the InferenceService."""
    name = response.get("model_name") if isinstance(response, dict) else None
    if isinstance(name, str) and name:
        return name
    return ext.get("inference_service") or UNKNOWN


__all__ = [
    "DEFAULT_MAX_PREDICTIONS",
    "DEFAULT_MAX_VERSIONS",
    "DEFAULT_TTL",
    "LAG_BUCKETS",
    "OUTCOMES",
    "LiveQuality",
    "label_text",
    "response_model_name",
]
