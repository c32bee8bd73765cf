"""Canary decisions under repeated daily looks: error rates and power, old rule vs new.

Simulated canaries against a champion with live accuracy 0.90; the canary's true accuracy
differs by -5, -2, 0, +2 or +5 points. Every day brings ``labels_per_day`` labelled
responses in total (500, 1,000 or 3,000), split by the canary's traffic step (10% at the
start, 50% after the first advance): ``n2 = round(L * percent / 100)`` canary labels,
the rest the champion's. At the end of each day the rollout policy analyses the
cumulative data since the canary started, exactly as ``progressive.step_canary`` does:

* ``advance`` moves 10 → 50 → 100 (100 completes the rollout);
* ``hold`` keeps the step. New rule: ``max_holds`` counts only holds without a new
  labelled canary response (step_canary's rule), so with labels every day it never fires;
  the final look at ``max_days`` (28) decides an inconclusive canary on its estimate
  (``quality_decision(final=True)``). Old rule: the hold after ``max_holds`` (3) holds in
  a row rolls the canary back;
* ``rollback`` ends it.

Horizon: ``max_days`` (28) daily analyses; a canary still undecided then counts as
``hold_end`` (none for the new rule: its final look decides).

Rules compared:

* **new** -- :func:`driftloop.decide.canary.quality_decision`, the numpy core that
  ``analyse_canary`` itself calls (per-day strata, Mantel-Haenszel risk difference,
  normal-mixture confidence sequence, label budget), with the default ``CanaryConfig``
  (``min_labelled`` 100, ``max_days`` 28, ``alpha`` 0.05, ``power`` 0.95, tolerance 0.02);
* **old** -- the rule before it (``git show 5d5b1aa:src/driftloop/canary.py``), rebuilt
  below as :func:`old_rule`: all responses pooled, a fresh Wald interval
  ``diff ± 1.96 se`` on the cumulative data at every look, rollback when the upper bound
  < -0.02, advance when the lower bound >= -0.02, hold otherwise; ``min_labelled`` 100,
  ``max_holds`` 3.

Scenario ``simpson``: canary and champion equally accurate on every day, but days 1-2 are
easy (0.95) and later days hard (0.85); the canary's labels come mostly from the hard 50%
days, the champion's from every day.

Targets: P(rollback | 2 points worse) >= 95%, P(rollback | equal) <= 5%,
P(complete | 2 points better) >= 95% (and Simpson: not rolled back).

Run: ``.venv/bin/python benchmarks/canary_power.py [--quick] [--reps 1000]``
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from driftloop.config import CanaryConfig
from driftloop.decide.canary import (
    ADVANCE,
    HOLD,
    ROLLBACK,
    label_budget,
    next_step,
    quality_decision,
)

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "canary_power"
CHAMPION = 0.90
DIFFS = (-0.05, -0.02, 0.0, 0.02, 0.05)
VOLUMES = (500, 1000, 3000)
HORIZON = round(CanaryConfig().max_days)
OLD_MIN_LABELLED, OLD_MAX_HOLDS, OLD_TOLERANCE, OLD_Z = 100, 3, 0.02, 1.96

#: One look: (x1, n1, x2, n2 per day so far, current percent, days since the canary's first
#: response) -> (decision, next percent)
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, float], tuple[str, int]]


def old_rule(x1: np.ndarray, n1: np.ndarray, x2: np.ndarray, n2: np.ndarray,
             percent: int, age_days: float = 0.0) -> tuple[str, int]:
    """The canary rule before the fix: pooled accuracies, a fresh Wald interval per look."""
    c1, c2 = int(n1.sum()), int(n2.sum())
    if min(c1, c2) < OLD_MIN_LABELLED:
        return HOLD, percent
    a1, a2 = x1.sum() / c1, x2.sum() / c2
    diff = a2 - a1
    se = math.sqrt(a1 * (1 - a1) / c1 + a2 * (1 - a2) / c2)
    low, high = diff - OLD_Z * se, diff + OLD_Z * se
    if high < -OLD_TOLERANCE:
        return ROLLBACK, 0
    if low >= -OLD_TOLERANCE:
        return ADVANCE, next_step(percent, (10, 50, 100))
    return HOLD, percent


def new_rule(config: CanaryConfig) -> Rule:
    """The rule analyse_canary applies (its numpy core), strata = days."""
    def rule(x1: np.ndarray, n1: np.ndarray, x2: np.ndarray, n2: np.ndarray,
             percent: int, age_days: float = 0.0) -> tuple[str, int]:
        q = quality_decision(x1, n1, x2, n2, current_percent=percent, config=config,
                             final=age_days >= config.max_days)
        return q.decision, q.next_percent
    return rule


@dataclass
class Outcome:
    """How one simulated canary ended."""

    result: str  # rollback | complete | hold_end
    day: int  # the analysis (1-based) that decided; HORIZON + 1 when undecided
    by_holds: bool = False  # rolled back by max_holds, not by the quality rule


def simulate(rule: Rule, max_holds: int, diff: float, labels_per_day: int,
             rng: np.random.Generator, simpson: bool = False,
             horizon: int = HORIZON) -> Outcome:
    """One canary through the rollout policy, one analysis a day (the end of each day).

    ``max_holds`` 0: holds never stall (the new rule; labels arrive every day).
    """
    percent, held = 10, 0
    x1, n1, x2, n2 = (np.zeros(horizon) for _ in range(4))
    for day in range(horizon):
        base = (0.95 if day < 2 else 0.85) if simpson else CHAMPION
        c = round(labels_per_day * percent / 100)
        n1[day], n2[day] = labels_per_day - c, c
        x1[day] = rng.binomial(labels_per_day - c, base)
        x2[day] = rng.binomial(c, min(max(base + diff, 0.0), 1.0))
        decision, target = rule(x1[:day + 1], n1[:day + 1], x2[:day + 1], n2[:day + 1],
                                percent, float(day + 1))
        if decision == ROLLBACK:
            return Outcome("rollback", day + 1)
        if decision == HOLD:
            if max_holds and held >= max_holds:  # old rule: the hold after max_holds
                return Outcome("rollback", day + 1, by_holds=True)
            held += 1
            continue
        held = 0
        if target == 100:
            return Outcome("complete", day + 1)
        percent = target
    return Outcome("hold_end", horizon + 1)


def run_cell(rule_name: str, rule: Rule, max_holds: int, scenario: str, diff: float,
             volume: int, reps: int, seed: int, horizon: int = HORIZON) -> dict[str, Any]:
    """``reps`` canaries of one cell, summarised."""
    rng = np.random.default_rng([seed, volume, round(diff * 1000) + 1000,
                                 scenario == "simpson", rule_name == "old", horizon])
    outs = [simulate(rule, max_holds, diff, volume, rng, simpson=scenario == "simpson",
                     horizon=horizon) for _ in range(reps)]
    days = np.array([o.day for o in outs], dtype=float)
    days[days > horizon] = np.inf
    share = {k: sum(o.result == k for o in outs) / reps
             for k in ("rollback", "complete", "hold_end")}
    return {"scenario": scenario, "rule": rule_name, "true_diff": diff,
            "labels_per_day": volume, "p_rollback": share["rollback"],
            "p_complete": share["complete"], "p_hold_end": share["hold_end"],
            "p_rollback_by_holds": sum(o.by_holds for o in outs) / reps,
            "median_days": float(np.median(days)), "reps": reps, "horizon": horizon}


def target_of(row: dict[str, Any]) -> tuple[str, bool | None]:
    """The target that applies to a row and whether it is met."""
    d, s = row["true_diff"], row["scenario"]
    if s == "simpson":
        return "P(rollback) <= 5%", row["p_rollback"] <= 0.05
    if d <= -0.02 + 1e-9:
        return "P(rollback) >= 95%", row["p_rollback"] >= 0.95
    if abs(d) < 1e-9:
        return "P(rollback) <= 5%", row["p_rollback"] <= 0.05
    return "P(complete) >= 95%", row["p_complete"] >= 0.95


def _days(v: float, horizon: int = HORIZON) -> str:
    return f">{horizon}" if not math.isfinite(v) else f"{v:g}"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| scenario | true_diff | labels_per_day | rule | p_rollback | p_complete | "
             "p_hold_end | median_days | rollback by max_holds | target | met |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        target, met = target_of(r)
        lines.append(
            f"| {r['scenario']} | {r['true_diff']:+.2f} | {r['labels_per_day']:,} | "
            f"{r['rule']} | {r['p_rollback']:.3f} | {r['p_complete']:.3f} | "
            f"{r['p_hold_end']:.3f} | {_days(r['median_days'], r['horizon'])} | "
            f"{r['p_rollback_by_holds']:.3f} | {target} | {'yes' if met else '**no**'} |")
    return lines


def markdown(rows: list[dict[str, Any]], reps: int, wall: float, config: CanaryConfig,
             budget: float, long_horizon: int) -> str:
    """The results tables with their legend."""
    main = [r for r in rows if r["table"] == "main"]
    sens = [r for r in rows if r["table"] == "sensitivity"]
    long = [r for r in rows if r["table"] == "long"]
    lines = [
        "# Canary decisions under daily looks: old rule vs new", "",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, numpy "
        f"{np.__version__}. {reps} replications per row; wall time {wall:.0f} s.", "",
        f"Champion live accuracy {CHAMPION:.2f}; `true_diff` = canary minus champion. "
        f"Labels per day split by the traffic step (10% canary, then 50%); one analysis a "
        f"day over the cumulative data. New rule = `canary.quality_decision` (what "
        f"`analyse_canary` runs) with the default CanaryConfig (min_labelled "
        f"{config.min_labelled}, max_days {config.max_days:g} (final look), alpha "
        f"{config.alpha}, power "
        f"{config.power}, tolerance {config.tolerance}, strata = days); label budget = "
        f"information {budget:,.0f} (about {budget * 2 * CHAMPION * (1 - CHAMPION):,.0f} "
        f"labels per version at a 50/50 split). Old rule = pooled Wald interval per look, "
        f"min_labelled {OLD_MIN_LABELLED}, max_holds {OLD_MAX_HOLDS}.", "",
        f"## Horizon {HORIZON} days", "", *_table(main), "",
        f"## Sensitivity (horizon {HORIZON} days): new rule with alpha 0.10, and with "
        "skip_steps (lower bound > +tolerance goes straight to 100)", "", *_table(sens), "",
        f"## Long horizon: {long_horizon} days, max_days {long_horizon} (the label budget "
        "decides; the final look later)", "", *_table(long), "",
        "`median_days`: analyses until the canary is decided (rolled back or complete), "
        "over all replications; >N: more than half undecided at the horizon N. "
        "`rollback by max_holds`: share rolled back because it held too long (old rule "
        "only; the new rule's holds never stall while labels arrive, and its final look "
        "at max_days decides the rest). `p_hold_end`: still undecided at the horizon.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """p_rollback and p_complete against the true difference, one panel per volume."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = [r for r in rows if r["scenario"] == "shift"]
    fig, axes = plt.subplots(1, len(VOLUMES), figsize=(4.2 * len(VOLUMES), 3.6), sharey=True)
    for ax, volume in zip(axes, VOLUMES, strict=True):
        for rule, style in (("old", "--"), ("new", "-")):
            cells = sorted((r for r in base if r["rule"] == rule
                            and r["labels_per_day"] == volume), key=lambda r: r["true_diff"])
            xs = [100 * r["true_diff"] for r in cells]
            ax.plot(xs, [r["p_rollback"] for r in cells], style, marker="o", color="C3",
                    label=f"{rule}: P(rollback)")
            ax.plot(xs, [r["p_complete"] for r in cells], style, marker="s", color="C2",
                    label=f"{rule}: P(complete)")
        ax.axhline(0.95, color="grey", lw=0.6)
        ax.axhline(0.05, color="grey", lw=0.6)
        ax.set_title(f"{volume:,} labels/day")
        ax.set_xlabel("canary - champion accuracy (points)")
    axes[0].set_ylabel(f"share of canaries within {HORIZON} days")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    """Run every cell, write Markdown, CSV and PNG to benchmarks/results/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 replications")
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long-horizon", type=int, default=60)
    args = parser.parse_args()
    reps = 200 if args.quick else args.reps
    name = f"{NAME}_quick" if args.quick else NAME
    config = CanaryConfig()
    long_h = args.long_horizon
    rules: list[tuple[str, Rule, int]] = [("old", old_rule, OLD_MAX_HOLDS),
                                          ("new", new_rule(config), 0)]
    variants: list[tuple[str, Rule, int]] = [
        ("new alpha=0.10", new_rule(replace(config, alpha=0.10)), 0),
        ("new skip_steps", new_rule(replace(config, skip_steps=True)), 0)]
    cells = [("shift", d, v) for d in DIFFS for v in VOLUMES]
    cells += [("simpson", 0.0, v) for v in VOLUMES]
    plan: list[tuple[str, str, Rule, int, str, float, int, int]] = []
    for scenario, diff, volume in cells:
        plan += [("main", n, r, h, scenario, diff, volume, HORIZON) for n, r, h in rules]
    for scenario, diff, volume in cells:
        plan += [("sensitivity", n, r, h, scenario, diff, volume, HORIZON)
                 for n, r, h in variants]
    for scenario, diff, volume in cells:
        plan.append(("long", "new", new_rule(replace(config, max_days=float(long_h))), 0,
                     scenario, diff, volume, long_h))
    start = time.perf_counter()
    rows = []
    for table, rule_name, rule, holds, scenario, diff, volume, horizon in plan:
        row = {"table": table, **run_cell(rule_name, rule, holds, scenario, diff, volume,
                                          reps, args.seed, horizon)}
        rows.append(row)
        print(f"{table:11s} {scenario:8s} {diff:+.2f} {volume:5d} {rule_name:15s} "
              f"rollback {row['p_rollback']:.3f} complete {row['p_complete']:.3f} "
              f"hold_end {row['p_hold_end']:.3f} median "
              f"{_days(row['median_days'], horizon)}", flush=True)
    wall = time.perf_counter() - start
    RESULTS.mkdir(exist_ok=True)
    fields = ["table", "scenario", "true_diff", "labels_per_day", "rule", "p_rollback",
              "p_complete", "p_hold_end", "median_days", "p_rollback_by_holds", "horizon",
              "reps"]
    with (RESULTS / f"{name}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (RESULTS / f"{name}.md").write_text(markdown(rows, reps, wall, config,
                                                 label_budget(config), long_h))
    plot([r for r in rows if r["table"] == "main"], RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / name}.{{md,csv,png}} in {wall:.0f} s")


if __name__ == "__main__":
    main()
