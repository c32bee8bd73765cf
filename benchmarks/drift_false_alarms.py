"""Drift decision false alarms and power: significance AND effect size, pooled chi-squared.

Proof for the issue "Retrain only when it pays" (defects 3 and 4). For three kinds of column
and 100, 1k, 10k and 100k rows per window, every repetition draws a fresh reference and a
fresh current window and runs the production path, ``drift.build_reference_profile`` then
``drift.detect_drift`` with a one-column schema and the default :class:`DriftConfig`
(p=0.05, Bonferroni, effect PSI >= 0.1, rare categories pooled below 5 expected). The
reference has as many rows as the window; the profile keeps its bins / category shares from
all of them and samples ``max_reference_rows`` (5,000) for the test, so 10k and 100k windows
are tested against 5,000 reference rows (the production setting).

Kinds:

* ``numeric``: standard normal.
* ``cat10``: 10 categories with shares from 0.25 down to 0.025.
* ``zipf3000``: 3,000 categories with Zipf shares (``p_i ~ 1/i``).

Scenarios per repetition (same reference):

* stationary: the window comes from the reference distribution -> false-alarm rate;
* shift: a shift whose true PSI (over the 10 reference deciles, or over all categories) is
  0.2 -> power. numeric: mean + 0.458 sd; cat10: exponential tilt of the shares along their
  order; zipf3000: flattening ``p^(1-t)`` (16% of the mass moves from the 10 top categories to
  the tail);
* tiny: the same shift families scaled to true PSI 0.01 -> how often a change too small to be
  worth a retrain still fires.

"old rule" is the decision before the fix: the test alone (significance only) as
alibi-detect computed it: the asymptotic KS p-value (``KSDrift``), and for categorical
columns the chi-squared test on the unpooled categories (``ChiSquareDrift``). Rates come
with Wilson 95% intervals.

Repetitions: 10,000 per cell up to 1k rows (where a false-alarm rate near 5% is possible:
the 95% interval is then +-0.4 points), 2,000 at 10k rows and 500 at 100k rows (``--reps``,
``--reps-mid``, ``--reps-large``).

Run: ``.venv/bin/python benchmarks/drift_false_alarms.py [--quick]``
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _machine import machine_info as _machine_info

from driftloop.config import DriftConfig
from driftloop.data.schema import Schema, schema_from_dict
from driftloop.decide.detectors import chi2_pooled, corrected_thresholds
from driftloop.decide.distance import category_codes, pool, pool_rare_categories, psi
from driftloop.decide.drift import detect_drift
from driftloop.decide.profile import build_reference_profile

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "drift_false_alarms"
SIZES = (100, 1_000, 10_000, 100_000)
TARGET_FALSE_ALARMS = 0.05
TARGET_POWER = 0.95
SHIFT_PSI = 0.2
TINY_PSI = 0.01


# ---------------------------------------------------------------- data


def true_psi(ref: np.ndarray, cur: np.ndarray) -> float:
    """PSI of two exact share vectors (no sampling, no eps floor needed)."""
    return psi(ref, cur, eps=1e-15)


def _solve(f: Callable[[float], float], target: float, hi: float) -> float:
    from scipy.optimize import brentq

    return float(brentq(lambda t: f(t) - target, 1e-9, hi))


@dataclass(frozen=True)
class Kind:
    """One kind of column: how to draw it stationary and shifted."""

    name: str
    categories: np.ndarray | None  # None: numeric
    shares: np.ndarray | None

    def draw(self, rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
        """``n`` values; ``shift`` is the shift parameter (0 = stationary)."""
        if self.categories is None:
            return rng.standard_normal(n) + shift
        shares = self.shifted(shift)
        return self.categories[rng.choice(len(shares), size=n, p=shares)]

    def shifted(self, t: float) -> np.ndarray:
        """Category shares after the shift ``t`` (categorical kinds)."""
        assert self.shares is not None
        if t == 0:
            return self.shares
        if self.name == "zipf3000":
            q = self.shares ** (1.0 - t)
        else:
            q = self.shares * np.exp(t * np.linspace(-1.0, 1.0, self.shares.size))
        return q / q.sum()

    def psi_of(self, t: float) -> float:
        """True PSI of shift ``t`` (numeric: over the 10 deciles of N(0, 1))."""
        if self.categories is None:
            from scipy.stats import norm

            edges = norm.ppf(np.linspace(0.0, 1.0, 11))
            return true_psi(np.diff(norm.cdf(edges)), np.diff(norm.cdf(edges - t)))
        assert self.shares is not None
        return true_psi(self.shares, self.shifted(t))

    def pooled_psi_of(self, t: float, n: int, config: DriftConfig) -> float:
        """True PSI over the buckets the decision sees at ``n`` rows (categorical kinds)."""
        if self.categories is None or t == 0:
            return self.psi_of(t)
        assert self.shares is not None
        ref, cur = np.append(self.shares, 0.0), np.append(self.shifted(t), 0.0)
        buckets = pool_rare_categories(ref, min(n, config.max_reference_rows),
                                       config.min_expected)
        return true_psi(pool(ref, buckets), pool(cur, buckets))

    def parameter_for(self, target_psi: float) -> float:
        """The shift parameter whose true PSI is ``target_psi``."""
        return _solve(self.psi_of, target_psi, 3.0 if self.categories is None else 0.99
                      if self.name == "zipf3000" else 10.0)

    @property
    def schema(self) -> Schema:
        """A one-column schema of this kind."""
        kind = "numeric" if self.categories is None else "categorical"
        return schema_from_dict({"name": self.name, "columns": [
            {"name": "x", "kind": kind, "dtype": "float" if kind == "numeric" else "string"}]})


def kinds() -> list[Kind]:
    """The three kinds of the benchmark."""
    cat10 = np.array([0.25, 0.18, 0.14, 0.11, 0.09, 0.07, 0.06, 0.04, 0.035, 0.025])
    zipf = 1.0 / np.arange(1, 3001)
    return [
        Kind("numeric", None, None),
        Kind("cat10", np.array([f"c{i}" for i in range(10)], dtype=object), cat10 / cat10.sum()),
        Kind("zipf3000", np.array([f"z{i}" for i in range(3000)], dtype=object),
             zipf / zipf.sum()),
    ]


# ---------------------------------------------------------------- measurement


def old_rule(report: Any, profile: Any, current: pd.DataFrame, kind: Kind,
             config: DriftConfig) -> bool:
    """The decision before the fix: the test alone, as alibi-detect computed it.

    Numeric: ``KSDrift`` = ``ks_2samp(mode='asymp')``; categorical: ``ChiSquareDrift`` =
    ``chi2_contingency`` over the unpooled categories (those seen in either sample).
    """
    f = report.features[0]
    if kind.categories is None:
        from scipy.stats import ks_2samp

        p = float(ks_2samp(profile.numeric_sample["x"], current["x"].to_numpy(),
                           method="asymp").pvalue)
        return bool(p < f.threshold)
    cats = profile.categories["x"]
    ref = np.bincount(profile.categorical_sample["x"], minlength=len(cats) + 1)
    cur = np.bincount(category_codes(current["x"].to_numpy(dtype=object), cats),
                      minlength=len(cats) + 1)
    _, p = chi2_pooled(ref, cur)
    return bool(p < corrected_thresholds(np.array([p]), config.p_value, config.correction)[0])


@dataclass
class Cell:
    """Counts of one (kind, rows) cell."""

    kind: str
    rows: int
    reps: int = 0
    n_reference: int = 0
    alarms: int = 0
    alarms_old: int = 0
    tiny: int = 0
    tiny_old: int = 0
    hits: int = 0
    hits_old: int = 0
    effect_stationary: float = 0.0
    effect_shift: float = 0.0
    seconds: float = 0.0


def run_cell(kind: Kind, kind_index: int, n: int, reps: int, seed: int, config: DriftConfig,
             shift: float, tiny: float) -> Cell:
    """``reps`` seeded repetitions of the three scenarios for one kind and window size."""
    cell = Cell(kind.name, n)
    schema = kind.schema
    t0 = time.perf_counter()
    eff0: list[float] = []
    eff1: list[float] = []
    for rep in range(reps):
        rng = np.random.default_rng([seed, kind_index, n, rep])
        reference = pd.DataFrame({"x": kind.draw(rng, n, 0.0)})
        profile = build_reference_profile(reference, schema, config, model_version="bench")
        cell.n_reference = profile.n_sample
        for scenario, param in (("stationary", 0.0), ("tiny", tiny), ("shift", shift)):
            current = pd.DataFrame({"x": kind.draw(rng, n, param)})
            report = detect_drift(profile, current, schema, config)
            new, old = report.drifted, old_rule(report, profile, current, kind, config)
            effect = report.features[0].effect
            if scenario == "stationary":
                cell.alarms += new
                cell.alarms_old += old
                eff0.append(np.nan if effect is None else effect)
            elif scenario == "tiny":
                cell.tiny += new
                cell.tiny_old += old
            else:
                cell.hits += new
                cell.hits_old += old
                eff1.append(np.nan if effect is None else effect)
        cell.reps += 1
    cell.effect_stationary = float(np.median(eff0))
    cell.effect_shift = float(np.median(eff1))
    cell.seconds = time.perf_counter() - t0
    return cell


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, mid - half), min(1.0, mid + half)


def row_of(cell: Cell, kind: Kind, config: DriftConfig, shift: float,
           tiny: float) -> dict[str, Any]:
    """The table row of a cell."""
    r = cell.reps
    fa_lo, fa_hi = wilson(cell.alarms, r)
    pw_lo, pw_hi = wilson(cell.hits, r)
    fa, pw = cell.alarms / r, cell.hits / r
    return {
        "kind": cell.kind, "rows": cell.rows, "n_reference": cell.n_reference, "reps": r,
        "false_alarm_rate": fa, "false_alarm_ci_low": fa_lo, "false_alarm_ci_high": fa_hi,
        "false_alarm_rate_old_rule": cell.alarms_old / r,
        "tiny_alarm_rate": cell.tiny / r, "tiny_alarm_rate_old_rule": cell.tiny_old / r,
        "power": pw, "power_ci_low": pw_lo, "power_ci_high": pw_hi,
        "power_old_rule": cell.hits_old / r,
        "true_psi_of_shift": kind.psi_of(shift),
        "true_psi_of_shift_pooled": kind.pooled_psi_of(shift, cell.rows, config),
        "true_psi_of_tiny": kind.psi_of(tiny),
        "median_effect_stationary": cell.effect_stationary,
        "median_effect_shift": cell.effect_shift,
        "false_alarm_ok": fa <= TARGET_FALSE_ALARMS,
        "power_ok": pw >= TARGET_POWER if cell.rows >= 1000 else None,
        "seconds": cell.seconds,
    }


# ---------------------------------------------------------------- output


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def markdown(rows: list[dict[str, Any]], params: dict[str, dict[str, float]], machine: str,
             wall: float, config: DriftConfig) -> str:
    lines = [
        "# Drift decision: false alarms and power", "",
        f"Machine: {machine}",
        f"Config: default DriftConfig (p={config.p_value} {config.correction}, effect "
        f"{config.effect_size.upper()} >= {config.effect_threshold}, {config.bins} bins, "
        f"pooling below {config.min_expected:g} expected, max_reference_rows "
        f"{config.max_reference_rows}). Wall time {wall:.0f} s.",
        "Shift parameters: " + ", ".join(
            f"{k}: shift {v['shift']:.4g} (true PSI {v['shift_psi']:.3f}), tiny {v['tiny']:.4g} "
            f"(true PSI {v['tiny_psi']:.3f})" for k, v in params.items()) + ".", "",
        "| kind | rows | ref rows | reps | false_alarm_rate (95% CI) | old rule | tiny-shift "
        "alarms (PSI 0.01) | old rule | power (PSI 0.2) (95% CI) | old rule "
        "| true_psi_of_shift | over pooled buckets | median effect stationary / shift "
        "| targets met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ok = "yes" if r["false_alarm_ok"] else "**no** (false alarms)"
        if r["power_ok"] is False:
            ok = "**no** (power)" if r["false_alarm_ok"] else "**no** (both)"
        lines.append(
            f"| {r['kind']} | {r['rows']:,} | {r['n_reference']:,} | {r['reps']} "
            f"| {_pct(r['false_alarm_rate'])} ({_pct(r['false_alarm_ci_low'])}-"
            f"{_pct(r['false_alarm_ci_high'])}) | {_pct(r['false_alarm_rate_old_rule'])} "
            f"| {_pct(r['tiny_alarm_rate'])} | {_pct(r['tiny_alarm_rate_old_rule'])} "
            f"| {_pct(r['power'])} ({_pct(r['power_ci_low'])}-{_pct(r['power_ci_high'])}) "
            f"| {_pct(r['power_old_rule'])} | {r['true_psi_of_shift']:.3f} "
            f"| {r['true_psi_of_shift_pooled']:.3f} "
            f"| {r['median_effect_stationary']:.3f} / {r['median_effect_shift']:.3f} "
            f"| {ok}{'' if r['rows'] >= 1000 else ' (power not targeted)'} |")
    lines += [
        "",
        f"Targets: false_alarm_rate <= {_pct(TARGET_FALSE_ALARMS)} at every size (stationary "
        f"data, the drift decision of the run); power >= {_pct(TARGET_POWER)} for a shift of "
        "true PSI 0.2 from 1k rows. \"old rule\" = the decision before the fix (test alone; "
        "chi-squared over unpooled categories). The tiny shift (true PSI 0.01, e.g. a 0.1-sd "
        "mean shift) is below the 0.1 effect threshold: firing on it is what the effect size "
        "rules out. \"over pooled buckets\" is the true PSI over the categories the "
        "categorical decision compares (rare ones pooled, a coarser view: never more than the "
        "full PSI). Median effect = the measured PSI the decision used; the stationary median "
        "shows the small-sample upward bias of PSI (about (bins - 1) / n per side).",
    ]
    return "\n".join(lines) + "\n"


def machine_info() -> str:
    return _machine_info(f"numpy {np.__version__}", f"pandas {pd.__version__}")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4.2))
    colors = {"numeric": "tab:blue", "cat10": "tab:green", "zipf3000": "tab:red"}
    for kind, color in colors.items():
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        x = [r["rows"] for r in rs]
        for ax, key in ((ax1, "false_alarm_rate"), (ax2, "tiny_alarm_rate"), (ax3, "power")):
            ax.plot(x, [r[key] for r in rs], "o-", color=color, label=f"{kind}")
            ax.plot(x, [r[f"{key}_old_rule"] for r in rs], "x--", color=color, alpha=0.6,
                    label=f"{kind} (old rule)")
    ax1.axhline(TARGET_FALSE_ALARMS, color="k", lw=0.8, ls=":")
    top = 0.15  # zoom on the 5% target; higher rates are written at the top edge
    off: dict[int, list[str]] = {}
    for r in rows:
        for key, tag in (("false_alarm_rate", ""), ("false_alarm_rate_old_rule", " old")):
            if r[key] > top:
                off.setdefault(r["rows"], []).append(f"{r['kind']}{tag} {100 * r[key]:.0f}%")
    for at, labels in off.items():
        ax1.annotate("\n".join(labels), (at, top), xytext=(0, -4), textcoords="offset points",
                     ha="center", va="top", fontsize=6.5)
    ax3.axhline(TARGET_POWER, color="k", lw=0.8, ls=":")
    for ax, title in ((ax1, "False alarms, stationary data (zoomed)"),
                      (ax2, "Alarms on a tiny shift (true PSI 0.01)"),
                      (ax3, "Power, shift of true PSI 0.2")):
        ax.set_xscale("log")
        ax.set_xlabel("rows per window")
        ax.set_ylim(-0.005 if ax is ax1 else -0.02, top if ax is ax1 else 1.02)
        ax.set_title(title, fontsize=10)
    ax1.set_ylabel("share of runs that report drift")
    ax3.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 reps, up to 10k rows")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=None, help="repetitions per cell up to "
                        "1k rows (default 10000; 200 with --quick)")
    parser.add_argument("--reps-mid", type=int, default=None, help="repetitions per cell "
                        "at 10k rows (default 2000; 200 with --quick)")
    parser.add_argument("--reps-large", type=int, default=None, help="repetitions per cell "
                        "from 100k rows (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reps = args.reps or (200 if args.quick else 10_000)
    reps_mid = args.reps_mid or min(reps, 2000)
    reps_large = args.reps_large or min(reps_mid, 500)
    sizes = args.sizes or (SIZES[:3] if args.quick else SIZES)
    config = DriftConfig()
    import scipy.stats  # noqa: F401  (imported lazily by the first run: kept out of timings)

    all_kinds = kinds()
    params: dict[str, dict[str, float]] = {}
    rows = []
    start = time.perf_counter()
    for kind_index, kind in enumerate(all_kinds):
        shift, tiny = kind.parameter_for(SHIFT_PSI), kind.parameter_for(TINY_PSI)
        params[kind.name] = {"shift": shift, "shift_psi": kind.psi_of(shift), "tiny": tiny,
                             "tiny_psi": kind.psi_of(tiny)}
        print(f"{kind.name}: shift parameter {shift:.4g} (true PSI {kind.psi_of(shift):.4f}), "
              f"tiny {tiny:.4g} (true PSI {kind.psi_of(tiny):.4f})", flush=True)
        for n in sizes:
            n_reps = reps_large if n >= 100_000 else reps_mid if n >= 10_000 else reps
            cell = run_cell(kind, kind_index, n, n_reps, args.seed, config, shift, tiny)
            row = row_of(cell, kind, config, shift, tiny)
            rows.append(row)
            print(f"  {kind.name:9} {n:>7,} rows x {n_reps}: false alarms "
                  f"{_pct(row['false_alarm_rate'])} (old {_pct(row['false_alarm_rate_old_rule'])})"
                  f", tiny {_pct(row['tiny_alarm_rate'])} "
                  f"(old {_pct(row['tiny_alarm_rate_old_rule'])}), power {_pct(row['power'])} "
                  f"(old {_pct(row['power_old_rule'])}), {cell.seconds:.0f} s", flush=True)
    wall = time.perf_counter() - start
    md = markdown(rows, params, machine_info(), wall, config)
    print()
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"{NAME}{suffix}.md").write_text(md)
    with (RESULTS / f"{NAME}{suffix}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, RESULTS / f"{NAME}{suffix}.png")
    print(f"wrote {RESULTS / (NAME + suffix)}.{{md,csv,png}}")


if __name__ == "__main__":
    main()
