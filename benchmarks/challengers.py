"""One fixed model vs candidates + Optuna tuning, on four drifting streams (issue 14).

Streams: the tweets topic stream (airline → apple → coachella → driverless, three-class
sentiment, text), Elec2 (real electricity prices, numeric), and two seeded synthetic
streams from ``river.datasets.synth`` with an abrupt concept change at a random day (SEA,
3 numeric features with 10 % label noise; Agrawal, 6 numeric + 3 categorical features).
Each stream is cut into days; the first champion is the fixed model on the seed rows.

At each retrain point ``d`` both arms train on the seed rows plus every day before ``d``
(the most recent ``--max-rows``) and are judged on day ``d`` itself, rows neither saw
(the future, as in production):

* fixed: today's model (:func:`driftloop.models.train.build_pipeline`), one fit;
* tuned: every candidate of the model kind searched by :func:`tune_candidate` (seeded TPE,
  median pruning, 3-fold CV of the training rows only) at ``--trials`` trials and
  ``--seconds`` seconds per candidate, the best refit on every training row.

Reported per stream: held-out accuracy and macro-F1 of each arm's challenger (mean over
the retrain points), the fit time (tuned: the whole search + refit, in this process one
candidate after another; ``parallel`` = the slowest candidate + refit, what one pod per
candidate costs on a cluster), and how often the project's gate
(:func:`driftloop.decide.gate.evaluate_challenger`, default GateConfig) promotes each
arm's challenger over that arm's current champion on the same held-out day. The issue's
goal: a higher held-out score than the fixed model on >= 3 of 4 streams at <= 3x its fit
time on 2 cores.

    .venv/bin/python benchmarks/challengers.py            # 20 trials / 60 s per candidate
    .venv/bin/python benchmarks/challengers.py --quick    # 4 trials / 8 s, one retrain point

Writes benchmarks/results/challengers{,_quick}.{md,csv,png}. Figures are taken on a shared
2-core machine; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_info

from driftloop.config import GateConfig, TrainConfig, TuningConfig
from driftloop.data.schema import Schema, schema_from_dict
from driftloop.decide.gate import evaluate_challenger
from driftloop.demo.scenarios import Scenario, elec2_scenario, tweets_scenario
from driftloop.models.candidates import build_candidate, candidates_for
from driftloop.models.metrics import compute_metrics
from driftloop.models.train import build_pipeline, feature_frame, predict_frame
from driftloop.models.tuning import select_winner, tune_candidate
from driftloop.threads import thread_limits

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[1] / "data"


def _synthetic(name: str, seed: int, days: int, rows_per_day: int, seed_rows: int) -> Scenario:
    """A river stream with an abrupt concept change at a random day (never the first two)."""
    from river.datasets import synth

    rng = np.random.default_rng(seed)
    change = int(rng.integers(2, days))
    before_n = seed_rows + change * rows_per_day
    after_n = (days - change) * rows_per_day
    gens: tuple[Any, Any]
    if name == "sea":
        gens = (synth.SEA(variant=0, noise=0.1, seed=seed), synth.SEA(variant=3, noise=0.1,
                                                                      seed=seed + 1))
        columns = [{"name": f"x{i}", "kind": "numeric"} for i in range(3)]
    else:
        gens = (synth.Agrawal(classification_function=0, perturbation=0.05, seed=seed),
                synth.Agrawal(classification_function=4, perturbation=0.05, seed=seed + 1))
        cats = {"elevel", "car", "zipcode"}
        columns = [{"name": c, "kind": "categorical" if c in cats else "numeric"}
                   for c in ("salary", "commission", "age", "elevel", "car", "zipcode",
                             "hvalue", "hyears", "loan")]
    rows = [{**{str(k): v for k, v in x.items()}, "label": str(int(y))}
            for x, y in itertools.chain(itertools.islice(gens[0], before_n),
                                        itertools.islice(gens[1], after_n))]
    frame = pd.DataFrame(rows)
    frame.columns = [c if c == "label" else str(c) for c in frame.columns]
    if name == "sea":
        frame = frame.rename(columns={str(i): f"x{i}" for i in range(3)})
    for c in columns:
        if c["kind"] == "categorical":
            frame[c["name"]] = frame[c["name"]].astype(str)
    frame.insert(0, "id", [f"{name}{i}" for i in range(len(frame))])
    schema = schema_from_dict({"name": name, "labels": ["0", "1"], "columns": columns},
                              source=f"{name} stream")
    day_frames = [frame.iloc[seed_rows + d * rows_per_day:seed_rows + (d + 1) * rows_per_day]
                  for d in range(days)]
    regimes = ["before" if d < change else "after" for d in range(days)]
    return Scenario(name, schema, frame.iloc[:seed_rows], day_frames, regimes, [change],
                    f"river {name} (seed {seed}), change on day {change}")


def streams(quick: bool) -> list[Scenario]:
    """The four streams (smaller days with --quick)."""
    per_day = 500 if quick else 1000
    return [tweets_scenario(DATA, rows_per_day=per_day, seed_size=1500 if quick else 3000),
            elec2_scenario(DATA, days=11, rows_per_day=672),
            _synthetic("sea", 7, 8, per_day, 2000),
            _synthetic("agrawal", 11, 8, per_day, 2000)]


@dataclass
class Arm:
    """One arm's challenger at one retrain point."""

    accuracy: float
    f1_macro: float
    fit_seconds: float
    parallel_seconds: float
    promoted: bool
    winner: str


def _score(model: object, rows: pd.DataFrame, schema: Schema) -> dict[str, float]:
    pred, proba = predict_frame(model, rows, schema)
    labels = list(schema.labels or sorted(rows["label"].unique()))
    return compute_metrics(rows["label"].astype(str), pred, proba,
                           [str(c) for c in model.classes_], labels=labels)  # type: ignore[attr-defined]


def _gate(challenger: object, champion: object, rows: pd.DataFrame, schema: Schema) -> bool:
    verdict = evaluate_challenger(challenger, champion, rows, schema, GateConfig(),
                                  challenger_version="challenger", champion_version="champion",
                                  latency_rows=10, latency_repeats=1)
    return verdict.decision == "promote"


def run_stream(sc: Scenario, points: list[int], tuning: TuningConfig, max_rows: int,
               config: TrainConfig) -> tuple[list[Arm], list[Arm]]:
    """Both arms at each retrain point of ``sc``: ``(fixed, tuned)``."""
    schema = sc.schema

    def fit_fixed(rows: pd.DataFrame) -> object:
        return build_pipeline(schema, config).fit(feature_frame(rows, schema),
                                                  rows["label"].astype(str))

    champions = {"fixed": fit_fixed(sc.seed_rows)}
    champions["tuned"] = champions["fixed"]
    fixed_arms, tuned_arms = [], []
    for d in points:
        train = pd.concat([sc.seed_rows, *sc.days[:d]], ignore_index=True).tail(max_rows)
        held = sc.days[d]
        start = time.perf_counter()
        fixed = fit_fixed(train)
        fixed_s = time.perf_counter() - start
        m = _score(fixed, held, schema)
        fixed_arms.append(Arm(m["accuracy"], m["f1_macro"], fixed_s, fixed_s,
                              _gate(fixed, champions["fixed"], held, schema), "default"))
        start = time.perf_counter()
        results = [tune_candidate(train, schema, config, tuning, name)
                   for name in candidates_for(schema, tuning)]
        name, params, _ = select_winner(results)
        refit_start = time.perf_counter()
        tuned = build_candidate(schema, config, name, params).fit(
            feature_frame(train, schema), train["label"].astype(str))
        refit = time.perf_counter() - refit_start
        tuned_s = time.perf_counter() - start
        m = _score(tuned, held, schema)
        tuned_arms.append(Arm(m["accuracy"], m["f1_macro"], tuned_s,
                              max(r.seconds for r in results) + refit,
                              _gate(tuned, champions["tuned"], held, schema), name))
        if fixed_arms[-1].promoted:
            champions["fixed"] = fixed
        if tuned_arms[-1].promoted:
            champions["tuned"] = tuned
        print(f"  {sc.name} day {d}: fixed f1 {fixed_arms[-1].f1_macro:.3f} "
              f"({fixed_s:.1f} s) | tuned {name} f1 {m['f1_macro']:.3f} ({tuned_s:.1f} s)",
              flush=True)
    return fixed_arms, tuned_arms


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["stream"] for r in rows]
    x = np.arange(len(names))
    ax1.bar(x - 0.2, [r["fixed_f1"] for r in rows], 0.4, label="fixed model")
    ax1.bar(x + 0.2, [r["tuned_f1"] for r in rows], 0.4, label="candidates + tuning")
    ax1.set_xticks(x, names)
    ax1.set_ylabel("held-out macro-F1 (next day)")
    ax1.legend()
    ax2.bar(x - 0.2, [r["tuned_fit_ratio"] for r in rows], 0.4, label="sequential")
    ax2.bar(x + 0.2, [r["parallel_fit_ratio"] for r in rows], 0.4, label="one pod per candidate")
    ax2.axhline(3.0, color="red", linestyle="--", label="3x goal")
    ax2.set_xticks(x, names)
    ax2.set_ylabel("fit time / fixed model's")
    ax2.set_yscale("log")
    ax2.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the table, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets, one retrain point")
    parser.add_argument("--trials", type=int, default=None, help="trials per candidate")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per candidate")
    parser.add_argument("--points", type=int, default=None, help="retrain points per stream")
    parser.add_argument("--max-rows", type=int, default=5000, help="training rows kept")
    args = parser.parse_args(argv)
    trials = args.trials or (4 if args.quick else 20)
    seconds = args.seconds or (8.0 if args.quick else 60.0)
    n_points = args.points or (1 if args.quick else 3)
    tuning = TuningConfig(enabled=True, n_trials=trials, tuning_seconds=seconds)
    config = TrainConfig()
    load_start = os.getloadavg()
    rows: list[dict] = []
    started = time.perf_counter()
    with thread_limits("train"):
        for sc in streams(args.quick):
            # retrain points spread over the stream, the first after the first change
            first = max(1, sc.change_days[0] if sc.change_days else 1)
            points = sorted({int(p) for p in np.linspace(first, len(sc.days) - 1, n_points)})
            fixed, tuned = run_stream(sc, points, tuning, args.max_rows, config)
            f_fit = float(np.mean([a.fit_seconds for a in fixed]))
            rows.append({
                "stream": sc.name, "points": len(points),
                "fixed_acc": float(np.mean([a.accuracy for a in fixed])),
                "tuned_acc": float(np.mean([a.accuracy for a in tuned])),
                "fixed_f1": float(np.mean([a.f1_macro for a in fixed])),
                "tuned_f1": float(np.mean([a.f1_macro for a in tuned])),
                "fixed_fit_s": f_fit,
                "tuned_fit_s": float(np.mean([a.fit_seconds for a in tuned])),
                "tuned_fit_ratio": float(np.mean([a.fit_seconds for a in tuned])) / f_fit,
                "parallel_fit_ratio": float(np.mean([a.parallel_seconds for a in tuned])) / f_fit,
                "fixed_promoted": sum(a.promoted for a in fixed),
                "tuned_promoted": sum(a.promoted for a in tuned),
                "winners": ",".join(a.winner for a in tuned),
            })
    load_end = os.getloadavg()
    wins = sum(r["tuned_f1"] > r["fixed_f1"] for r in rows)
    head = ("| stream | points | fixed acc | tuned acc | fixed F1 | tuned F1 | fixed fit s | "
            "tuned fit s | ratio | ratio 1 pod/cand | promoted fixed | promoted tuned | winners |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        lines.append(
            f"| {r['stream']} | {r['points']} | {r['fixed_acc']:.3f} | {r['tuned_acc']:.3f} | "
            f"{r['fixed_f1']:.3f} | {r['tuned_f1']:.3f} | {r['fixed_fit_s']:.2f} | "
            f"{r['tuned_fit_s']:.1f} | {r['tuned_fit_ratio']:.1f}x | "
            f"{r['parallel_fit_ratio']:.1f}x | {r['fixed_promoted']}/{r['points']} | "
            f"{r['tuned_promoted']}/{r['points']} | {r['winners']} |")
    took = time.perf_counter() - started
    summary = (f"tuned macro-F1 higher on {wins} of {len(rows)} streams (goal >= 3); budget "
               f"{trials} trials / {seconds:g} s per candidate; {took:.0f} s in all")
    machine = machine_info(f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at "
                           "end (taken under load: six colleagues share the two cores)")
    text = "\n".join([*lines, "", summary, "", machine])
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / ("challengers_quick" if args.quick else "challengers")
    stem.with_suffix(".md").write_text(text + "\n")
    with stem.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, stem.with_suffix(".png"), summary + "\n" + machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
