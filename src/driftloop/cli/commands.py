"""What each ``driftloop`` subcommand does: one ``cmd_*`` function per subcommand.

Each function takes the parsed arguments (:func:`driftloop.cli.parser.build_parser`),
calls into the package and writes its result as JSON to stdout or ``--output``
(:func:`_emit`); it returns the exit code. The package is imported inside each function,
so ``driftloop --help`` and a subcommand's own flag errors stay fast and do not need the
optional extras (kfp, the demo's data). It is its own module because it is the part of
the command that changes with the package (step functions, registry, rollout, KFP), while
the flags in :mod:`driftloop.cli.parser` are the command's stable surface.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from driftloop.data.storage import check_store_root
from driftloop.errors import DriftloopError


def _now(text: str | None) -> dt.datetime:
    from driftloop.clock import logical_time

    return logical_time(text or "", what="--now")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise DriftloopError(f"date {text!r}: expected YYYY-MM-DD") from None


def _emit(args: argparse.Namespace, result: Any) -> None:
    from driftloop.serde import dumps

    text = dumps(result) + "\n"
    if getattr(args, "output", None):
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)


def _config(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from driftloop.config import Config, config_from_dict

    config = Config()
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise DriftloopError(f"{path}: config file does not exist") from None
        except json.JSONDecodeError as exc:
            raise DriftloopError(f"{path}: not valid JSON ({exc.msg})") from None
        config = config_from_dict(raw, source=str(path))
    # run's --n-trials / --tuning-seconds: the pipeline's parameters (0 trials: no search)
    trials, seconds = getattr(args, "n_trials", None), getattr(args, "tuning_seconds", None)
    tuning = config.tuning
    if trials is not None:
        tuning = replace(tuning, enabled=trials > 0, n_trials=trials or tuning.n_trials)
    if seconds is not None:
        tuning = replace(tuning, tuning_seconds=seconds)
    return replace(config, tuning=tuning)


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    from driftloop.data.schema import load_schema
    from driftloop.data.storage import open_store

    check_store_root(args.store)
    return open_store(args.store), load_schema(args.schema)


def _registry(args: argparse.Namespace) -> Any:
    from driftloop.data.storage import open_store
    from driftloop.models.registry import Registry

    check_store_root(args.store)
    return Registry(open_store(args.store), args.model)


# --- subcommands ------------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> int:
    """Write the generated sample store."""
    from driftloop.demo.sample import write_sample_store

    check_store_root(args.out, create=True)
    info = write_sample_store(Path(args.out), days=args.days, drift_day=args.drift_day,
                              seed=args.seed)
    _emit(args, {"store": info.root, "schema": info.schema_path,
                 "first_day": info.first_day.isoformat(), "days": info.days})
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest a window of days and write records and quarantine as Parquet."""
    from driftloop.data.ingest import IngestError, IngestResult, ingest

    store, schema = _open(args)

    def write(result: IngestResult) -> None:
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            result.records.to_parquet(out / "records.parquet", index=False)
            result.quarantine.astype("string").to_parquet(out / "quarantine.parquet",
                                                          index=False)
            (out / "ingest.json").write_text(result.report.to_json() + "\n")

    try:
        result = ingest(store, schema, _date(args.start), _date(args.end))
    except IngestError as exc:
        if exc.result is not None:
            write(exc.result)  # the quarantine is what the user must read
        raise
    write(result)
    _emit(args, result.report)
    return 0


def cmd_drift(args: argparse.Namespace) -> int:
    """Compare a Parquet file of current records with the champion's reference."""
    from driftloop.steps.champion import load_champion
    from driftloop.steps.common import read_frame
    from driftloop.steps.drift import run_drift

    store, schema = _open(args)
    from driftloop.models.registry import Registry

    champion = load_champion(Registry(store, args.model))
    if champion is None:
        raise DriftloopError(f"model {args.model}: no champion to compare with (train first)")
    report = run_drift(champion, read_frame(args.current), schema, _config(args))
    if args.markdown and report is not None:
        sys.stdout.write(report.to_markdown())
        return 0
    _emit(args, report)
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    """Ingest, check drift and decide whether to retrain (nothing is trained)."""
    from driftloop.models.registry import Registry
    from driftloop.steps.champion import load_champion
    from driftloop.steps.decide import run_decide
    from driftloop.steps.drift import run_drift
    from driftloop.steps.ingest import run_ingest

    store, schema = _open(args)
    config, now = _config(args), _now(args.now)
    registry = Registry(store, args.model)
    window = run_ingest(store, schema, now=now, window_days=args.window_days,
                        lookback_days=args.lookback_days)
    champion = load_champion(registry)
    drift = run_drift(champion, window.current, schema, config)
    decision = run_decide(registry, champion, window, drift, schema, now=now, config=config,
                          force=args.force)
    _emit(args, decision)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train and register a challenger; write its evaluation set to --eval-out."""
    from driftloop.models.registry import Registry
    from driftloop.steps.champion import load_champion
    from driftloop.steps.ingest import run_ingest
    from driftloop.steps.train import run_train

    store, schema = _open(args)
    config, now = _config(args), _now(args.now)
    registry = Registry(store, args.model)
    window = run_ingest(store, schema, now=now, lookback_days=args.lookback_days)
    outcome = run_train(store, registry, load_champion(registry), window, schema, now=now,
                        config=config, model_name=args.model)
    if args.eval_out:
        outcome.eval_set.to_parquet(args.eval_out, index=False)
    _emit(args, {"version": outcome.version, "train_rows": outcome.train_rows,
                 "eval_rows": len(outcome.eval_set), "eval_source": outcome.eval_source,
                 "metadata": outcome.metadata})
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a registered challenger against the champion on an evaluation Parquet file."""
    from driftloop.models.registry import Registry
    from driftloop.steps.champion import load_champion
    from driftloop.steps.common import read_frame
    from driftloop.steps.evaluate import run_evaluate

    store, schema = _open(args)
    registry = Registry(store, args.model)
    verdict = run_evaluate(registry, load_champion(registry), args.challenger,
                           read_frame(args.eval), schema, _config(args))
    _emit(args, verdict)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the whole loop once in this process (or, with --local, through kfp.local)."""
    if args.local:
        return _run_local(args)
    from driftloop.notify import make_notifier
    from driftloop.steps.loop import run_loop
    from driftloop.threads import thread_limits

    store, schema = _open(args)
    config = _config(args)
    run_id = args.run_id or f"run-{uuid.uuid4().hex[:12]}"
    # the run's thread budget (config runtime.max_threads); steps inside only narrow it
    with thread_limits("run", config.runtime.max_threads):
        result = run_loop(store, schema, args.model, now=_now(args.now), run_id=run_id,
                          config=config, force=args.force, window_days=args.window_days,
                          lookback_days=args.lookback_days,
                          notifier=make_notifier(config.notify),
                          pushgateway_url=args.pushgateway_url)
    from driftloop.steps.records import read_run

    for line in read_run(store, run_id).lines():
        print(line, file=sys.stderr)
    from driftloop.models.registry import Registry

    # the registry's champion, also when this run promoted nothing
    _emit(args, {"run_id": run_id, "retrain": result.decision.retrain,
                 "verdict": result.verdict.decision if result.verdict else None,
                 "champion": Registry(store, args.model).aliases().champion})
    return 0


def _run_local(args: argparse.Namespace) -> int:
    """Run the KFP pipeline through kfp.local and print the decision chain."""
    try:
        from driftloop.kfp.local import print_chain, run_local
    except ImportError as exc:
        raise DriftloopError(f"run --local needs the kfp extra ({exc.name} is missing): "
                             "pip install -e '.[kfp]'") from None
    if args.run_id:
        raise DriftloopError("run --local: --run-id cannot be set; the run id is the KFP run "
                             "name")
    if args.now:
        _now(args.now)  # a malformed date fails here, before any task starts
    check_store_root(args.store)
    run = run_local(args.store, args.schema, args.model, run_date=args.now or "",
                    force_retrain=args.force, window_days=args.window_days,
                    lookback_days=args.lookback_days, config=_config(args),
                    pipeline_root=args.pipeline_root, pushgateway_url=args.pushgateway_url,
                    stream=sys.stderr if args.verbose else None)
    print_chain(run, sys.stderr)
    record = run.record
    _emit(args, {
        "run_id": run.run_id, "state": run.state, "seconds": round(run.seconds, 1),
        "tasks": run.tasks,
        "retrain": record.decision.retrain if record and record.decision else None,
        "verdict": record.verdict.decision if record and record.verdict else None,
        "champion": _champion_of(args.store, args.model),
    })
    return 0 if run.ok else 1


def _champion_of(store_uri: str, model: str) -> str | None:
    """The registry's champion (what serves), whatever a run decided."""
    from driftloop.data.storage import open_store
    from driftloop.models.registry import Registry

    return Registry(open_store(store_uri), model).aliases().champion


def cmd_compile(args: argparse.Namespace) -> int:
    """Write the component and pipeline YAML (and the component READMEs)."""
    try:
        from driftloop.kfp.compile import compile_all
    except ImportError as exc:
        raise DriftloopError(f"compile needs the kfp extra ({exc.name} is missing): "
                             "pip install -e '.[kfp]'") from None
    options = {} if args.gcs_secret is None else {"gcs_secret": args.gcs_secret}
    for path in compile_all(args.out_dir, **options):
        print(path)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Inspect the registry or move an alias by hand."""
    registry = _registry(args)
    if args.action == "list":
        _emit(args, {"model": args.model, "versions": registry.versions(),
                     "aliases": registry.aliases()})
    elif args.action == "show":
        _emit(args, registry.metadata(_need_version(args)))
    elif args.action == "verify":
        registry.load_model(_need_version(args))
        _emit(args, {"version": args.version, "sha256": "verified"})
    elif args.action == "promote":
        _emit(args, registry.promote(_need_version(args), reason=args.reason or "manual",
                                     run_id="cli"))
    return 0


def _rollout(args: argparse.Namespace) -> tuple[Any, Any]:
    """The registry and the rollout backend named by the rollout flags."""
    from driftloop.rollout import make_backend

    # The store is checked before the local backend starts: that creates its state folder,
    # by default inside the store, so a missing store would be created. A gs:// store is
    # opened last: the local backend's refusal of it needs no credentials.
    check_store_root(args.store)
    backend = make_backend(args.backend, name=args.isvc or args.model,
                           namespace=args.namespace, state_dir=args.state or None,
                           store_uri=args.store, kube_host=args.kube_host,
                           ready_timeout=args.ready_timeout)
    return _registry(args), backend


def _manual_run_id(action: str) -> str:
    return f"manual-{action}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def cmd_status(args: argparse.Namespace) -> int:
    """Show the aliases, the InferenceService's canary and traffic, and the last step."""
    from driftloop.rollout.progressive import rollout_status

    registry, backend = _rollout(args)
    with backend:
        _emit(args, rollout_status(registry, backend))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Start a canary for VERSION (or, with --full, roll it out at 100% and promote it)."""
    from driftloop.notify import make_notifier
    from driftloop.rollout.progressive import manual_promote

    config = _config(args)
    registry, backend = _rollout(args)
    with backend:
        step = manual_promote(registry, backend, args.version, config=config.canary,
                              notifier=make_notifier(config.notify),
                              run_id=args.run_id or _manual_run_id("promote"),
                              model_name=args.model, full=args.full,
                              reason=args.reason or "manual promotion")
    _emit(args, step)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll back the canary in progress, or else the champion to the previous version."""
    from driftloop.notify import make_notifier
    from driftloop.rollout.progressive import manual_rollback

    config = _config(args)
    registry, backend = _rollout(args)
    with backend:
        step = manual_rollback(registry, backend, notifier=make_notifier(config.notify),
                               run_id=args.run_id or _manual_run_id("rollback"),
                               model_name=args.model, reason=args.reason or "manual rollback")
    _emit(args, step)
    return 0


def _need_version(args: argparse.Namespace) -> str:
    if not args.version:
        raise DriftloopError(f"models {args.action}: a VERSION argument is required")
    return str(args.version)


def _cluster_params(args: argparse.Namespace) -> dict[str, Any]:
    """The run's parameters, limited to those the package declares.

    The ``canary-analysis`` package (``pipelines/canary_analysis.yaml``) declares only the
    canary's parameters; the thresholds of drift, trigger and gate do not apply to it.
    """
    from driftloop.kfp.cluster import pipeline_parameters
    from driftloop.kfp.local import pipeline_arguments

    params = {
        "store_uri": args.store, "schema_uri": args.schema, "model_name": args.model,
        "isvc_name": args.isvc_name or args.model, "namespace": args.namespace,
        "force_retrain": args.force, **pipeline_arguments(_config(args)),
    }
    declared = pipeline_parameters(Path(args.package))
    if "force_retrain" in declared:  # the continuous-training pipeline: every parameter
        return params
    return {k: v for k, v in params.items() if k in declared}


def parse_variants(specs: list[str]) -> list[Any]:
    """``NAME=TARGET[:WEIGHT]`` flags as variants; no weight at all means an equal split."""
    from driftloop.decide.ab_assign import Variant

    parsed = []
    for spec in specs:
        name, eq, rest = spec.partition("=")
        target, colon, weight = rest.rpartition(":") if ":" in rest else (rest, "", "")
        if not eq or not name or not target:
            raise DriftloopError(f"--variant {spec!r}: expected NAME=TARGET[:WEIGHT]")
        try:
            parsed.append((name, target, float(weight) if colon else None))
        except ValueError:
            raise DriftloopError(f"--variant {spec!r}: weight {weight!r} is not a number") from None
    if len(parsed) < 2:
        raise DriftloopError("--variant: an A/B test needs at least two (NAME=TARGET[:WEIGHT])")
    given = [w for _, _, w in parsed if w is not None]
    if given and len(given) != len(parsed):
        raise DriftloopError("--variant: give a weight to every variant or to none")
    equal = 1.0 / len(parsed)
    return [Variant(n, t, equal if w is None else w) for n, t, w in parsed]


def cmd_ab(args: argparse.Namespace) -> int:
    """Start, show or stop an A/B test; start and stop configure the rollout backend."""
    from driftloop.steps import ab

    check_store_root(args.store)
    if args.action == "status":
        from driftloop.data.storage import open_store

        _emit(args, ab.ab_status(open_store(args.store), args.model))
        return 0
    if args.action == "stop" and not args.test_id:
        raise DriftloopError("ab stop: --test-id is required")
    variants = parse_variants(args.variant) if args.action == "start" else []
    registry, backend = _rollout(args)
    with backend:
        if args.action == "start":
            test, note = ab.start_ab(registry.store, args.model, variants,
                                     test_id=args.test_id or "", key_field=args.key_field,
                                     key_header=args.key_header, salt=args.salt,
                                     backend=backend)
        else:
            test, note = ab.stop_ab(registry.store, args.model, args.test_id, backend=backend)
    _emit(args, {"test": test, "backend": note})
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Start one run of the compiled pipeline on a KFP backend."""
    from driftloop.kfp.client import make_client
    from driftloop.kfp.cluster import submit

    client = make_client(args.host, namespace=args.kfp_namespace, existing_token=args.token)
    run_name = args.run_name or (
        f"{args.model}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}")
    run_id = submit(client, Path(args.package), params=_cluster_params(args),
                    experiment=args.experiment, run_name=run_name,
                    service_account=args.service_account, namespace=args.kfp_namespace)
    _emit(args, {"run_id": run_id, "run_name": run_name, "experiment": args.experiment})
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """Create or replace the recurring run of the compiled pipeline on a KFP backend."""
    from driftloop.kfp.client import make_client
    from driftloop.kfp.cluster import schedule

    client = make_client(args.host, namespace=args.kfp_namespace, existing_token=args.token)
    recurring_id = schedule(client, Path(args.package), name=args.name, cron=args.cron,
                            params=_cluster_params(args), experiment=args.experiment,
                            service_account=args.service_account,
                            namespace=args.kfp_namespace)
    _emit(args, {"recurring_run_id": recurring_id, "name": args.name, "cron": args.cron})
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run a scenario day by day: real data served over HTTP, or the generated sample."""
    from driftloop.config import RuntimeConfig
    from driftloop.threads import thread_limits

    # the demo has no --config: its runs use the default budget (driftloop.threads)
    with thread_limits("run", RuntimeConfig().max_threads):
        if args.scenario == "sample":
            from driftloop.demo.synthetic import run_demo

            run_demo(Path(args.out), days=args.days or 6, seed=args.seed,
                     in_process=args.in_process)
            return 0
        from driftloop.demo.live import run_live_demo
        from driftloop.demo.traffic import TrafficConfig

        traffic = TrafficConfig(feedback_share=args.feedback_share,
                                feedback_delay_hours=args.feedback_delay_hours,
                                seed=args.seed)
        run_live_demo(Path(args.out), args.scenario, data_dir=Path(args.data),
                      in_process=args.in_process, traffic=traffic, days=args.days,
                      seed=args.seed, ab=args.ab or "", ab_share=args.ab_share)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """The review queue: export it for a labelling tool, or show how much came back."""
    import dataclasses

    from driftloop.decide.review import to_csv, to_jsonl
    from driftloop.models.registry import Registry
    from driftloop.steps.champion import load_champion
    from driftloop.steps.ingest import run_ingest
    from driftloop.steps.review import latest_queue, run_curation, write_curation

    store, schema = _open(args)
    config, now = _config(args), _now(args.now)
    if args.size is not None:
        if args.size < 0:
            raise DriftloopError(f"--size {args.size}: must be >= 0")
        config = dataclasses.replace(
            config, curation=dataclasses.replace(config.curation, review_size=args.size))
    champion = load_champion(Registry(store, args.model))
    if champion is None:
        raise DriftloopError(f"review {args.action}: model {args.model!r} has no champion "
                             f"yet: no model scores the responses")
    window = run_ingest(store, schema, now=now, window_days=1,
                        lookback_days=args.lookback_days)
    outcome, table, queue = run_curation(champion, window.records, schema, now=now,
                                         config=config, previous_queue=latest_queue(store, now))
    if args.action == "export":
        # recorded like a run's, so `review stats` later counts the labels that came back
        run_id = "review-" + now.strftime("%Y%m%dT%H%M%SZ")
        write_curation(store, run_id, outcome, table, queue, schema)
        text = to_csv(queue) if args.format == "csv" else to_jsonl(queue, schema.labels or [])
        if args.out:
            Path(args.out).write_text(text)
        else:
            sys.stdout.write(text)
            return 0
    _emit(args, outcome)
    return 0
