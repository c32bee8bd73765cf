"""Prometheus metrics of the predictor, created once per registry (get-or-create).

Importing a module twice, reloading it in tests or building two model servers in one
process must not fail with "Duplicated timeseries": :func:`get_or_create` returns the
collector already registered under a name when its type and labels match.

The predictor's metrics live in prometheus_client's default ``REGISTRY`` because kserve's
``/metrics`` route exposes exactly that registry (next to kserve's own
``request_preprocess_seconds``, ``request_predict_seconds`` and
``request_postprocess_seconds`` histograms, labelled by ``model_name``).
"""

from __future__ import annotations

import threading
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

C = TypeVar("C", Counter, Histogram)

#: Buckets of the prediction-confidence histogram (the top class probability).
CONFIDENCE_BUCKETS: tuple[float, ...] = (
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0,
)
MODEL_LABELS: tuple[str, ...] = ("model_name", "model_version")

_lock = threading.Lock()


def get_or_create(
    kind: type[C],
    name: str,
    documentation: str,
    labelnames: tuple[str, ...],
    *,
    registry: CollectorRegistry = REGISTRY,
    **kwargs: Any,
) -> C:
    """Return the collector ``name`` of ``registry``, registering it on first use.

    Args:
        kind: ``Counter`` or ``Histogram``.
        name: The metric name (without the ``_total`` suffix for counters).
        documentation: Help text.
        labelnames: Label names; must match an existing collector's.
        registry: The registry to use (default: prometheus_client's global one).
        **kwargs: Passed to the collector (e.g. ``buckets``).

    Raises:
        ValueError: A collector of another type or with other labels holds the name.
    """
    found: Any
    with _lock:
        try:
            found = kind(name, documentation, labelnames, registry=registry, **kwargs)
        except ValueError:
            # Already registered (a second model server, a reloaded module): reuse it.
            # prometheus_client has no public lookup by name; this mapping is stable API
            # in practice (0.x through 0.26).
            names = getattr(registry, "_names_to_collectors", {})
            found = names.get(name) or names.get(f"{name}_total")
            if found is None:
                raise
    if not isinstance(found, kind) or tuple(found._labelnames) != tuple(labelnames):
        raise ValueError(
            f"metric {name}: already registered as {type(found).__name__} with labels "
            f"{list(found._labelnames)}, not {kind.__name__} with {list(labelnames)}"
        )
    return found


class Children:
    """A labelled metric's children by label values, made on first use, as ``labels()``.

    ``labels()`` checks and locks on every call (~5 us here); a hot path counting each
    event looks its child up in a dict instead. The exposition is the same: a child
    exists once it was first used.
    """

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._made: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        """The child for ``values`` (made now if it is the first use)."""
        child = self._made.get(values)
        if child is None:
            child = self._made[values] = self.metric.labels(*values)
        return child


def prediction_confidence(registry: CollectorRegistry = REGISTRY) -> Histogram:
    """Histogram of the top class probability of each predicted row."""
    return get_or_create(
        Histogram,
        "driftloop_prediction_confidence",
        "Probability of the predicted class, one observation per predicted row.",
        MODEL_LABELS,
        registry=registry,
        buckets=CONFIDENCE_BUCKETS,
    )


def predicted_class(registry: CollectorRegistry = REGISTRY) -> Counter:
    """Counter of predicted rows per class (exposed as ``driftloop_predictions_total``)."""
    return get_or_create(
        Counter,
        "driftloop_predictions",
        "Predicted rows by predicted class.",
        (*MODEL_LABELS, "class"),
        registry=registry,
    )


def rejected_requests(registry: CollectorRegistry = REGISTRY) -> Counter:
    """Counter of requests answered 4xx because the input broke the schema."""
    return get_or_create(
        Counter,
        "driftloop_invalid_requests",
        "Prediction requests rejected because their input does not match the schema.",
        MODEL_LABELS,
        registry=registry,
    )


#: Buckets of the request-latency histograms, in seconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


def serving_requests(registry: CollectorRegistry = REGISTRY, *,
                     prefix: str = "driftloop_serving") -> Counter:
    """Inference requests by the version that answered and the HTTP status code.

    Exposed as ``<prefix>_requests_total``: the canary's error rate per version comes from
    here (KServe's payload logger sends a response event only for HTTP 200, so the logged
    records never show a failed request). The predictor exports ``driftloop_serving_*``
    (what it answered); the local gateway ``driftloop_gateway_*`` (end to end, including
    revisions that did not answer), so a Prometheus scraping both counts nothing twice.
    """
    return get_or_create(
        Counter,
        f"{prefix}_requests",
        "Inference requests by model version and HTTP status code.",
        (*MODEL_LABELS, "code"),
        registry=registry,
    )


def serving_latency(registry: CollectorRegistry = REGISTRY, *,
                    prefix: str = "driftloop_serving") -> Histogram:
    """Inference request latency by the version that answered, seconds."""
    return get_or_create(
        Histogram,
        f"{prefix}_request_duration_seconds",
        "Inference request latency by model version, seconds.",
        MODEL_LABELS,
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )
