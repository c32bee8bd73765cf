"""A/B tests with sticky users under daily looks: false winners, power, days to a decision.

Simulated users with sticky assignment (:func:`driftloop.decide.ab_assign.assign` on their
key, a fresh salt per replication) and a true accuracy difference of 0, +2 or +5 points
(variant ``b`` minus control ``a``). Traffic (the same for ``--quick``; only the number of
replications changes):

* 10,000 light users, each making Poisson(2) requests a day (x0.6 on weekends), or 1,000
  heavy users making Poisson(20); 30 % of the responses get a label: ~5,300 labelled
  responses a day either way, half per variant;
* users differ: user ``u`` is right with probability ``p_u ~ Beta(6.4, 1.6)`` (mean 0.80,
  intra-user correlation 1/9) plus a weekday shift of ±1 point, plus the variant's effect;
  so one user's responses are correlated, as real users' are (an easy user is easy for
  both models);
* a look at the end of every day on the cumulative data since the start, up to
  ``ABConfig.max_days`` (28).

Rules compared on the same simulated data:

* **driftloop** -- what :func:`driftloop.decide.ab.analyse_ab` does for two variants: the
  per-day Mantel-Haenszel difference with the per-user (cluster-robust) variance of
  :func:`~driftloop.decide.ab.clustered_difference`, the anytime-valid confidence sequence
  of :mod:`driftloop.decide.sequential` (alpha 0.05, planned for ``mde`` 0.02 at power
  0.9), ``min_labelled`` 100; winner when the interval excludes 0, stop without one when
  it lies inside (-mde, +mde), when the planned information is reached, or at
  ``max_days``;
* **binomial CS** (peer) -- the same sequence with the per-response binomial variance
  (:func:`~driftloop.decide.sequential.stratified_difference`): ignores that a user's
  responses are correlated;
* **daily z-test** (peer) -- what a fixed-sample A/B calculator does when it is checked
  every day: pooled accuracies, a 95 % z-interval, a winner at the first look that
  excludes 0.

Also: the share of users who ever saw both variants over 28 days, with the key (sticky
hash) and with a per-request random split (``assign`` without a key), counted by calling
``assign`` for every simulated request.

Targets: P(winner | 0) <= 5 %, P(right winner | +2) >= 90 %; users who saw both = 0 with
keys.

Run: ``.venv/bin/python benchmarks/ab_test.py [--quick] [--reps 1000]``
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from driftloop.config import ABConfig
from driftloop.decide.ab import clustered_difference
from driftloop.decide.ab_assign import ABTest, Variant, assign, bucket
from driftloop.decide.sequential import (
    STANDARD_NORMAL,
    confidence_sequence,
    planned_information,
    stratified_difference,
)

try:
    from _machine import machine_info
except ImportError:  # run from elsewhere
    def machine_info(*extra: str) -> str:
        return ", ".join(extra)

NAME = "ab_test"
RESULTS = Path(__file__).parent / "results"
#: Traffic profiles: (users, requests per user per day); about the same labels a day.
PROFILES = {"10k light users": (10_000, 2.0), "1k heavy users": (1_000, 20.0)}
USERS, REQUESTS_PER_DAY = PROFILES["10k light users"]
LABEL_SHARE = 0.3
BASE_A, BASE_B = 6.4, 1.6  # Beta: mean 0.8, intra-user correlation 1 / (a + b + 1)
DIFFS = (0.0, 0.02, 0.05)
RULES = ("driftloop", "binomial CS", "daily z-test")

Look = Callable[[int], str | None]


def simulate(diff: float, days: int, seed: int, users: int = USERS,
             rate: float = REQUESTS_PER_DAY) -> dict[str, np.ndarray]:
    """One replication's per-(user, day) labelled and correct counts and assignment."""
    rng = np.random.default_rng(seed)
    salt = f"rep-{seed}"
    treated = np.array([bucket(salt, f"user-{u}") >= 0.5 for u in range(users)])
    p_user = rng.beta(BASE_A, BASE_B, users)
    day = np.arange(days)
    volume = np.where(day % 7 >= 5, 0.6, 1.0)
    shift = 0.01 * np.sin(2 * np.pi * day / 7)
    lam = rate * LABEL_SHARE * volume
    labelled = rng.poisson(lam[None, :], (users, days))
    p = np.clip(p_user[:, None] + shift[None, :] + diff * treated[:, None], 0, 1)
    correct = rng.binomial(labelled, p)
    return {"treated": treated, "labelled": labelled, "correct": correct}


def driftloop_rule(sim: dict[str, np.ndarray], config: ABConfig, *,
                   clustered: bool) -> Look:
    """The look of :func:`analyse_ab` for two variants (or its binomial-variance peer)."""
    planned = planned_information(config.mde, config.alpha, config.power)
    users = np.arange(len(sim["treated"]))

    def look(d: int) -> str | None:
        lab, cor = sim["labelled"][:, :d + 1], sim["correct"][:, :d + 1]
        t = sim["treated"]
        if min(lab[t].sum(), lab[~t].sum()) < config.min_labelled:
            return None
        if clustered:
            mask = lab > 0
            uu, hh = np.nonzero(mask)
            est = clustered_difference(cor[mask], t[uu], hh, users[uu], lab[mask])
        else:
            est = stratified_difference(cor[~t].sum(0), lab[~t].sum(0), cor[t].sum(0),
                                        lab[t].sum(0))
        low, high = confidence_sequence(est, config.alpha, planned)
        if low > config.min_effect:
            return "b"
        if high < -config.min_effect:
            return "a"
        if (-config.mde < low and high < config.mde) or est.information >= planned:
            return "none"
        return None

    return look


def z_rule(sim: dict[str, np.ndarray], alpha: float) -> Look:
    """A fixed-sample z-interval on pooled accuracies, checked at every look."""
    z = STANDARD_NORMAL.inv_cdf(1 - alpha / 2)

    def look(d: int) -> str | None:
        t = sim["treated"]
        n1, n2 = sim["labelled"][~t, :d + 1].sum(), sim["labelled"][t, :d + 1].sum()
        if min(n1, n2) < 100:
            return None
        p1, p2 = sim["correct"][~t, :d + 1].sum() / n1, sim["correct"][t, :d + 1].sum() / n2
        se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
        if p2 - p1 - z * se > 0:
            return "b"
        if p2 - p1 + z * se < 0:
            return "a"
        return None

    return look


def run_rep(diff: float, seed: int, config: ABConfig,
            profile: str = "10k light users") -> dict[str, tuple[str, int]]:
    """Each rule's outcome (winner a/b, none, or undecided) and the day it stopped."""
    days = int(config.max_days)
    sim = simulate(diff, days, seed, *PROFILES[profile])
    looks = {"driftloop": driftloop_rule(sim, config, clustered=True),
             "binomial CS": driftloop_rule(sim, config, clustered=False),
             "daily z-test": z_rule(sim, config.alpha)}
    out = {}
    for name, look in looks.items():
        result = ("none", days)  # max duration: no winner
        for d in range(days):
            verdict = look(d)
            if verdict is not None:
                result = (verdict, d + 1)
                break
        out[name] = result
    return out


def saw_both(days: int, seed: int) -> dict[str, float]:
    """Share of users (with >= 2 requests) who were served both variants, keyed vs not."""
    test = ABTest("bench", "m", (Variant("a", "v1", 0.5), Variant("b", "v2", 0.5)))
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    requests = rng.poisson(REQUESTS_PER_DAY * 0.886 * days, USERS)  # 0.886: weekend dip
    keyed = unkeyed = multi = 0
    for u, r in enumerate(requests):
        if r < 2:
            continue
        multi += 1
        key = f"user-{u}"
        keyed += len({assign(test, key, pick).variant for _ in range(r)}) > 1
        unkeyed += len({assign(test, None, pick).variant for _ in range(r)}) > 1
    return {"users": float(multi), "keyed": keyed / multi, "random": unkeyed / multi}


def summarise(outcomes: list[dict[str, tuple[str, int]]], diff: float,
              config: ABConfig, profile: str = "10k light users") -> list[dict[str, object]]:
    """Per rule: P(any winner), P(right winner), P(wrong winner), median days."""
    rows = []
    right = "b" if diff > 0 else None
    for name in RULES:
        got = [o[name] for o in outcomes]
        winners = [w for w, _ in got if w in ("a", "b")]
        days = [d for _, d in got]
        win_days = [d for w, d in got if w in ("a", "b")]
        rows.append({
            "traffic": profile, "true_diff": diff, "rule": name, "reps": len(got),
            "p_winner": len(winners) / len(got),
            "p_right": (sum(w == right for w in winners) / len(got)) if right else 0.0,
            "p_wrong": sum(w != right for w in winners) / len(got),
            "median_days": float(np.median(days)),
            "median_days_to_winner": float(np.median(win_days)) if win_days else math.nan,
            "p_undecided_at_max": sum(w == "none" and d == int(config.max_days)
                                      for w, d in got) / len(got),
        })
    return rows


def markdown(rows: list[dict[str, object]], both: dict[str, float], reps: int, wall: float,
             load: tuple[float, float, float], config: ABConfig) -> str:
    planned = planned_information(config.mde, config.alpha, config.power)
    lines = [
        "# A/B test decisions under daily looks (benchmarks/ab_test.py)", "",
        f"{reps} replications per traffic and true difference; sticky users: "
        + "; ".join(f"{name}: {u:,} users x Poisson({r:g}) requests/day"
                    for name, (u, r) in PROFILES.items())
        + f" (x0.6 weekends), {LABEL_SHARE:.0%} labelled (~"
        f"{USERS * REQUESTS_PER_DAY * LABEL_SHARE * 0.886:,.0f} labels/day), "
        f"user accuracy Beta({BASE_A:g}, {BASE_B:g}) (mean 0.80, intra-user correlation "
        f"{1 / (BASE_A + BASE_B + 1):.3f}); daily looks up to {config.max_days:g} days.",
        f"driftloop rule: alpha {config.alpha:g}, power {config.power:.0%} at mde "
        f"{config.mde:g} (planned information {planned:,.0f}, i.e. "
        f"~{2 * 0.16 * planned:,.0f} labels per variant at binomial variance).", "",
        f"Wall time {wall:.0f} s; load average while running {load[0]:.2f} / {load[1]:.2f} "
        f"/ {load[2]:.2f} (1/5/15 min) on {machine_info()} -- taken under load (two cores "
        "shared with other jobs); the error rates do not depend on it.", "",
        "| traffic | true diff | rule | P(winner) | P(right winner) | P(wrong winner) | "
        "median days to stop | median days to a winner | P(no decision by max_days) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['traffic']} | {r['true_diff']:+.2f} | {r['rule']} | {r['p_winner']:.3f} | "
            f"{r['p_right']:.3f} | {r['p_wrong']:.3f} | {r['median_days']:g} | "
            f"{r['median_days_to_winner']:g} | {r['p_undecided_at_max']:.3f} |")
    lines += ["", f"Users (with >= 2 requests in {config.max_days:g} days, n="
              f"{both['users']:,.0f}) served both variants: with the key (sticky hash) "
              f"{both['keyed']:.3%}; per-request random split {both['random']:.2%}.", ""]
    return "\n".join(lines)


def plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(PROFILES), figsize=(11, 7), squeeze=False)
    width = 0.25
    for col, profile in enumerate(PROFILES):
        top, bottom = axes[0][col], axes[1][col]
        for i, rule in enumerate(RULES):
            mine = [r for r in rows if r["rule"] == rule and r["traffic"] == profile]
            x = np.arange(len(mine)) + (i - 1) * width
            top.bar(x, [float(r["p_winner"]) for r in mine], width, label=rule)  # type: ignore[arg-type]
            bottom.bar(x, [float(r["median_days"]) for r in mine], width, label=rule)  # type: ignore[arg-type]
        ticks = [f"{d:+.0%}" for d in DIFFS]
        for ax in (top, bottom):
            ax.set_xticks(np.arange(len(DIFFS)), ticks)
        bottom.set_xlabel("true accuracy difference b - a")
        top.axhline(0.05, color="red", lw=0.8, ls="--", label="5 %")
        top.axhline(0.90, color="green", lw=0.8, ls="--", label="90 %")
        top.set_title(profile)
        top.set_ylabel("P(winner declared)")
        bottom.set_ylabel("median days to stop")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("A/B tests with sticky users, daily looks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    """Run every cell; write Markdown, CSV and PNG to benchmarks/results/."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 replications")
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reps = 100 if args.quick else args.reps
    name = f"{NAME}_quick" if args.quick else NAME
    config = ABConfig()
    start = time.perf_counter()
    rows: list[dict[str, object]] = []
    for profile in PROFILES:
        for diff in DIFFS:
            outcomes = [run_rep(diff, args.seed * 100_000 + i, config, profile)
                        for i in range(reps)]
            cell = summarise(outcomes, diff, config, profile)
            rows += cell
            for r in cell:
                print(f"{profile:15s} {diff:+.2f} {r['rule']:13s} P(winner) "
                      f"{r['p_winner']:.3f} P(right) {r['p_right']:.3f} median days "
                      f"{r['median_days']:g}", flush=True)
    both = saw_both(int(config.max_days), args.seed)
    wall = time.perf_counter() - start
    load = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / f"{name}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    text = markdown(rows, both, reps, wall, load, config)
    (RESULTS / f"{name}.md").write_text(text)
    plot(rows, RESULTS / f"{name}.png")
    print(text)
    print(f"wrote {RESULTS / name}.{{md,csv,png}} in {wall:.0f} s")


if __name__ == "__main__":
    main()
