"""Curated feedback: what the review queue's labels buy, and the disagreement rule's errors.

**Part 1: active learning on real tweets after a topic change.** A champion is trained on
2,000 airline tweets (the demo's first topic). The traffic then changes to a new topic
(apple, then separately coachella: ``driftloop.demo.datasets`` recovers the topics from
keywords). Of the new topic's tweets a fixed 35 % are the test set (never labelled, never
trained on); the rest are the unlabelled pool. Someone labels ``k`` of them and the model
is retrained on the airline tweets plus those ``k`` labels (the same TF-IDF + logistic
regression pipeline driftloop trains, ``driftloop.models.train.build_pipeline``):

* **review queue** -- what ``driftloop review export`` gives, one queue per daily run:
  rounds of 100, 100, 100, 200 and 500 labels (each model fit costs ~30 s on the loaded
  2 cores), each round the queue of :func:`driftloop.decide.review.review_queue`
  (lowest margin first, slices sharing by their uncertain rows, near-duplicates once)
  from the model retrained on the labels so far;
* **queue, one export** -- all ``k`` from one queue of the airline champion (full size
  only);
* **random** (the peer) -- ``k`` tweets drawn uniformly from the pool, as a labelling
  budget spent on whatever comes.

Accuracy on the test set at k = 100, 300 and 1,000 over several seeds (the pool order and
the random draws change with the seed), mean with a 95 % t-interval over seeds, and the
paired difference queue minus random with its interval.

**Part 2: the disagreement rule's false alarms and power, by simulation.** A champion
serves 30 daily runs; ``L`` labelled responses a day (100, 300, 1,000), three predicted
classes with per-class disagreement rates 0.15 / 0.30 / 0.25, a class mix drawn each day
around 0.5 / 0.3 / 0.2. Each run judges the last 3 days against the champion's earlier
rows. Scenarios: *stationary*; *class mix moves* to the hard class from day 15 (same
per-class rates: nothing got worse); *rise* of +0.05 or +0.10 in every class from day 15.
Rules on the same data:

* **driftloop** -- :func:`driftloop.decide.disagreement.disagreement_from_counts` (what
  the trigger's rule computes from the rows' counts per predicted class): the rise at the
  same class mix (Mantel-Haenszel over predicted classes), anytime-valid confidence
  sequence at ``disagree_alpha`` (0.02), fires when its lower bound > 0 and the rise
  >= ``disagree_rise`` (0.05);
* **pooled z-test** (the peer) -- a one-sided two-proportion z-test of the raw rates at
  1 % checked every run, which is what "the disagreement rate went up" usually means.

P(any false alarm in the 30 runs) for the null scenarios; P(fired within 5 runs of the
change) for the rises.

Run: ``.venv/bin/python benchmarks/active_learning.py [--quick]``. The figures were
taken on 2 cores shared with other jobs (the load average is recorded with them).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from driftloop.config import CurationConfig, TrainConfig
from driftloop.data.schema import schema_from_dict
from driftloop.decide.disagreement import disagreement_from_counts
from driftloop.decide.review import review_queue
from driftloop.demo.datasets import fetch, load_tweets
from driftloop.demo.scenarios import TWEET_LABELS
from driftloop.models.train import build_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = schema_from_dict({"name": "tweets", "labels": list(TWEET_LABELS),
                           "columns": [{"name": "text", "kind": "text", "dtype": "string"}]})
BUDGETS = (100, 300, 1000)
#: The queue's rounds (one export per daily run): 100, 100, 100, 200, 500 labels.
ROUNDS = (100, 100, 100, 200, 500)
SEED_ROWS = 2000


def _fit(frame: pd.DataFrame):
    model = build_pipeline(SCHEMA, TrainConfig())
    return model.fit(frame[["text"]], frame["label"].to_numpy(dtype=str))


def _accuracy(model, test: pd.DataFrame) -> float:
    return float((model.predict(test[["text"]]) == test["label"].to_numpy(dtype=str)).mean())


def _queue(model, pool: pd.DataFrame, size: int) -> list[int]:
    proba = model.predict_proba(pool[["text"]])
    classes = [str(c) for c in model.classes_]
    queue, _ = review_queue(pool, proba, classes, SCHEMA, size)
    return [int(i) for i in queue["id"]]


def active_learning(tweets: pd.DataFrame, topic: str, seed: int, *, once: bool
                    ) -> dict[str, dict[int, float]]:
    """Accuracy at each budget for the ways to spend labels, one seed."""
    rng = np.random.default_rng(seed)
    seed_rows = tweets[tweets["topic"] == "airline"].sample(SEED_ROWS, random_state=seed)
    new = tweets[tweets["topic"] == topic].sample(frac=1.0, random_state=seed)
    cut = int(0.35 * len(new))
    test, pool = new.iloc[:cut], new.iloc[cut:].reset_index(drop=True)
    pool = pool.assign(id=np.arange(len(pool)))
    champion = _fit(seed_rows)
    out: dict[str, dict[int, float]] = {"champion": {0: _accuracy(champion, test)},
                                        "queue": {}, "queue_once": {}, "random": {}}
    order = rng.permutation(len(pool))
    for k in BUDGETS:
        picked = pool.iloc[order[:k]]
        out["random"][k] = _accuracy(_fit(pd.concat([seed_rows, picked])), test)
        if once:
            chosen = pool.loc[pool["id"].isin(_queue(champion, pool, k))]
            out["queue_once"][k] = _accuracy(_fit(pd.concat([seed_rows, chosen])), test)
        else:
            out["queue_once"][k] = math.nan
    labelled: list[int] = []
    model = champion
    for size in ROUNDS:
        rest = pool.loc[~pool["id"].isin(labelled)].reset_index(drop=True)
        labelled += _queue(model, rest, size)
        model = _fit(pd.concat([seed_rows, pool.loc[pool["id"].isin(labelled)]]))
        if len(labelled) in BUDGETS:
            out["queue"][len(labelled)] = _accuracy(model, test)
    return out


def _interval(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values, dtype=float)
    m = float(a.mean())
    if len(a) < 2:
        return m, math.nan, math.nan
    h = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return m, m - h, m + h


# --- part 2: the disagreement rule ------------------------------------------------------

RATES = np.array([0.15, 0.30, 0.25])
MIX = np.array([0.5, 0.3, 0.2])
DAYS, CHANGE, WINDOW = 30, 15, 3


def _day(rng: np.random.Generator, n: int, day: int, scenario: str) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    mix = rng.dirichlet(MIX * 50)
    rates = RATES.copy()
    if day >= CHANGE and scenario == "mix":
        mix = rng.dirichlet(np.array([0.2, 0.6, 0.2]) * 50)  # towards the hard class
    if day >= CHANGE and scenario.startswith("rise"):
        rates = rates + float(scenario.split("+")[1])
    n_c = rng.multinomial(n, mix)
    x_c = rng.binomial(n_c, rates)
    return n_c, x_c


def _pooled_z(x1: np.ndarray, n1: np.ndarray, x2: np.ndarray, n2: np.ndarray,
              alpha: float) -> bool:
    a, b, m, k = x1.sum(), n1.sum(), x2.sum(), n2.sum()
    p = (a + m) / (b + k)
    se = math.sqrt(p * (1 - p) * (1 / b + 1 / k))
    return se > 0 and (m / k - a / b) / se > stats.norm.ppf(1 - alpha)


def disagreement_sim(reps: int, per_day: int, scenario: str, seed: int) -> dict[str, float]:
    """P(fired) of driftloop's rule and the pooled z-test over one champion's 30 runs."""
    cfg = CurationConfig()
    rng = np.random.default_rng(seed)
    hits = {"driftloop": 0, "pooled_z": 0}
    runs_fired = {"driftloop": 0, "pooled_z": 0}
    looks = 0
    for _ in range(reps):
        days = [_day(rng, per_day, d, scenario) for d in range(DAYS)]
        fired = {"driftloop": False, "pooled_z": False}
        last = DAYS if scenario in ("stationary", "mix") else CHANGE + 5
        for run in range(WINDOW + 2, last):  # a baseline of at least 2 days
            before = days[:run - WINDOW]
            recent = days[run - WINDOW:run]
            n1 = np.sum([d[0] for d in before], axis=0)
            x1 = np.sum([d[1] for d in before], axis=0)
            n2 = np.sum([d[0] for d in recent], axis=0)
            x2 = np.sum([d[1] for d in recent], axis=0)
            if min(n1.sum(), n2.sum()) < cfg.disagree_min_rows:
                continue
            t = disagreement_from_counts(x1, n1, x2, n2, cfg)
            now = {"driftloop": bool(t.low > 0 and t.rise >= cfg.disagree_rise),
                   "pooled_z": _pooled_z(x1, n1, x2, n2, 0.01)}
            looks += 1
            for k, v in now.items():
                runs_fired[k] += v
                fired[k] = fired[k] or v
        for k, v in fired.items():
            hits[k] += v
    return {"reps": reps, "per_day": per_day, "scenario": scenario,
            **{f"p_{k}": hits[k] / reps for k in hits},
            **{f"per_run_{k}": runs_fired[k] / max(looks, 1) for k in runs_fired}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="apple only, 2 seeds, no one-export arm, 200 replications")
    parser.add_argument("--data", default="data", help="folder of the data sets")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds (default 5; --quick 2)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (2 if args.quick else 5)
    reps = 200 if args.quick else 500
    topics = ("apple",) if args.quick else ("apple", "coachella")
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load = os.getloadavg()
    tweets = load_tweets(fetch("tweets", Path(args.data))).rename(columns={"sentiment": "label"})
    tweets = tweets.loc[tweets["label"].isin(TWEET_LABELS), ["text", "label", "topic"]]

    rows = []
    for topic in topics:
        per_seed = [active_learning(tweets, topic, s, once=not args.quick)
                    for s in range(seeds)]
        base = _interval([r["champion"][0] for r in per_seed])
        for k in BUDGETS:
            row = {"topic": topic, "labels": k, "champion": base[0]}
            for how in ("queue", "queue_once", "random"):
                m, lo, hi = _interval([r[how][k] for r in per_seed])
                row.update({how: m, f"{how}_lo": lo, f"{how}_hi": hi})
            d = _interval([r["queue"][k] - r["random"][k] for r in per_seed])
            row.update({"gain": d[0], "gain_lo": d[1], "gain_hi": d[2], "seeds": seeds})
            rows.append(row)
            print(f"{topic:9s} k={k:5d} champion {base[0]:.3f}  queue {row['queue']:.3f} "
                  f"once {row['queue_once']:.3f} random {row['random']:.3f}  "
                  f"gain {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]", flush=True)
    sims = []
    for per_day in (100, 300, 1000):
        for scenario in ("stationary", "mix", "rise+0.05", "rise+0.1"):
            r = disagreement_sim(reps, per_day, scenario, seed=per_day)
            sims.append(r)
            print(f"L={per_day:5d} {scenario:11s} driftloop {r['p_driftloop']:.3f} "
                  f"pooled z {r['p_pooled_z']:.3f}", flush=True)
    load_after = os.getloadavg()
    seconds = time.time() - started
    _write(rows, sims, suffix, load, load_after, seconds, seeds, reps)
    return 0


def _write(rows, sims, suffix, load, load_after, seconds, seeds, reps) -> None:
    with (RESULTS / f"active_learning{suffix}.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with (RESULTS / f"active_learning_disagreement{suffix}.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(sims[0]))
        w.writeheader()
        w.writerows(sims)

    def ci(r, how):
        if not math.isfinite(r[how]):
            return "n/a"
        return f"{r[how]:.3f} [{r[how + '_lo']:.3f}, {r[how + '_hi']:.3f}]"

    lines = [f"# Active learning and the disagreement rule{' (quick)' if suffix else ''}", "",
             f"{machine_info()}; load average {load[0]:.2f} / {load[1]:.2f} before, "
             f"{load_after[0]:.2f} after (shared cores: taken under load); {seconds:.0f} s; "
             f"{seeds} seeds; {reps} replications per cell.", "",
             "## Accuracy of the retrained model on the new topic's test tweets", "",
             "| topic | labels | airline champion | review queue (rounds 100/100/100/200/500) "
             "| queue, one export | random | queue - random |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['topic']} | {r['labels']} | {r['champion']:.3f} | "
                     f"{ci(r, 'queue')} | {ci(r, 'queue_once')} | {ci(r, 'random')} | "
                     f"{r['gain']:+.3f} [{r['gain_lo']:+.3f}, {r['gain_hi']:+.3f}] |")
    lines += ["", "## Disagreement rule: P(fired) over one champion's 30 daily runs", "",
              "Null scenarios (stationary, class mix moves): any false alarm in 30 runs; "
              "rises: fired within 5 runs of the change (day 15).", "",
              "| labels/day | scenario | driftloop (stratified, anytime-valid) | "
              "pooled z-test at 1 % | per-run rate driftloop / pooled |",
              "|---|---|---|---|---|"]
    for s in sims:
        lines.append(f"| {s['per_day']} | {s['scenario']} | {s['p_driftloop']:.3f} | "
                     f"{s['p_pooled_z']:.3f} | {s['per_run_driftloop']:.4f} / "
                     f"{s['per_run_pooled_z']:.4f} |")
    (RESULTS / f"active_learning{suffix}.md").write_text("\n".join(lines) + "\n")
    _plot(rows, sims, suffix)
    print("\n".join(lines))


def _plot(rows, sims, suffix) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    topics = sorted({r["topic"] for r in rows})
    fig, axes = plt.subplots(1, len(topics) + 1, figsize=(5 * (len(topics) + 1), 4.2))
    for ax, topic in zip(axes[:-1], topics, strict=True):
        sub = [r for r in rows if r["topic"] == topic]
        ks = [r["labels"] for r in sub]
        for how, style in (("queue", "o-"), ("queue_once", "s--"), ("random", "^:")):
            m = np.array([r[how] for r in sub])
            if not np.isfinite(m).any():
                continue
            lo = np.array([r[f"{how}_lo"] for r in sub])
            hi = np.array([r[f"{how}_hi"] for r in sub])
            ax.plot(ks, m, style, label=how.replace("_", ", "))
            ax.fill_between(ks, lo, hi, alpha=0.15)
        ax.axhline(sub[0]["champion"], color="grey", lw=1, label="airline champion")
        ax.set_xscale("log")
        ax.set_xlabel("labels of the new topic")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"airline -> {topic}")
        ax.legend(fontsize=8)
    ax = axes[-1]
    names = [f"{s['scenario']}\nL={s['per_day']}" for s in sims]
    x = np.arange(len(sims))
    ax.bar(x - 0.2, [s["p_driftloop"] for s in sims], 0.4, label="driftloop")
    ax.bar(x + 0.2, [s["p_pooled_z"] for s in sims], 0.4, label="pooled z-test 1 %")
    ax.set_xticks(x, names, fontsize=6, rotation=90)
    ax.set_ylabel("P(fired)")
    ax.set_title("disagreement rule (30 daily runs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"active_learning{suffix}.png", dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
