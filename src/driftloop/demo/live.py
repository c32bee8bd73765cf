"""The real-data demo: a served model, simulated users, and the pipeline once per day.

1. The scenario's first labelled rows go into the store as the reference set and a first
   pipeline run (the day before the first day) trains the first champion and deploys it
   on the local InferenceService at 100 %.
2. The local gateway (the stand-in for Knative's traffic split) serves it over HTTP on
   127.0.0.1 with the real predictor, and logs every request/response pair to the payload
   sink as KServe's logger does.
3. Each simulated day the users send that day's rows through the gateway; a share of the
   predictions gets its true label as feedback after a delay, posted to the sink.
4. At the end of each day the continuous-training pipeline runs (through ``kfp.local`` by
   default): ingest, canary analysis, drift, decision, train, evaluate, promote. A promoted
   challenger starts as a 10 % canary and the gateway splits the next day's traffic.
5. The first champion, never retrained, scores the same served traffic again (the
   counterfactual: what continuous training bought, :func:`counterfactual_of`); the
   timeline table and that line are printed and ``report.html`` written with the plots
   and each version's feature importance.

With ``ab="static"`` (``driftloop demo --ab static``) the seeds' experiment runs live: after
the seed run an A/B test (:data:`AB_TEST_ID`) serves a frozen copy of the first champion to
a share of the simulated users (sticky by user id, through the gateway's split) beside the
continuously retrained champion, and after the last day the A/B analysis (the same
``ab-analysis`` steps, in process) reports the difference in live accuracy with its interval.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from driftloop.config import Config
from driftloop.data.storage import LocalStore
from driftloop.decide.ab import ABAnalysis
from driftloop.decide.ab_assign import ABTest, Variant
from driftloop.demo.report import (
    DayRow,
    attach_counterfactual,
    print_timeline,
    short,
    write_report,
)
from driftloop.demo.scenarios import Scenario, load_scenario
from driftloop.demo.traffic import (
    Counterfactual,
    DayTraffic,
    SimClock,
    Traffic,
    TrafficConfig,
    live_accuracy,
    static_counterfactual,
    static_predictions,
)
from driftloop.errors import DriftloopError
from driftloop.models.registry import Registry

FIRST_DAY = dt.date(2026, 3, 2)
NAMESPACE = "local"
#: The A/B test of ``--ab static``: the first champion, frozen, against the loop's champion.
AB_TEST_ID = "static-vs-retrained"
#: Simulated users when an A/B test runs and the traffic names none.
AB_USERS = 500
AB_MODES = ("static",)


def demo_config(base: Config | None = None) -> Config:
    """The demo's thresholds: the defaults, with a canary judged on a day's labels.

    A 10 % canary sees about 100 of a day's 1,000 requests, 30 of them labelled and about
    20 of those by the end of the day: the default ``min_labelled`` (100) would hold it for
    days. With 15, the accuracy interval decides (it stays inconclusive, so the canary
    holds, while the difference is small for the number of labels). The canary is also
    judged at noon (its own cadence), so ``max_holds`` 4 is two days of holds. Label volume alone
    retrains after five days of feedback, so drift and performance are what trigger within a
    topic change.
    """
    config = base or Config()
    return replace(config, canary=replace(config.canary, min_labelled=15, max_holds=4),
                   trigger=replace(config.trigger, min_new_labels=1500))


@dataclass
class DemoResult:
    """What the demo did.

    Attributes:
        scenario: The scenario's name.
        rows: One timeline row per pipeline run (the first is the seed run).
        served: Every predicted row (id, day, model version, prediction, label, labelled).
        report: The HTML report.
        seconds: Wall time.
        log_failures: Payload events the gateway could not log (0 expected).
        counterfactual: What was served against the first champion, never retrained, on
            the same rows (``None``: no champion was deployed).
        ab: The final analysis of the ``--ab static`` test (``None``: no test ran).
    """

    scenario: str
    rows: list[DayRow]
    served: pd.DataFrame
    report: Path
    seconds: float
    log_failures: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    counterfactual: Counterfactual | None = None
    ab: ABAnalysis | None = None


class Progress:
    """A one-line progress bar on a terminal; plain lines otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = self.stream.isatty()

    def show(self, done: int, text: str) -> None:
        """Draw the bar at ``done`` of ``total`` with ``text`` after it."""
        filled = round(self.width * done / max(1, self.total))
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {done}/{self.total} days  {text}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the bar before other output (terminal only)."""
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def _write_seed(store: LocalStore, scenario: Scenario, first_day: dt.date) -> Path:
    """Write the schema and the champion's labelled reference rows; return the schema path."""
    schema_path = Path(store.root) / "schema.json"
    schema_path.write_text(json.dumps(scenario.schema.to_dict(), indent=2) + "\n")
    seed = scenario.seed_rows.copy()
    t0 = pd.Timestamp(first_day - dt.timedelta(days=8), tz="UTC")
    seed.insert(1, "timestamp", [t0 + pd.Timedelta(seconds=60 * i) for i in range(len(seed))])
    store.write_bytes(f"reference/{scenario.name}/seed.parquet", seed.to_parquet(index=False))
    return schema_path


class _Runner:
    """Runs the pipeline for one logical day, through kfp.local or in this process."""

    def __init__(self, store: LocalStore, schema_path: Path, scenario: Scenario,
                 config: Config, *, in_process: bool, lookback_days: int) -> None:
        self.store = store
        self.schema_path = schema_path
        self.scenario = scenario
        self.config = config
        self.in_process = in_process
        self.lookback_days = lookback_days

    def run(self, day: dt.date, label: str) -> Any:
        from driftloop.steps.records import read_run

        model = self.scenario.name
        if self.in_process:
            from driftloop.rollout.local import LocalRolloutBackend
            from driftloop.steps.loop import run_loop

            backend = LocalRolloutBackend(Path(self.store.root) / "rollout", model, NAMESPACE)
            now = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
            run_id = f"{label}-{day.isoformat()}"
            run_loop(self.store, self.scenario.schema, model, now=now, run_id=run_id,
                     config=self.config, lookback_days=self.lookback_days, backend=backend)
        else:
            from driftloop.kfp.local import run_local

            run = run_local(str(self.store.root), str(self.schema_path), model,
                            run_date=day.isoformat(), lookback_days=self.lookback_days,
                            config=self.config, namespace=NAMESPACE)
            if not run.ok or run.run_id is None:
                raise DriftloopError(f"demo {label} ({day}): pipeline run failed: {run.error}")
            run_id = run.run_id
        return read_run(self.store, run_id)

    def canary(self, noon: dt.datetime, label: str) -> str:
        """The canary's own analysis at ``noon`` (the ``canary-analysis`` pipeline).

        Returns ``""`` when no canary is in flight, else the step (``"advance …x 50%"``).
        """
        from driftloop.rollout.progressive import recorded_step

        model = self.scenario.name
        registry = Registry(self.store, model)
        if registry.aliases().canary is None:
            return ""
        run_id = f"{label}-{noon:%Y-%m-%dT%H%M}"
        if self.in_process:
            from driftloop.rollout.local import LocalRolloutBackend
            from driftloop.steps.loop import run_canary_analysis

            backend = LocalRolloutBackend(Path(self.store.root) / "rollout", model, NAMESPACE)
            step = run_canary_analysis(self.store, self.scenario.schema, model, now=noon,
                                       run_id=run_id, backend=backend, config=self.config,
                                       lookback_days=self.lookback_days)
        else:
            from driftloop.kfp.local import run_local

            run = run_local(str(self.store.root), str(self.schema_path), model,
                            run_date=noon.isoformat(), lookback_days=self.lookback_days,
                            config=self.config, namespace=NAMESPACE, canary_only=True)
            if not run.ok or run.run_id is None:
                raise DriftloopError(f"demo {label} ({noon}): canary analysis failed: "
                                     f"{run.error}")
            step = recorded_step(registry, run.run_id)
        if step is None:
            return ""
        share = step.to_percent
        return f"{step.action} {short(step.version)} {share}%"


def run_live_demo(
    out: Path,
    scenario: str = "tweets",
    *,
    data_dir: Path = Path("data"),
    in_process: bool = False,
    traffic: TrafficConfig | None = None,
    config: Config | None = None,
    days: int | None = None,
    lookback_days: int = 3,
    seed: int = 0,
    rows_per_day: int | None = None,
    stream: TextIO | None = None,
    ab: str = "",
    ab_share: float = 0.2,
) -> DemoResult:
    """Run the real-data demo of ``scenario`` under ``out`` (replaced if it exists).

    Args:
        out: Output folder: ``store/`` (the data store, registry, runs, rollout state),
            ``served.csv`` and ``report.html``.
        scenario: ``tweets`` or ``elec2``.
        data_dir: Folder of the verified data sets (fetched there if missing).
        in_process: Run each day's steps in this process instead of through kfp.local.
        traffic: Feedback share and delay, request batch size (default: 30 %, 6 h, 5).
        config: Thresholds (default: :func:`demo_config`).
        days: Run only the first ``days`` simulated days.
        lookback_days: Days of labelled records a retrain reads.
        seed: Seed of the scenario's shuffle and the users' draws.
        rows_per_day: Requests per day (default: the scenario's).
        stream: Where the step lines and the timeline go (default stdout).
        ab: ``"static"``: run the A/B test of the first champion, frozen, against the
            retrained champion (``""``: none).
        ab_share: The static variant's share of the users (a hold-out: the loop keeps the
            rest, and its canaries need it; at 0.5 the seed-0 tweets run never completed
            a canary).

    Raises:
        DriftloopError: A pipeline run failed, or the gateway or sink answered an error,
            or ``ab``/``ab_share`` is not valid.
    """
    from driftloop.rollout.local import LocalGateway, LocalRolloutBackend
    from driftloop.serving.server import start_app
    from driftloop.serving.sink import PayloadSink, create_app

    started = time.perf_counter()
    # kserve 0.20 answers with ORJSONResponse, which FastAPI deprecates on every request.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    printer = stream or sys.stdout
    if ab not in ("", *AB_MODES):
        raise DriftloopError(f"ab: {ab!r} is not one of {', '.join(AB_MODES)}")
    if ab and not 0.0 < ab_share < 1.0:
        raise DriftloopError(f"ab_share: must be within (0, 1) (got {ab_share})")
    data = load_scenario(scenario, data_dir, seed=seed, rows_per_day=rows_per_day)
    plan = data.days[:days] if days is not None else data.days
    traffic = traffic or TrafficConfig(seed=seed)
    if ab and not traffic.users:
        traffic = replace(traffic, users=AB_USERS)
    config = config or demo_config()
    if out.exists():
        shutil.rmtree(out)
    store = LocalStore(out / "store", create=True)
    schema_path = _write_seed(store, data, FIRST_DAY)
    runner = _Runner(store, schema_path, data, config, in_process=in_process,
                     lookback_days=lookback_days)
    how = "in this process" if in_process else "through kfp.local"
    print(f"scenario {data.name}: {data.description}\n"
          f"{len(data.seed_rows)} labelled rows train the first champion; {len(plan)} days of "
          f"{len(plan[0])} requests, {traffic.feedback_share:.0%} get feedback after "
          f"~{traffic.feedback_delay_hours:g} h; true changes on days "
          f"{', '.join(str(d) for d in data.change_days if d < len(plan)) or '-'}; "
          f"pipeline runs {how}", file=printer, flush=True)
    if ab:
        print(f"A/B test {AB_TEST_ID}: a frozen copy of the first champion serves "
              f"{ab_share:.0%} of {traffic.users} simulated users (sticky by user id) beside "
              "the continuously retrained champion", file=printer, flush=True)
    print(file=printer, flush=True)

    progress = Progress(len(plan))
    progress.show(0, "training the first champion")
    seed_day = FIRST_DAY - dt.timedelta(days=1)
    record = runner.run(seed_day, "seed")
    progress.clear()
    _print_run(printer, "seed run", seed_day, record)
    rows = [DayRow.from_run(-1, seed_day, "seed", record, None, pd.DataFrame())]
    backend = LocalRolloutBackend(out / "store" / "rollout", data.name, NAMESPACE)
    ab_test = (_start_static_ab(store, data.name, ab_share, backend, FIRST_DAY)
               if ab else None)

    clock = SimClock(dt.datetime.combine(FIRST_DAY, dt.time(0), tzinfo=dt.UTC))
    sink = PayloadSink(store, clock=clock, labels=[str(x) for x in data.schema.labels or ()])
    sink_server = start_app(create_app(sink))
    served: list[dict[str, Any]] = []
    timings = {"traffic": 0.0, "pipeline": 0.0}
    try:
        with LocalGateway(backend, model_name=data.name, cache_dir=out / "gateway-cache",
                          logger_url=f"{sink_server.url}/", clock=clock) as gateway, \
                Traffic(gateway.url, sink_server.url, data.name, data.features, clock,
                        traffic) as users:
            for d, frame in enumerate(plan):
                day = FIRST_DAY + dt.timedelta(days=d)
                progress.show(d, f"day {d} ({data.regimes[d]}): serving {len(frame)} requests")
                t0 = time.perf_counter()
                midday: list[str] = []

                def at_noon(noon: dt.datetime, d: int = d, midday: list[str] = midday) -> None:
                    progress.show(d, f"day {d}: the canary's own analysis at 12:00")
                    midday.append(runner.canary(noon, f"noon-{d:02d}"))

                day_traffic: DayTraffic = users.replay_day(d, day, frame, midday=at_noon)
                t1 = time.perf_counter()
                progress.show(d, f"day {d} ({data.regimes[d]}): running the pipeline")
                record = runner.run(day, f"day-{d:02d}")
                t2 = time.perf_counter()
                timings["traffic"] += t1 - t0
                timings["pipeline"] += t2 - t1
                served.extend(day_traffic.served)
                progress.clear()
                _print_run(printer, f"day {d} [{data.regimes[d]}]", day, record,
                           f"{day_traffic.requests} requests, {day_traffic.rows} rows, "
                           f"{day_traffic.feedback_posted} labels posted "
                           f"(traffic {t1 - t0:.1f}s, pipeline {t2 - t1:.1f}s)")
                accuracy = live_accuracy(pd.DataFrame(day_traffic.served))
                rows.append(DayRow.from_run(d, day, data.regimes[d], record, day_traffic,
                                            accuracy))
                rows[-1].midday = midday[0] if midday else ""
                if rows[-1].midday.endswith(" 100%") and rows[-1].champion == "-":
                    # completed at noon: the day's champion is the former canary
                    rows[-1].champion = Registry(store, data.name).champion() or "-"
            progress.show(len(plan), "done")
            progress.clear()
            log_failures = gateway.log_failures
    finally:
        sink_server.stop()
        sink.close()
    served_frame = pd.DataFrame(served)
    served_frame.to_csv(out / "served.csv", index=False)
    registry = Registry(store, data.name)
    ab_analysis = None
    if ab_test is not None:
        end = dt.datetime.combine(FIRST_DAY + dt.timedelta(days=len(plan)), dt.time(),
                                  tzinfo=dt.UTC)
        ab_analysis = _final_ab(store, data, ab_test, end, backend, config, len(plan))
    counterfactual = counterfactual_of(registry, data, plan, served_frame, rows, seed=seed)
    if counterfactual is not None:
        attach_counterfactual(rows, counterfactual)
    print_timeline(rows, printer)
    if counterfactual is not None:
        print(f"\n{counterfactual.line()}", file=printer, flush=True)
    if ab_test is not None:
        print(f"\n{ab_line(ab_test, ab_analysis)}", file=printer, flush=True)
    importances = {v: registry.metadata(v).get("feature_importance") or {}
                   for v in registry.versions()}
    seconds = time.perf_counter() - started
    from driftloop.steps.ab import ab_history

    report = write_report(out / "report.html", data, rows, served_frame, seconds=seconds,
                          how=how, counterfactual=counterfactual, importances=importances,
                          ab_tests=ab_history(store, data.name))
    print(f"\nreport: {report}\nstore: {out / 'store'} (runs/, models/, rollout/); "
          f"served rows: {out / 'served.csv'}\n"
          f"wall time {seconds:.0f}s (traffic {timings['traffic']:.0f}s, pipeline "
          f"{timings['pipeline']:.0f}s)", file=printer, flush=True)
    return DemoResult(data.name, rows, served_frame, report, seconds, log_failures, timings,
                      counterfactual, ab_analysis)


def _start_static_ab(store: LocalStore, model: str, share: float, backend: Any,
                     first_day: dt.date) -> ABTest:
    """Start ``--ab static``: the champion the seed run deployed, frozen, vs ``champion``."""
    from driftloop.steps.ab import start_ab

    first = Registry(store, model).champion()
    if first is None:
        raise DriftloopError("demo --ab static: the seed run deployed no champion to freeze")
    test, _ = start_ab(store, model, [Variant("static", first, share),
                                      Variant("retrained", "champion", 1.0 - share)],
                       test_id=AB_TEST_ID, backend=backend,
                       now=dt.datetime.combine(first_day, dt.time(), tzinfo=dt.UTC))
    return test


def _final_ab(store: LocalStore, data: Scenario, test: ABTest, end: dt.datetime, backend: Any,
              config: Config, days: int) -> ABAnalysis | None:
    """The ``ab-analysis`` steps after the last day, over the whole test."""
    from driftloop.steps.loop import run_ab_analysis

    outcome = run_ab_analysis(store, data.schema, data.name, now=end, run_id="ab-final",
                              backend=backend, config=config, lookback_days=days + 1)
    return next((a for a in outcome.analyses if a.test_id == test.test_id), None)


def ab_line(test: ABTest, analysis: ABAnalysis | None) -> str:
    """The demo's closing A/B line: retrained minus static, its interval, the decision."""
    if analysis is None:
        return f"A/B test {test.test_id}: no analysis (the test was not running at the end)"
    stats = {s.name: s for s in analysis.variants}
    comp = next((c for c in analysis.comparisons if c.variant == "retrained"), None)
    users = sum(s.users for s in analysis.variants)
    unkeyed = sum(s.unkeyed for s in analysis.variants)
    counts = ", ".join(f"{n} {stats[n].labelled}" for n in ("static", "retrained") if n in stats)
    head = (f"A/B test {test.test_id} (live, sticky per user: {users} users, "
            f"{analysis.mixed_users} saw both variants, {unkeyed} unkeyed responses counted "
            f"apart): ")
    if comp is None or comp.diff is None or comp.ci_low is None or comp.ci_high is None:
        return head + f"not enough labelled responses to compare ({counts})"
    return head + (
        f"retrained - static = {100 * comp.diff:+.1f} points of live accuracy "
        f"({1 - comp.alpha:.0%} anytime-valid interval [{100 * comp.ci_low:+.1f}, "
        f"{100 * comp.ci_high:+.1f}], Mantel-Haenszel by day, per-user variance; labelled "
        f"keyed responses: {counts}); decision {analysis.decision}"
        + (f", winner {analysis.winner}" if analysis.winner else ""))


def first_champion(registry: Registry) -> str | None:
    """The first version the champion alias pointed at (the static model), or ``None``."""
    for change in registry.aliases().history:
        if change.alias == "champion" and change.to_version:
            return change.to_version
    return None


def promotions_after(registry: Registry, first: str) -> int:
    """Versions that became champion after ``first`` (each counted once)."""
    later = {change.to_version for change in registry.aliases().history
             if change.alias == "champion" and change.to_version}
    return len(later - {first})


def counterfactual_of(registry: Registry, scenario: Scenario, days: list[pd.DataFrame],
                      served: pd.DataFrame, rows: list[DayRow], *, seed: int = 0) -> (
    Counterfactual | None
):
    """What the first champion, frozen, would have scored on the labelled served rows.

    The static model is loaded from the registry (sha256-verified); the rows it trained
    on (its training set, kept as ``reference/<model>/<version>.parquet``) are left out,
    for it and for what was served alike.
    """
    first = first_champion(registry)
    if first is None:
        return None
    model = registry.load_model(first)
    key = f"reference/{scenario.name}/{first}.parquet"
    store = registry.store
    trained = (pd.read_parquet(io.BytesIO(store.read_bytes(key)), columns=["id"])["id"]
               if store.exists(key) else pd.Series(dtype=str))
    labelled = served.loc[served["labelled"].astype(bool), "id"] if len(served) else []
    static = static_predictions(model, scenario.schema, days, labelled)
    return static_counterfactual(
        served, static, first, trained_ids=trained,
        retrains=sum(1 for r in rows if r.day >= 0 and r.retrain),
        promotions=promotions_after(registry, first), seed=seed)


def _print_run(printer: TextIO, title: str, day: dt.date, record: Any, extra: str = "") -> None:
    print(f"== {title} {day}" + (f": {extra}" if extra else ""), file=printer)
    for line in record.lines():
        print(f"   {line}", file=printer)
    print(file=printer, flush=True)
