"""Promotion gate: how often it ships a worse, an equal and a better challenger (new vs old rules).

No model is trained: each replication simulates the champion's and the challenger's
predictions on an eval set directly, then runs the very rule code the gate uses,
:func:`driftloop.decide.gate.gate_decision` (default :class:`GateConfig`: ``f1_macro``,
error-reduction improvement >= 5%, 95% paired bootstrap interval, Holm-corrected slice
intervals with tolerance 0.05 and the derived minimum slice size of 73 rows; the latency
rule is left out, there are no models to time). Beside it runs the rule the gate had
before (reconstructed from ``git show 5d5b1aa:src/driftloop/evaluate.py``: relative
improvement >= 5%, the same kind of interval, a slice fails when its point drop exceeds
0.05 on >= 30 rows).

Simulation: 3 balanced classes, rows spread uniformly over 4 or 20 slices. Each model
gets a row right when ``0.8 * hard + 0.6 * noise`` is above the normal quantile of its
error rate: ``hard`` is shared by both models (the rows one model finds hard, the other
does too), so their mistakes are correlated as real models' are (about half the
champion's mistakes are also the challenger's). A wrong prediction is one of the other
two classes at random. The champion's accuracy is 0.85; the challenger's is 0.83
("worse -2"), 0.85 ("equal"), 0.88 ("better +3"), or 0.88 overall with one slice 15
points below the champion there and the others raised to keep +3 ("+3, slice -15": a
real regression the slice rule should catch).

Targets: P(promote | worse) <= 5%, P(promote | equal) <= 5%, and
P(promote or needs_approval | +3 points) >= 80% from 1,000 rows on.

Run: ``.venv/bin/python benchmarks/gate_power.py [--quick] [--reps 500] [--bootstrap 1000]``
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info as _machine_info
from scipy.stats import norm

from driftloop.config import GateConfig
from driftloop.decide.gate import gate_decision, min_judged_slice_size

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "gate_power"
CLASSES = np.array(["a", "b", "c"], dtype=object)
ACC_CHAMPION = 0.85
SHARED = 0.8  # weight of the shared row difficulty in each model's latent score
SCENARIOS: dict[str, tuple[float, float | None]] = {  # name -> (overall delta, slice-0 delta)
    "worse -2": (-0.02, None),
    "equal": (0.0, None),
    "better +3": (0.03, None),
    "+3, slice -15": (0.03, -0.15),
}
TARGET_FALSE = 0.05
TARGET_POWER = 0.80


# ---------------------------------------------------------------- simulation


def simulate(rng: np.random.Generator, n: int, n_slices: int, delta: float,
             slice_delta: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(y, champion predictions, challenger predictions, slice keys)`` of one eval set."""
    y = rng.integers(0, 3, n)
    slice_id = rng.integers(0, n_slices, n)
    hard = rng.normal(size=n)
    acc_b = np.full(n, ACC_CHAMPION + delta)
    if slice_delta is not None:  # slice 0 regresses; the others make up for it overall
        others = ACC_CHAMPION + (delta * n_slices - slice_delta) / (n_slices - 1)
        acc_b = np.where(slice_id == 0, ACC_CHAMPION + slice_delta, others)
    noise = math.sqrt(1 - SHARED**2)

    def predict(acc: np.ndarray) -> np.ndarray:
        score = SHARED * hard + noise * rng.normal(size=n)
        wrong = score < norm.ppf(1 - acc)
        return np.where(wrong, (y + rng.integers(1, 3, n)) % 3, y)

    pa, pb = predict(np.full(n, ACC_CHAMPION)), predict(acc_b)
    keys = np.array([f"slice={k}" for k in range(n_slices)], dtype=object)[slice_id]
    return CLASSES[y], CLASSES[pa], CLASSES[pb], keys


# ---------------------------------------------------------------- the old rule


def _old_confusion_metrics(conf: np.ndarray) -> dict[str, np.ndarray]:
    """The gate's former metrics: macro averages over the classes present per matrix."""
    conf = np.asarray(conf, dtype=float)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    true_n, pred_n = conf.sum(axis=-1), conf.sum(axis=-2)
    present = (true_n + pred_n) > 0
    n_present = np.maximum(present.sum(axis=-1), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(true_n + pred_n > 0, 2 * tp / (true_n + pred_n), 0.0)
    return {"f1_macro": (f1 * present).sum(axis=-1) / n_present}


def _old_f1(t: np.ndarray, p: np.ndarray, k: int) -> float:
    conf = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    return float(_old_confusion_metrics(conf)["f1_macro"])


def old_gate(y: np.ndarray, pa: np.ndarray, pb: np.ndarray, keys: np.ndarray,
             config: GateConfig) -> tuple[str, bool]:
    """``(decision, slices failed)`` of the former rule (latency left out)."""
    n = y.size
    labels, codes = np.unique(np.concatenate([y, pa, pb]).astype(str), return_inverse=True)
    k = len(labels)
    t, ca, cb = codes[:n], codes[n:2 * n], codes[2 * n:]
    before, after = _old_f1(t, ca, k), _old_f1(t, cb, k)
    diff = after - before
    rel = diff / max(abs(before), 1e-6)
    # The former bootstrap drew row indices; drawing how many rows of each (truth,
    # champion, challenger) category a resample holds is the same distribution, faster.
    joint, freq = np.unique((t * k + ca) * k + cb, return_counts=True)
    counts = np.random.default_rng(config.seed).multinomial(n, freq / n, size=config.bootstrap)
    conf_a = np.zeros((config.bootstrap, k * k))
    conf_b = np.zeros((config.bootstrap, k * k))
    np.add.at(conf_a.T, joint // k, counts.T)
    np.add.at(conf_b.T, (joint // (k * k)) * k + joint % k, counts.T)
    diffs = (_old_confusion_metrics(conf_b.reshape(-1, k, k))["f1_macro"]
             - _old_confusion_metrics(conf_a.reshape(-1, k, k))["f1_macro"])
    alpha = 1 - config.confidence
    low = float(np.nanquantile(diffs, alpha / 2))
    slices_failed = False
    for key in np.unique(keys):
        rows = keys == key
        if rows.sum() >= config.min_slice_size:
            drop = _old_f1(t[rows], ca[rows], k) - _old_f1(t[rows], cb[rows], k)
            slices_failed |= drop > config.slice_tolerance
    if slices_failed:
        return "reject", True
    if rel >= 0.05 and low > 0:
        return "promote", False
    return ("needs_approval" if diff > 0 else "reject"), False


# ---------------------------------------------------------------- experiment


@dataclass
class Cell:
    scenario: str
    rows: int
    slices: int
    new: dict[str, int]
    old: dict[str, int]
    new_slice_fail: int = 0
    old_slice_fail: int = 0
    reps: int = 0
    seconds: float = 0.0


def run_cell(scenario: str, n: int, n_slices: int, reps: int, config: GateConfig,
             seed: int) -> Cell:
    delta, slice_delta = SCENARIOS[scenario]
    cell = Cell(scenario, n, n_slices, dict.fromkeys(("promote", "needs_approval", "reject"), 0),
                dict.fromkeys(("promote", "needs_approval", "reject"), 0))
    rng = np.random.default_rng([seed, n, n_slices, list(SCENARIOS).index(scenario)])
    start = time.perf_counter()
    for rep in range(reps):
        y, pa, pb, keys = simulate(rng, n, n_slices, delta, slice_delta)
        cfg = replace(config, seed=rep)
        out = gate_decision(y, pa, pb, cfg, labels=list(CLASSES), slices=keys)
        cell.new[out.decision] += 1
        cell.new_slice_fail += not next(r for r in out.rules if r.name == "slices").passed
        decision, failed = old_gate(y, pa, pb, keys, cfg)
        cell.old[decision] += 1
        cell.old_slice_fail += failed
    cell.reps, cell.seconds = reps, time.perf_counter() - start
    return cell


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a rate ``k / n``."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def target(c: Cell) -> tuple[str, bool | None]:
    """``(what is required, met?)``; None when the cell has no target."""
    promote = c.new["promote"] / c.reps
    ship = (c.new["promote"] + c.new["needs_approval"]) / c.reps
    if c.scenario in ("worse -2", "equal"):
        return f"P(promote) <= {TARGET_FALSE:.0%}", promote <= TARGET_FALSE
    if c.scenario == "better +3" and c.rows >= 1000:
        return f"P(ship) >= {TARGET_POWER:.0%}", ship >= TARGET_POWER
    return "-", None


def row_dict(c: Cell) -> dict[str, Any]:
    what, met = target(c)
    out: dict[str, Any] = {"scenario": c.scenario, "rows": c.rows, "slices": c.slices,
                           "rows_per_slice": c.rows // c.slices, "reps": c.reps}
    for rule, counts, fails in (("new", c.new, c.new_slice_fail),
                                ("old", c.old, c.old_slice_fail)):
        for d, k in counts.items():
            out[f"{rule}_{d}"] = k / c.reps
        ship = counts["promote"] + counts["needs_approval"]
        out[f"{rule}_ship"] = ship / c.reps
        out[f"{rule}_slice_fail"] = fails / c.reps
        lo, hi = wilson(counts["promote"], c.reps)
        out[f"{rule}_promote_ci_low"], out[f"{rule}_promote_ci_high"] = lo, hi
    out["target"], out["target_met"] = what, "" if met is None else ("yes" if met else "NO")
    out["seconds"] = round(c.seconds, 1)
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(rows: list[dict[str, Any]], config: GateConfig, machine: str, wall: float,
             reps: int) -> str:
    lines = [
        "# Promotion gate: false promotions and power, new rules vs old", "",
        f"Machine: {machine}", "",
        f"{reps} replications per cell; {config.bootstrap} bootstrap resamples per gate "
        f"decision; champion accuracy {ACC_CHAMPION}; primary metric {config.primary_metric}; "
        f"new rule: {config.improvement_rule} >= {config.auto_threshold:.0%}, slices judged "
        f"from {min_judged_slice_size(config)} rows (old: >= {config.min_slice_size}). "
        f"Total wall time {wall:.0f} s.", "",
        "ship = promote or needs_approval. Slice fail = the slice rule failed (a hard "
        "reject).", "",
        "| scenario | rows | slices | rows/slice | NEW promote | NEW needs appr. | NEW reject "
        "| NEW ship | NEW slice fail | OLD promote | OLD needs appr. | OLD reject | OLD ship "
        "| OLD slice fail | target | met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['rows']:,} | {r['slices']} | {r['rows_per_slice']} | "
            f"{pct(r['new_promote'])} | {pct(r['new_needs_approval'])} | {pct(r['new_reject'])}"
            f" | {pct(r['new_ship'])} | {pct(r['new_slice_fail'])} | {pct(r['old_promote'])} | "
            f"{pct(r['old_needs_approval'])} | {pct(r['old_reject'])} | {pct(r['old_ship'])} | "
            f"{pct(r['old_slice_fail'])} | {r['target']} | {r['target_met'] or '-'} |")
    worst_false = max((r for r in rows if r["scenario"] in ("worse -2", "equal")),
                      key=lambda r: r["new_promote"])
    lines += [
        "",
        f"Highest new-rule false-promotion rate: {pct(worst_false['new_promote'])} "
        f"({worst_false['scenario']}, {worst_false['rows']:,} rows, {worst_false['slices']} "
        f"slices; 95% Wilson interval {pct(worst_false['new_promote_ci_low'])}-"
        f"{pct(worst_false['new_promote_ci_high'])}).",
        "The old rule auto-promoted the +3 challenger only when the sample gain happened to "
        "reach 5% relative (its true gain is 3.5% relative), the rarer the more rows; its "
        "point slice rule rejected a better challenger on noise as soon as slices had 30-75 "
        "rows. The new slice rule judges only slices of >= "
        f"{min_judged_slice_size(config)} rows (below that no interval can be narrower "
        "than the 0.05 tolerance), so with 20 slices of 50 rows it judges none: a slice "
        "regression there is not caught by any rule that does not also reject good "
        "challengers on noise.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    slice_counts = sorted({r["slices"] for r in rows})
    fig, axes = plt.subplots(2, len(slice_counts), figsize=(5 * len(slice_counts), 7),
                             sharey=True, squeeze=False)
    colors = dict(zip(SCENARIOS, ("tab:red", "tab:orange", "tab:green", "tab:purple"),
                      strict=True))
    for col, s in enumerate(slice_counts):
        for row_i, (key, title) in enumerate((("promote", "P(promote)"),
                                              ("ship", "P(promote or needs_approval)"))):
            ax = axes[row_i][col]
            for scen in SCENARIOS:
                pts = sorted((r for r in rows if r["slices"] == s and r["scenario"] == scen),
                             key=lambda r: r["rows"])
                if not pts:
                    continue
                xs = [r["rows"] for r in pts]
                ax.plot(xs, [r[f"new_{key}"] for r in pts], "-o", color=colors[scen],
                        label=f"{scen} new")
                ax.plot(xs, [r[f"old_{key}"] for r in pts], "--x", color=colors[scen],
                        alpha=0.6, label=f"{scen} old")
            ax.axhline(TARGET_FALSE if key == "promote" else TARGET_POWER, color="grey",
                       lw=0.8, ls=":")
            ax.set_xscale("log")
            sizes = sorted({r["rows"] for r in rows})
            ax.set_xticks(sizes, [f"{v:,}" for v in sizes])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_title(f"{title}, {s} slices", fontsize=10)
            ax.set_xlabel("eval rows")
            ax.set_ylim(-0.02, 1.02)
    axes[1][0].legend(fontsize=7, ncol=2, loc="center right")
    fig.suptitle("Promotion gate: new rules (solid) vs old (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_info() -> str:
    return _machine_info(f"numpy {np.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="60 replications, 300 bootstrap resamples, results *_quick.*")
    parser.add_argument("--reps", type=int, default=500, help="replications per cell")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples per gate decision (GateConfig default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replot", action="store_true",
                        help="redraw the PNG from the CSV of a finished run")
    args = parser.parse_args()
    if args.replot:
        name = f"{NAME}_quick" if args.quick else NAME
        with (RESULTS / f"{name}.csv").open() as fh:
            saved = [{k: (float(v) if k.startswith(("new_", "old_")) else
                          int(v) if k in ("rows", "slices") else v) for k, v in r.items()}
                     for r in csv.DictReader(fh)]
        plot(saved, RESULTS / f"{name}.png")
        return
    reps = 60 if args.quick else args.reps
    config = GateConfig(bootstrap=300 if args.quick else args.bootstrap)
    name = f"{NAME}_quick" if args.quick else NAME
    start = time.perf_counter()
    cells = []
    for scenario in SCENARIOS:
        for n in (300, 1000, 5000):
            for s in (4, 20):
                cell = run_cell(scenario, n, s, reps, config, args.seed)
                cells.append(cell)
                print(f"{scenario:14} {n:>5} rows {s:>2} slices: new {cell.new} old "
                      f"{cell.old} ({cell.seconds:.0f} s)", flush=True)
    wall = time.perf_counter() - start
    rows = [row_dict(c) for c in cells]
    md = markdown(rows, config, machine_info(), wall, reps)
    print()
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(md)
    with (RESULTS / f"{name}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / name}.{{md,csv,png}}")


if __name__ == "__main__":
    main()
