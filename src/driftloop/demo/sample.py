"""A small generated store for the demo and tests: days of tabular traffic with a known drift.

Features ``x0``, ``x1`` (numeric) and ``segment`` (categorical); the label follows a rule
that changes at ``drift_day`` (concept drift) while ``x0`` also shifts (covariate drift).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftloop.data.schema import Schema, schema_from_dict
from driftloop.data.storage import LocalStore

SEGMENTS = ("north", "south", "east", "west")


def sample_schema() -> Schema:
    """Return the schema of the generated sample."""
    return schema_from_dict(
        {
            "name": "sample",
            "labels": ["no", "yes"],
            "slice": "segment",
            "columns": [
                {"name": "x0", "kind": "numeric", "dtype": "float", "min": -50, "max": 50},
                {"name": "x1", "kind": "numeric", "dtype": "float", "min": -50, "max": 50},
                {"name": "segment", "kind": "categorical", "dtype": "string",
                 "allowed": list(SEGMENTS)},
            ],
        },
        source="sample schema",
    )


def make_rows(n: int, rng: np.random.Generator, *, drifted: bool) -> pd.DataFrame:
    """Draw ``n`` labelled rows from the pre-drift or post-drift distribution."""
    x0 = rng.normal(2.0 if drifted else 0.0, 1.0, n)
    x1 = rng.normal(0.0, 1.0, n)
    seg = rng.choice(SEGMENTS, n, p=[0.4, 0.3, 0.2, 0.1])
    bump = np.where(seg == "north", 0.5, 0.0)
    # After the drift the decision boundary moves as well as the inputs.
    score = (x0 - 2.0 - x1 if drifted else x0 + x1) + bump + rng.normal(0, 0.3, n)
    label = np.where(score > 0, "yes", "no")
    return pd.DataFrame({"x0": x0.round(4), "x1": x1.round(4), "segment": seg, "label": label})


@dataclass(frozen=True)
class SampleInfo:
    """What :func:`write_sample_store` wrote."""

    root: Path
    schema_path: Path
    first_day: dt.date
    days: int
    drift_day: int
    malformed_rows: int


def _write_jsonl(store: LocalStore, key: str, rows: list[dict[str, object]]) -> None:
    store.write_text(key, "".join(json.dumps(r) + "\n" for r in rows))


def write_sample_store(
    root: Path,
    *,
    model_name: str = "sample",
    first_day: dt.date = dt.date(2026, 1, 1),
    days: int = 6,
    rows_per_day: int = 600,
    reference_rows: int = 2000,
    drift_day: int = 3,
    label_share: float = 0.6,
    malformed: bool = True,
    seed: int = 0,
) -> SampleInfo:
    """Write a reference set, ``days`` days of requests and feedback, and the schema.

    Args:
        root: Store folder (created).
        model_name: Model name used for ``reference/<model>/seed.parquet``.
        first_day: Date of the first request partition.
        days: Number of daily partitions.
        rows_per_day: Requests per day.
        reference_rows: Labelled rows of the initial reference set.
        drift_day: Index of the first drifted day (``days`` or more: no drift).
        label_share: Share of requests that get a feedback label (on the same day).
        malformed: Add a few invalid rows (quarantined by ingest) to the first day.
        seed: Seed of every draw.
    """
    rng = np.random.default_rng(seed)
    store = LocalStore(root, create=True)
    schema = sample_schema()
    schema_path = root / "schema.json"
    schema_path.write_text(json.dumps(schema.to_dict(), indent=2) + "\n")

    ref = make_rows(reference_rows, rng, drifted=False)
    t0 = pd.Timestamp(first_day - dt.timedelta(days=7), tz="UTC")
    ref.insert(0, "timestamp", [t0 + pd.Timedelta(seconds=30 * i) for i in range(len(ref))])
    ref.insert(0, "id", [f"ref-{i:06d}" for i in range(len(ref))])
    buf = ref.to_parquet(index=False)
    store.write_bytes(f"reference/{model_name}/seed.parquet", buf)

    bad_rows = 0
    for d in range(days):
        day = first_day + dt.timedelta(days=d)
        rows = make_rows(rows_per_day, rng, drifted=d >= drift_day)
        start = pd.Timestamp(day, tz="UTC")
        stamps = [start + pd.Timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 86_000,
                                                                                 len(rows)))]
        requests, feedback = [], []
        for i, (row, ts) in enumerate(zip(rows.to_dict(orient="records"), stamps, strict=True)):
            rid = f"{day.isoformat()}-{i:05d}"
            requests.append({"id": rid, "timestamp": ts.isoformat(), "x0": row["x0"],
                             "x1": row["x1"], "segment": row["segment"]})
            if rng.random() < label_share:
                fb_ts = ts + pd.Timedelta(minutes=5)
                feedback.append({"id": rid, "label": row["label"], "timestamp": fb_ts.isoformat()})
        if malformed and d == 0:
            requests += [
                {"id": "bad-1", "timestamp": start.isoformat(), "x0": "abc", "x1": 0.1,
                 "segment": "north"},
                {"id": "bad-2", "timestamp": "yesterday", "x0": 0.1, "x1": 0.2,
                 "segment": "north"},
                {"id": "bad-3", "timestamp": start.isoformat(), "x0": 0.1, "x1": 999.0,
                 "segment": "mars"},
                dict(requests[0]),  # an exact duplicate by id
            ]
            bad_rows = 3
        _write_jsonl(store, f"requests/dt={day.isoformat()}/part-0.jsonl", requests)
        _write_jsonl(store, f"feedback/dt={day.isoformat()}/part-0.jsonl", feedback)
    return SampleInfo(root=root, schema_path=schema_path, first_day=first_day, days=days,
                      drift_day=drift_day, malformed_rows=bad_rows)
