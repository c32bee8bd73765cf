"""Drift check speed and peak memory: driftloop's drift step vs Evidently's DataDriftPreset.

Both tools see the same seeded tabular data (80% numeric, 20% categorical columns; a quarter of
each kind clearly drifted, the rest drawn from the reference distribution) at 20 and 100
columns and 100k and 1M rows per side (``--quick``: 100k rows only).

* driftloop: ``build_reference_profile`` (timed apart: in production it runs once per model
  version) and ``detect_drift`` (the per-run step) with the default :class:`DriftConfig`
  (KS / chi-squared on a 5,000-row reference sample vs the full current window, Bonferroni).
* Evidently 0.7.23: ``Report([DataDriftPreset()], include_tests=True).run(current, reference)``
  including the two ``Dataset.from_pandas`` wrappers; defaults pick normed Wasserstein
  (numeric) and Jensen-Shannon (categorical), threshold 0.1, for more than 1,000 rows.

Every measurement runs in a fresh subprocess (imports, including the lazy ``alibi_detect.cd``
import, happen before the timer and are reported apart). Memory is the process's resident set
(RSS, so numpy/pandas buffers count, not only Python objects): right before each timed step
the worker resets its high-water mark (``/proc/self/clear_refs`` = 5) and afterwards reads
``VmHWM`` (= ``getrusage(RUSAGE_SELF).ru_maxrss``). "Extra" is that peak minus the RSS just
before the step, i.e. what the step itself allocated on top of the two in-memory frames.
Tools alternate inside every repeat so machine load hits both alike; the table shows medians.

Drift at scale (issue 16, :mod:`_drift_shards`): a 10M-row x 20-column window and a
1M x 100 one, written to disk as seeded shards, run shard-wise (driftloop's ParallelFor
path: one shard profile at a time, then the merge), in memory (today's single-pod step)
and through Evidently, each in a fresh process; peak RSS and time per mode, and whether the
shard-wise report equals the in-memory one on every column (``--quick``: 1M x 20 and
100k x 100). Evidently runs in this interpreter when it has it, else in
``--evidently-python`` (default ``.venvs/evidently/bin/python`` in the repository, made by
``make evidently-venv``), else it is reported as not run.

Run: ``.venv/bin/python benchmarks/drift_vs_evidently.py [--quick] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _drift_shards as shards
import numpy as np
import pandas as pd
from _machine import machine_info as _machine_info

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "drift_vs_evidently"
CATEGORIES = np.array([f"cat_{i}" for i in range(6)], dtype=object)
REF_SHARES = np.array([0.35, 0.25, 0.15, 0.12, 0.08, 0.05])
DRIFT_SHARES = REF_SHARES[::-1].copy()  # share change: rare categories become common
TARGET_SPEEDUP = 20.0
EVIDENTLY_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venvs/evidently/bin/python"
#: Scale cases: (rows, columns, shards); quick sizes keep the same shape.
SCALE_CASES = [(10_000_000, 20, 20), (1_000_000, 100, 10)]
SCALE_QUICK = [(1_000_000, 20, 4), (100_000, 100, 2)]


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Data:
    reference: pd.DataFrame
    current: pd.DataFrame
    numeric: list[str]
    categorical: list[str]
    drifted: set[str]


def make_data(n_rows: int, n_cols: int, seed: int) -> Data:
    """Seeded reference/current frames; every 4th column of each kind is clearly drifted."""
    rng = np.random.default_rng(seed)
    n_cat = max(1, n_cols // 5)
    n_num = n_cols - n_cat
    numeric = [f"num_{i:03d}" for i in range(n_num)]
    categorical = [f"cat_{i:03d}" for i in range(n_cat)]
    drifted = {c for i, c in enumerate(numeric) if i % 4 == 0}
    drifted |= {c for i, c in enumerate(categorical) if i % 4 == 0}
    means = rng.uniform(-5.0, 5.0, n_num)
    scales = rng.uniform(0.5, 3.0, n_num)

    def frame(current: bool) -> pd.DataFrame:
        cols: dict[str, Any] = {}
        for j, name in enumerate(numeric):
            shift = 1.0 if current and name in drifted else 0.0  # 1 std mean shift
            cols[name] = means[j] + scales[j] * (rng.standard_normal(n_rows) + shift)
        for name in categorical:
            shares = DRIFT_SHARES if current and name in drifted else REF_SHARES
            cols[name] = CATEGORIES[rng.choice(len(CATEGORIES), size=n_rows, p=shares)]
        return pd.DataFrame(cols)

    return Data(frame(False), frame(True), numeric, categorical, drifted)


# ---------------------------------------------------------------- worker side


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _measure(step: Any) -> tuple[Any, dict[str, float]]:
    gc.collect()
    reset = _reset_peak()
    before = _rss_mb()
    t0 = time.perf_counter()
    out = step()
    seconds = time.perf_counter() - t0
    peak = _peak_mb()
    extra = peak - before if reset else float("nan")
    return out, {"s": seconds, "peak_mb": peak, "extra_mb": extra}


def worker(tool: str, n_rows: int, n_cols: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    if tool == "driftloop":
        import alibi_detect.cd  # noqa: F401  (driftloop imports it lazily on the first run)

        from driftloop.config import DriftConfig
        from driftloop.data.schema import schema_from_dict
        from driftloop.decide.drift import detect_drift
        from driftloop.decide.profile import build_reference_profile
    else:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
    import_s = time.perf_counter() - t0
    data = make_data(n_rows, n_cols, seed)
    out: dict[str, Any] = {"tool": tool, "rows": n_rows, "cols": n_cols, "import_s": import_s,
                           "data_mb": _rss_mb()}
    if tool == "driftloop":
        schema = schema_from_dict({"name": "bench", "columns": [
            *({"name": c, "kind": "numeric", "dtype": "float"} for c in data.numeric),
            *({"name": c, "kind": "categorical", "dtype": "string"} for c in data.categorical),
        ]})
        config = DriftConfig()
        profile, build = _measure(lambda: build_reference_profile(
            data.reference, schema, config, model_version="bench"))
        report, check = _measure(lambda: detect_drift(profile, data.current, schema, config))
        decisions = {f.name: bool(f.drifted) for f in report.features}
        out |= {"build_s": build["s"], "build_peak_mb": build["peak_mb"],
                "build_extra_mb": build["extra_mb"]}
    else:
        definition = DataDefinition(numerical_columns=data.numeric,
                                    categorical_columns=data.categorical)

        def run() -> Any:
            report = Report([DataDriftPreset()], include_tests=True)
            return report.run(Dataset.from_pandas(data.current, data_definition=definition),
                              Dataset.from_pandas(data.reference, data_definition=definition))

        snapshot, check = _measure(run)
        decisions = {}
        for test in snapshot.dict()["tests"]:
            params = test.get("metric_config", {}).get("params", {})
            if params.get("type", "").endswith("ValueDrift"):
                decisions[params["column"]] = str(test["status"]).endswith("FAIL")
    out |= {"check_s": check["s"], "check_peak_mb": check["peak_mb"],
            "check_extra_mb": check["extra_mb"], "decisions": decisions,
            "drifted": sorted(data.drifted)}
    return out


# ---------------------------------------------------------------- parent side


@dataclass
class Cell:
    rows: int
    cols: int
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {
        "driftloop": [], "evidently": []})
    failed: dict[str, str] = field(default_factory=dict)


def evidently_python(given: str) -> str | None:
    """The interpreter that has Evidently: this one, ``given``, or none."""
    if importlib.util.find_spec("evidently") is not None:
        return sys.executable
    path = Path(given) if given else EVIDENTLY_VENV_PYTHON
    return str(path) if path.is_file() else None


def spawn(tool: str, rows: int, cols: int, seed: int, timeout: float) -> dict[str, Any]:
    python = sys.executable if tool == "driftloop" else EVIDENTLY[0]
    if python is None:
        raise RuntimeError("Evidently is not installed (make evidently-venv)")
    cmd = [python, __file__, "--worker", tool, str(rows), str(cols), str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail)}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs) if runs else float("nan")


def agreement(cell: Cell) -> tuple[int, int, int, int]:
    """(agreements, disagreements, driftloop correct, evidently correct) over all columns."""
    d, e = cell.runs["driftloop"][0], cell.runs["evidently"][0]
    truth = set(d["drifted"])
    cols = sorted(d["decisions"])
    agree = sum(d["decisions"][c] == e["decisions"].get(c) for c in cols)
    dl_ok = sum(d["decisions"][c] == (c in truth) for c in cols)
    ev_ok = sum(e["decisions"].get(c) == (c in truth) for c in cols)
    return agree, len(cols) - agree, dl_ok, ev_ok


def rows_for(cells: list[Cell]) -> list[dict[str, Any]]:
    out = []
    for c in cells:
        dl, ev = c.runs["driftloop"], c.runs["evidently"]
        row: dict[str, Any] = {"rows": c.rows, "cols": c.cols, "n_dl": len(dl), "n_ev": len(ev),
                               "note": "; ".join(f"{k}: {v}" for k, v in c.failed.items())}
        if dl:
            row |= {"dl_import_s": med(dl, "import_s"), "dl_build_s": med(dl, "build_s"),
                    "dl_detect_s": med(dl, "check_s"),
                    "dl_build_extra_mb": med(dl, "build_extra_mb"),
                    "dl_detect_extra_mb": med(dl, "check_extra_mb"),
                    "dl_detect_peak_mb": med(dl, "check_peak_mb"), "data_mb": med(dl, "data_mb")}
        if ev:
            row |= {"ev_import_s": med(ev, "import_s"), "ev_run_s": med(ev, "check_s"),
                    "ev_extra_mb": med(ev, "check_extra_mb"),
                    "ev_peak_mb": med(ev, "check_peak_mb")}
        if dl and ev:
            agree, disagree, dl_ok, ev_ok = agreement(c)
            speed = row["ev_run_s"] / row["dl_detect_s"]
            speed_all = row["ev_run_s"] / (row["dl_detect_s"] + row["dl_build_s"])
            mem_ok = row["dl_detect_extra_mb"] <= row["ev_extra_mb"]
            row |= {"speedup": speed, "speedup_with_build": speed_all, "agree": agree,
                    "disagree": disagree, "dl_vs_truth": dl_ok, "ev_vs_truth": ev_ok,
                    "target_met": speed >= TARGET_SPEEDUP and mem_ok}
        out.append(row)
    return out


def _f(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def markdown(rows: list[dict[str, Any]], machine: str, repeats: int, wall: float) -> str:
    head = ("| rows/side | cols | driftloop build s | driftloop detect s | Evidently run s "
            "| speedup (detect) | speedup (build+detect) | driftloop detect extra MB "
            "| driftloop build extra MB | Evidently extra MB | peak RSS MB dl / ev "
            "| agree / disagree | correct vs truth dl / ev | target met | runs dl/ev | note |")
    lines = [f"# Drift check: driftloop vs Evidently {_evidently_version()}", "",
             f"Machine: {machine}", f"Repeats: up to {repeats} per cell (median); "
             f"total benchmark wall time {wall:.0f} s.", "",
             head, "|" + "---:|" * 15 + "---|"]
    for r in rows:
        target = r.get("target_met")
        lines.append(
            f"| {r['rows']:,} | {r['cols']} | {_f(r.get('dl_build_s'), '.2f')} "
            f"| {_f(r.get('dl_detect_s'), '.2f')} | {_f(r.get('ev_run_s'), '.2f')} "
            f"| {_f(r.get('speedup'), '.1f')}x | {_f(r.get('speedup_with_build'), '.1f')}x "
            f"| {_f(r.get('dl_detect_extra_mb'), '.0f')} | {_f(r.get('dl_build_extra_mb'), '.0f')} "
            f"| {_f(r.get('ev_extra_mb'), '.0f')} "
            f"| {_f(r.get('dl_detect_peak_mb'), '.0f')} / {_f(r.get('ev_peak_mb'), '.0f')} "
            f"| {r.get('agree', '-')} / {r.get('disagree', '-')} "
            f"| {r.get('dl_vs_truth', '-')} / {r.get('ev_vs_truth', '-')} of {r['cols']} "
            f"| {'-' if target is None else ('yes' if target else 'no')} "
            f"| {r['n_dl']}/{r['n_ev']} | {r['note'] or ''} |")
    lines += ["", "Speedup = Evidently run time / driftloop detect_drift time (the per-run step); "
              "the build+detect column adds the once-per-model-version profile build. "
              "Target: speedup (detect) >= 20x and driftloop detect extra MB <= Evidently extra "
              "MB. Memory = process RSS (native buffers included), high-water mark reset right "
              "before the step; \"extra\" = peak minus RSS before the step, so the two "
              "in-memory frames (in the peak, not in extra) are excluded. Imports (median): "
              + ", ".join(f"driftloop+alibi_detect.cd {_f(r.get('dl_import_s'), '.1f')} s / "
                          f"evidently {_f(r.get('ev_import_s'), '.1f')} s" for r in rows[:1])
              + " - not in the timed step.",
              "Agreement: per-column drift decision of the two tools over all columns (a quarter "
              "clearly drifted: 1-std mean shift or reversed category shares; the rest drawn "
              "from the reference distribution)."]
    return "\n".join(lines) + "\n"


def _evidently_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("evidently")
    except PackageNotFoundError:  # Evidently lives in its own venv
        if EVIDENTLY[0] is None:
            return "(not installed)"
        out = subprocess.run([EVIDENTLY[0], "-c", "import evidently; print(evidently.__version__)"],
                             capture_output=True, text=True, check=False).stdout.strip()
        return f"{out or '?'} (its own venv)"


def machine_info() -> str:
    try:
        mem = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                   if x.startswith("MemTotal")) / 2**20
    except (OSError, StopIteration):
        mem = float("nan")
    return _machine_info(f"{mem:.0f} GiB RAM", f"numpy {np.__version__}",
                         f"pandas {pd.__version__}")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['rows'] // 1000}k x {r['cols']}" for r in rows]
    x = np.arange(len(rows))
    w = 0.27
    series = [("driftloop detect_drift", "dl_detect_s", "tab:blue"),
              ("driftloop build profile (once/version)", "dl_build_s", "tab:cyan"),
              ("Evidently DataDriftPreset", "ev_run_s", "tab:red")]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, (name, key, color) in enumerate(series):
        vals = [r.get(key, np.nan) for r in rows]
        ax.bar(x + (k - 1) * w, vals, w, label=name, color=color)
        for xi, v in zip(x + (k - 1) * w, vals, strict=True):
            ax.text(xi, v if np.isfinite(v) else 0.01, "n/a" if not np.isfinite(v) else f"{v:.2g}",
                    ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(x, labels)
    ax.set_xlabel("rows per side x columns")
    ax.set_ylabel("wall time, s (log, median)")
    ax.set_title("Drift check time: driftloop vs Evidently")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


EVIDENTLY: list[str | None] = [None]


# ---------------------------------------------------------------- drift at scale


def spawn_scale(mode: str, folder: Path, cols: int, seed: int, out: Path,
                timeout: float) -> dict[str, Any]:
    python = EVIDENTLY[0] if mode == "evidently" else sys.executable
    if python is None:
        raise RuntimeError("Evidently is not installed (make evidently-venv)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [python, __file__, "--scale-worker", mode, str(folder), str(cols), str(seed),
           str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          env=env if mode != "evidently" else None)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail)}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _fits_in_memory(rows: int, cols: int) -> bool:
    """Whether one process can hold the window and detect_drift's copies (~4x the frame)."""
    try:
        avail = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                     if x.startswith("MemAvailable")) * 1024
    except (OSError, StopIteration):
        return False
    return rows * cols * 8 * 4 < avail / 2


def run_scale(cases: list[tuple[int, int, int]], workdir: Path, seed: int,
              timeout: float) -> list[dict[str, Any]]:
    rows_out = []
    for rows, cols, n_shards in cases:
        folder = workdir / f"window-{rows}x{cols}-{n_shards}-s{seed}"
        t0 = time.perf_counter()
        shards.write_shards(folder, rows, cols, n_shards, seed)
        row: dict[str, Any] = {"rows": rows, "cols": cols, "shards": n_shards,
                               "write_s": time.perf_counter() - t0,
                               "load_start": os.getloadavg()[0], "note": ""}
        res: dict[str, dict[str, Any]] = {}
        modes = ["shardwise", "inmemory", "evidently"]
        for mode in modes:
            label = f"{mode:9} {rows:>10,} x {cols:>3} ({n_shards} shards)"
            if mode == "inmemory" and not _fits_in_memory(rows, cols):
                row["note"] += "in-memory: does not fit; "
                continue
            try:
                res[mode] = spawn_scale(mode, folder, cols, seed, folder / f"{mode}.json",
                                        timeout)
            except subprocess.TimeoutExpired:
                row["note"] += f"{mode}: > {timeout:.0f} s; "
                print(f"{label}: timeout", flush=True)
                continue
            except RuntimeError as exc:
                row["note"] += f"{mode}: {exc}; "
                print(f"{label}: {exc}", flush=True)
                continue
            r = res[mode]
            print(f"{label}: {r['check_s']:.1f} s, peak {r['peak_mb']:.0f} MB", flush=True)
            for key in ("check_s", "peak_mb", "extra_mb", "build_s", "shard_s_max",
                        "merge_s", "profile_kb", "load_s"):
                if key in r:
                    row[f"{mode}_{key}"] = r[key]
        _, _, drifted = shards.columns(cols)
        if "shardwise" in res:
            dec = res["shardwise"]["decisions"]
            row["dl_vs_truth"] = sum(v == (c in drifted) for c, v in dec.items())
        if "shardwise" in res and "inmemory" in res:
            a, b = res["shardwise"]["decisions"], res["inmemory"]["decisions"]
            row["agree_inmemory"] = sum(a[c] == b[c] for c in a)
            row["identical_report"] = shards.same_reports(folder / "shardwise.json",
                                                          folder / "inmemory.json")
        if "evidently" in res:
            ev = res["evidently"]["decisions"]
            row["ev_vs_truth"] = sum(ev.get(c) == (c in drifted) for c in ev)
        row["load_end"] = os.getloadavg()[0]
        rows_out.append(row)
    return rows_out


def scale_markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| rows x cols | shards | shard-wise s (max shard s / merge s) | in-memory s "
            "| Evidently s | peak RSS MB: shard-wise / in-memory / Evidently "
            "| shard profile KB | report == in-memory | decisions agree | correct vs truth "
            "dl / ev | load 1-min start / end | note |")
    lines = ["## Drift at scale: shard-wise vs in memory vs Evidently", "", head,
             "|" + "---:|" * 11 + "---|"]
    for r in rows:
        ident = r.get("identical_report")
        lines.append(
            f"| {r['rows']:,} x {r['cols']} | {r['shards']} "
            f"| {_f(r.get('shardwise_check_s'), '.1f')} "
            f"({_f(r.get('shardwise_shard_s_max'), '.2f')} / "
            f"{_f(r.get('shardwise_merge_s'), '.2f')}) "
            f"| {_f(r.get('inmemory_check_s'), '.1f')} | {_f(r.get('evidently_check_s'), '.1f')} "
            f"| {_f(r.get('shardwise_peak_mb'), '.0f')} / {_f(r.get('inmemory_peak_mb'), '.0f')}"
            f" / {_f(r.get('evidently_peak_mb'), '.0f')} "
            f"| {_f(r.get('shardwise_profile_kb'), '.0f')} "
            f"| {'-' if ident is None else ('yes' if ident else 'NO')} "
            f"| {r.get('agree_inmemory', '-')} of {r['cols']} "
            f"| {r.get('dl_vs_truth', '-')} / {r.get('ev_vs_truth', '-')} of {r['cols']} "
            f"| {r['load_start']:.1f} / {r['load_end']:.1f} | {r['note']} |")
    lines += ["", "Shard-wise = every shard loaded, profiled (`profile_shard`) and saved one "
              "after the other in one process, then `merge_profiles` + `detect_drift_merged`: "
              "its peak RSS is one `drift_shard` pod's (the shard's frame plus counters), its "
              "time the sum over shards (a cluster runs them in parallel: max shard + merge). "
              "In-memory = the whole window in one frame, `detect_drift` (today's one pod). "
              "Peak RSS is the process high-water mark after the reference profile was built "
              "(interpreter and libraries included). \"report == in-memory\" compares every "
              "column's statistic, p-value, effect, PSI/JS and decision. Figures taken under "
              "load: two cores shared with other sessions (1-minute load averages shown)."]
    return "\n".join(lines) + "\n"


def scale_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['rows'] / 1e6:g}M x {r['cols']}" for r in rows]
    x = np.arange(len(rows))
    w = 0.27
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, title in ((axes[0], "check_s", "time, s (log)"),
                           (axes[1], "peak_mb", "peak RSS, MB (log)")):
        for k, (mode, color) in enumerate((("shardwise", "tab:blue"),
                                           ("inmemory", "tab:cyan"),
                                           ("evidently", "tab:red"))):
            vals = [r.get(f"{mode}_{key}", np.nan) for r in rows]
            ax.bar(x + (k - 1) * w, vals, w, label=mode, color=color)
            for xi, v in zip(x + (k - 1) * w, vals, strict=True):
                ax.text(xi, v if np.isfinite(v) else 1, f"{v:.3g}" if np.isfinite(v) else "n/a",
                        ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(x, labels)
        ax.set_ylabel(title)
    axes[0].legend(fontsize=8)
    fig.suptitle("Drift at scale: shard-wise vs in memory vs Evidently (under load)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k rows per side only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds per measurement before a cell is declared infeasible")
    parser.add_argument("--slow", type=float, default=60.0,
                        help="after a first run slower than this, a cell is not repeated")
    parser.add_argument("--worker", nargs=4, metavar=("TOOL", "ROWS", "COLS", "SEED"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--scale-worker", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--evidently-python", default="",
                        help=f"an interpreter with Evidently (default: this one if it has "
                             f"it, else {EVIDENTLY_VENV_PYTHON})")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir())
                                                 / "driftloop-bench-shards"),
                        help="where the seeded shards are written (reused when present)")
    parser.add_argument("--only-scale", action="store_true",
                        help="run only the drift-at-scale cases")
    args = parser.parse_args()
    if args.worker:
        tool, rows, cols, seed = args.worker
        print(json.dumps(worker(tool, int(rows), int(cols), int(seed))))
        return
    if args.scale_worker:
        mode, folder, cols, seed, out = args.scale_worker
        print(json.dumps(shards.worker(mode, Path(folder), int(cols), int(seed), Path(out))))
        return
    EVIDENTLY[0] = evidently_python(args.evidently_python)
    load_start = os.getloadavg()

    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    cells = [] if args.only_scale else [Cell(r, c) for r in sizes for c in (20, 100)]
    start = time.perf_counter()
    for rep in range(args.repeats):
        for cell in cells:
            for tool in ("driftloop", "evidently"):
                runs = cell.runs[tool]
                if tool in cell.failed or (runs and runs[0]["check_s"] > args.slow
                                           and rep > 0):
                    continue
                label = f"[{rep + 1}/{args.repeats}] {tool:9} {cell.rows:>9,} x {cell.cols:>3}"
                try:
                    res = spawn(tool, cell.rows, cell.cols, args.seed, args.timeout)
                except subprocess.TimeoutExpired:
                    cell.failed[tool] = f"infeasible: > {args.timeout:.0f} s"
                    print(f"{label}: timeout", flush=True)
                    continue
                except RuntimeError as exc:
                    cell.failed[tool] = f"failed ({exc})"
                    print(f"{label}: {exc}", flush=True)
                    continue
                runs.append(res)
                print(f"{label}: check {res['check_s']:.2f} s, extra "
                      f"{res['check_extra_mb']:.0f} MB", flush=True)
    scale = run_scale(SCALE_QUICK if args.quick else SCALE_CASES, Path(args.workdir),
                      args.seed, args.timeout)
    wall = time.perf_counter() - start
    rows = rows_for(cells)
    machine = machine_info()
    md = markdown(rows, machine, args.repeats, wall) if cells else (
        f"# Drift at scale\n\nMachine: {machine}\n")
    md += (f"\nLoad averages (1/5/15 min) at start {', '.join(f'{v:.1f}' for v in load_start)}"
           f", at end {', '.join(f'{v:.1f}' for v in os.getloadavg())}: figures taken under "
           "load (2 cores shared with other sessions).\n\n" + scale_markdown(scale))
    print()
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    # --only-scale keeps the full table's file: its own file for the scale cases alone
    md_name = f"{NAME}{suffix}" if cells else f"{NAME}_shards{suffix}"
    (RESULTS / f"{md_name}.md").write_text(md)
    for name, table in ((f"{NAME}{suffix}", rows), (f"{NAME}_shards{suffix}", scale)):
        if not table:
            continue
        keys = sorted({k for r in table for k in r},
                      key=lambda k: (k not in ("rows", "cols"), k))
        with (RESULTS / f"{name}.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(table)
    if rows:
        plot(rows, RESULTS / f"{NAME}{suffix}.png")
    scale_plot(scale, RESULTS / f"{NAME}_shards{suffix}.png")
    print(f"wrote {RESULTS / md_name}.md and the csv/png files beside it")


if __name__ == "__main__":
    main()
