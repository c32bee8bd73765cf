"""Shard-wise drift at scale for ``drift_vs_evidently.py``: seeded shards on disk, three workers.

The current window is written to disk as ``n_shards`` seeded shards (``shard-<i>.npz``:
a float64 matrix of the numeric columns and an int8 matrix of category codes; every 4th
column of each kind drifted, as in ``make_data``), the reference is generated in memory.
Workers (each a fresh process, started by the parent):

* ``shardwise``: driftloop's pipeline path in one process: for each shard, load it, then
  :func:`driftloop.decide.shards.profile_shard` and save the shard profile (a ``drift_shard``
  pod's work, the shard's frame freed after it); then :func:`merge_profiles` +
  :func:`detect_drift_merged` (the merge task). Its peak RSS is what one pod needs.
* ``inmemory``: all shards concatenated into one frame, then ``detect_drift`` (today's
  single-pod step) - only where the machine holds the frame.
* ``evidently``: the same concatenated frame through ``DataDriftPreset`` (in Evidently's own
  venv when the project venv lacks it; this module imports neither driftloop nor Evidently
  at the top so both interpreters can run it).

Times exclude imports and the profile build (once per model version, timed apart); the
shard loads are timed inside ``shardwise`` (a pod reads its own files) and apart for the
other two (reading the day is not their step).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CATEGORIES = np.array([f"cat_{i}" for i in range(6)], dtype=object)
REF_SHARES = np.array([0.35, 0.25, 0.15, 0.12, 0.08, 0.05])
DRIFT_SHARES = REF_SHARES[::-1].copy()
REFERENCE_ROWS = 1_000_000


def columns(n_cols: int) -> tuple[list[str], list[str], set[str]]:
    """Numeric and categorical column names and the drifted ones (every 4th of each kind)."""
    n_cat = max(1, n_cols // 5)
    numeric = [f"num_{i:03d}" for i in range(n_cols - n_cat)]
    categorical = [f"cat_{i:03d}" for i in range(n_cat)]
    drifted = {c for i, c in enumerate(numeric) if i % 4 == 0}
    drifted |= {c for i, c in enumerate(categorical) if i % 4 == 0}
    return numeric, categorical, drifted


def _arrays(n_rows: int, n_cols: int, seed: int, part: int,
            current: bool) -> tuple[np.ndarray, np.ndarray]:
    numeric, categorical, drifted = columns(n_cols)
    law = np.random.default_rng([seed, 0])
    means, scales = law.uniform(-5.0, 5.0, len(numeric)), law.uniform(0.5, 3.0, len(numeric))
    rng = np.random.default_rng([seed, 1 + int(current), part])
    num = np.empty((n_rows, len(numeric)))
    for j, name in enumerate(numeric):
        shift = 1.0 if current and name in drifted else 0.0
        num[:, j] = means[j] + scales[j] * (rng.standard_normal(n_rows) + shift)
    cat = np.empty((n_rows, len(categorical)), dtype=np.int8)
    for j, name in enumerate(categorical):
        shares = DRIFT_SHARES if current and name in drifted else REF_SHARES
        cat[:, j] = rng.choice(len(CATEGORIES), size=n_rows, p=shares)
    return num, cat


def frame_of(num: np.ndarray, cat: np.ndarray, n_cols: int) -> pd.DataFrame:
    """The frame of one shard's matrices (categories as strings, as a request file gives)."""
    numeric, categorical, _ = columns(n_cols)
    cols: dict[str, Any] = {n: num[:, j] for j, n in enumerate(numeric)}
    cols |= {n: CATEGORIES[cat[:, j]] for j, n in enumerate(categorical)}
    return pd.DataFrame(cols)


def reference(n_cols: int, seed: int, n_rows: int = REFERENCE_ROWS) -> pd.DataFrame:
    """The seeded reference (drawn from the undrifted distribution)."""
    return frame_of(*_arrays(n_rows, n_cols, seed, 0, current=False), n_cols)


def write_shards(folder: Path, n_rows: int, n_cols: int, n_shards: int, seed: int) -> list[Path]:
    """Write the window as ``n_shards`` seeded shard files (kept when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    want = {"rows": n_rows, "cols": n_cols, "shards": n_shards, "seed": seed, "format": 1}
    paths = [folder / f"shard-{i:03d}.npz" for i in range(n_shards)]
    if manifest.is_file() and json.loads(manifest.read_text()) == want:
        return paths
    for i, (path, rows) in enumerate(zip(paths, _split(n_rows, n_shards), strict=True)):
        num, cat = _arrays(rows, n_cols, seed, i, current=True)
        with path.open("wb") as fh:
            np.savez(fh, num=num, cat=cat)
    manifest.write_text(json.dumps(want))
    return paths


def _split(n: int, parts: int) -> list[int]:
    return [len(a) for a in np.array_split(np.arange(n), parts)]


def load_shard(path: Path, n_cols: int) -> pd.DataFrame:
    """One shard's frame."""
    with np.load(path) as npz:
        return frame_of(npz["num"], npz["cat"], n_cols)


def load_window(paths: list[Path], n_cols: int) -> pd.DataFrame:
    """Every shard in one frame (what a single pod holds today)."""
    return pd.concat([load_shard(p, n_cols) for p in paths], ignore_index=True)


# ---------------------------------------------------------------- measuring


def rss_mb() -> float:
    """Resident set size now, MB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """High-water mark of the resident set, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the resident-set high-water mark (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def timed(step: Callable[[], Any]) -> tuple[Any, float]:
    """``step()`` and its wall time."""
    t0 = time.perf_counter()
    out = step()
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------- workers


def _schema_and_profile(n_cols: int, seed: int) -> tuple[Any, Any, Any, float]:
    from driftloop.config import DriftConfig
    from driftloop.data.schema import schema_from_dict
    from driftloop.decide.profile import build_reference_profile

    numeric, categorical, _ = columns(n_cols)
    schema = schema_from_dict({"name": "bench", "columns": [
        *({"name": c, "kind": "numeric", "dtype": "float"} for c in numeric),
        *({"name": c, "kind": "categorical", "dtype": "string"} for c in categorical),
    ]})
    config = DriftConfig()
    ref = reference(n_cols, seed)
    t0 = time.perf_counter()
    profile = build_reference_profile(ref, schema, config, model_version="bench")
    build_s = time.perf_counter() - t0
    del ref
    gc.collect()
    return schema, config, profile, build_s


def _report_out(report: Any, out_path: Path) -> dict[str, Any]:
    features = [{k: v for k, v in vars(f).items()} for f in report.features]
    out_path.write_text(json.dumps({"features": features, "status": report.status,
                                    "n_current": report.n_current}))
    return {f.name: bool(f.drifted) for f in report.features}


def worker(mode: str, folder: Path, n_cols: int, seed: int, out_path: Path) -> dict[str, Any]:
    """Run one measurement; returns times (s), memory (MB) and per-column decisions."""
    paths = sorted(folder.glob("shard-[0-9]*.npz"))
    t0 = time.perf_counter()
    if mode == "evidently":
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
    else:
        from driftloop.decide.drift import detect_drift
        from driftloop.decide.shards import (
            ShardProfile,
            detect_drift_merged,
            merge_profiles,
            profile_shard,
        )
    res: dict[str, Any] = {"mode": mode, "import_s": time.perf_counter() - t0}
    if mode == "shardwise":
        schema, config, profile, res["build_s"] = _schema_and_profile(n_cols, seed)
        gc.collect()
        res["base_mb"] = rss_mb()
        reset_peak()
        shard_s, profiles = [], []
        t_all = time.perf_counter()
        for i, path in enumerate(paths):
            t = time.perf_counter()
            frame = load_shard(path, n_cols)
            prof = profile_shard(profile, frame, schema)
            del frame
            profiles.append(prof.save(out_path.parent / "profiles" / f"{i:03d}.npz"))
            shard_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        merged = merge_profiles([ShardProfile.load(p) for p in profiles])
        report = detect_drift_merged(profile, merged, schema, config)
        res |= {"merge_s": time.perf_counter() - t, "check_s": time.perf_counter() - t_all,
                "shard_s_max": max(shard_s), "shard_s_median": float(np.median(shard_s)),
                "profile_kb": profiles[0].stat().st_size / 1024,
                "peak_mb": peak_mb(), "rows": merged.n_rows}
    elif mode == "inmemory":
        schema, config, profile, res["build_s"] = _schema_and_profile(n_cols, seed)
        current, res["load_s"] = timed(lambda: load_window(paths, n_cols))
        gc.collect()
        res["base_mb"] = rss_mb()
        reset_peak()
        report, res["check_s"] = timed(lambda: detect_drift(profile, current, schema, config))
        res |= {"peak_mb": peak_mb(), "rows": len(current)}
    else:
        numeric, categorical, _ = columns(n_cols)
        definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
        ref = reference(n_cols, seed)
        current, res["load_s"] = timed(lambda: load_window(paths, n_cols))
        gc.collect()
        res["base_mb"] = rss_mb()
        reset_peak()

        def run() -> Any:
            rep = Report([DataDriftPreset()], include_tests=True)
            return rep.run(Dataset.from_pandas(current, data_definition=definition),
                           Dataset.from_pandas(ref, data_definition=definition))

        snapshot, res["check_s"] = timed(run)
        decisions = {}
        for test in snapshot.dict()["tests"]:
            params = test.get("metric_config", {}).get("params", {})
            if params.get("type", "").endswith("ValueDrift"):
                decisions[params["column"]] = str(test["status"]).endswith("FAIL")
        res |= {"peak_mb": peak_mb(), "rows": len(current), "decisions": decisions}
        return res
    res["extra_mb"] = res["peak_mb"] - res["base_mb"]
    res["decisions"] = _report_out(report, out_path)
    return res


def same_reports(a: Path, b: Path) -> bool:
    """Whether two workers' reports agree on every column (statistic, p-value, decision)."""
    return bool(json.loads(a.read_text()) == json.loads(b.read_text()))
