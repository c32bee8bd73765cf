"""The ``driftloop`` command: one subcommand per step over store paths/URIs.

Results go to stdout as JSON (or to ``--output FILE``); errors are one line on stderr
with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from driftloop import __version__
from driftloop.data.storage import check_store_root, describe_os_error
from driftloop.errors import DriftloopError, StoreError


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
    from driftloop.config import Config, config_from_dict

    if not getattr(args, "config", None):
        return Config()
    path = Path(args.config)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DriftloopError(f"{path}: config file does not exist") from None
    except json.JSONDecodeError as exc:
        raise DriftloopError(f"{path}: not valid JSON ({exc.msg})") from None
    return config_from_dict(raw, source=str(path))


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


def _read_frame(path: str) -> Any:
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise DriftloopError(f"{path}: file does not exist") from None
    except Exception as exc:
        raise DriftloopError(f"{path}: not a readable Parquet file ({exc})") from None


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
    from driftloop.steps.loop import load_champion, run_drift

    store, schema = _open(args)
    from driftloop.models.registry import Registry

    champion = load_champion(Registry(store, args.model))
    if champion is None:
        raise DriftloopError(f"model {args.model}: no champion to compare with (train first)")
    report = run_drift(champion, _read_frame(args.current), schema, _config(args))
    if args.markdown and report is not None:
        sys.stdout.write(report.to_markdown())
        return 0
    _emit(args, report)
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    """Ingest, check drift and decide whether to retrain (nothing is trained)."""
    from driftloop.models.registry import Registry
    from driftloop.steps.loop import load_champion, run_decide, run_drift, run_ingest

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
    from driftloop.steps.loop import load_champion, run_ingest, run_train

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
    from driftloop.steps.loop import load_champion, run_evaluate

    store, schema = _open(args)
    registry = Registry(store, args.model)
    verdict = run_evaluate(registry, load_champion(registry), args.challenger,
                           _read_frame(args.eval), schema, _config(args))
    _emit(args, verdict)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the whole loop once in this process (or, with --local, through kfp.local)."""
    if args.local:
        return _run_local(args)
    from driftloop.notify import make_notifier
    from driftloop.steps.loop import run_loop

    store, schema = _open(args)
    config = _config(args)
    run_id = args.run_id or f"run-{uuid.uuid4().hex[:12]}"
    result = run_loop(store, schema, args.model, now=_now(args.now), run_id=run_id,
                      config=config, force=args.force, window_days=args.window_days,
                      lookback_days=args.lookback_days, notifier=make_notifier(config.notify))
    from driftloop.steps import read_run

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
                    pipeline_root=args.pipeline_root,
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
                           store_uri=args.store, kube_host=args.kube_host)
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


def cmd_submit(args: argparse.Namespace) -> int:
    """Start one run of the compiled pipeline on a KFP backend."""
    from driftloop.kfp.cluster import make_client, submit

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
    from driftloop.kfp.cluster import make_client, schedule

    client = make_client(args.host, namespace=args.kfp_namespace, existing_token=args.token)
    recurring_id = schedule(client, Path(args.package), name=args.name, cron=args.cron,
                            params=_cluster_params(args), experiment=args.experiment,
                            service_account=args.service_account,
                            namespace=args.kfp_namespace)
    _emit(args, {"recurring_run_id": recurring_id, "name": args.name, "cron": args.cron})
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run a scenario day by day: real data served over HTTP, or the generated sample."""
    if args.scenario == "sample":
        from driftloop.demo.synthetic import run_demo

        run_demo(Path(args.out), days=args.days or 6, seed=args.seed,
                 in_process=args.in_process)
        return 0
    from driftloop.demo.live import run_live_demo
    from driftloop.demo.traffic import TrafficConfig

    traffic = TrafficConfig(feedback_share=args.feedback_share,
                            feedback_delay_hours=args.feedback_delay_hours, seed=args.seed)
    run_live_demo(Path(args.out), args.scenario, data_dir=Path(args.data),
                  in_process=args.in_process, traffic=traffic, days=args.days, seed=args.seed)
    return 0


# --- parser -----------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, *, schema: bool = True, model: bool = True) -> None:
    p.add_argument("--store", required=True, help="store root: a folder or gs://bucket/prefix")
    if schema:
        p.add_argument("--schema", required=True, help="schema file (JSON or YAML, local or gs://)")
    if model:
        p.add_argument("--model", required=True, help="model name in the registry")
    p.add_argument("--config", help="JSON file overriding thresholds ({drift:{..}, trigger:{..}})")
    p.add_argument("--output", help="write the JSON result here instead of stdout")


def _windowed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--now", help="the run's logical time (ISO-8601; a date means its end)")
    p.add_argument("--window-days", type=int, default=1, help="current window for drift")
    p.add_argument("--lookback-days", type=int, default=30, help="days read for labels")


def _rollout_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["local", "kubernetes"], default="local",
                   help="where the InferenceService lives (default: local)")
    p.add_argument("--isvc", help="InferenceService name (default: the model name)")
    p.add_argument("--namespace", default="default", help="its namespace")
    p.add_argument("--state", help="local backend: state folder (default: <store>/rollout)")
    p.add_argument("--kube-host", help="kubernetes backend: API server URL used without "
                                       "credentials (default: kubeconfig / in-cluster)")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``driftloop`` command."""
    parser = argparse.ArgumentParser(
        prog="driftloop",
        description="Continuous training for Kubeflow and KServe: the steps of the loop.",
    )
    parser.add_argument("--version", action="version", version=f"driftloop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STEP")

    p = sub.add_parser("sample", help="write a generated sample store (tabular, with drift)")
    p.add_argument("--out", required=True)
    p.add_argument("--days", type=int, default=6)
    p.add_argument("--drift-day", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("ingest", help="read, validate and join a window of records and labels")
    _common(p, model=False)
    p.add_argument("--start", required=True, help="first day (YYYY-MM-DD)")
    p.add_argument("--end", required=True, help="last day (YYYY-MM-DD)")
    p.add_argument("--out", help="folder for records.parquet, quarantine.parquet, ingest.json")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("drift", help="drift report of current records vs the champion")
    _common(p)
    p.add_argument("--current", required=True, help="Parquet file of current records")
    p.add_argument("--markdown", action="store_true", help="print Markdown instead of JSON")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("decide", help="ingest + drift + the retrain decision")
    _common(p)
    _windowed(p)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_decide)

    p = sub.add_parser("train", help="train and register a challenger")
    _common(p)
    _windowed(p)
    p.add_argument("--eval-out", help="write the held-out evaluation set (Parquet) here")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="gate a challenger against the champion")
    _common(p)
    p.add_argument("--challenger", required=True, help="registered challenger version")
    p.add_argument("--eval", required=True, help="Parquet evaluation set (from train)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("run", help="the whole loop once, in this process")
    _common(p)
    _windowed(p)
    p.add_argument("--force", action="store_true")
    p.add_argument("--run-id")
    p.add_argument("--local", action="store_true",
                   help="run the KFP pipeline through kfp.local (one subprocess per task)")
    p.add_argument("--pipeline-root",
                   help="with --local: keep the task artifacts here (default: a temp folder)")
    p.add_argument("--verbose", action="store_true",
                   help="with --local: stream every task's output to stderr")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("models", help="list, show, verify or promote registered versions")
    _common(p, schema=False)
    p.add_argument("action", choices=["list", "show", "verify", "promote"])
    p.add_argument("version", nargs="?")
    p.add_argument("--reason")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("status", help="aliases, canary traffic and the last rollout step")
    _common(p, schema=False)
    _rollout_flags(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("promote", help="start a canary for VERSION (--full: 100%% at once)")
    _common(p, schema=False)
    _rollout_flags(p)
    p.add_argument("version", help="registered version")
    p.add_argument("--full", action="store_true",
                   help="skip the canary steps: 100%% and champion at once")
    p.add_argument("--reason", help="recorded in the alias history")
    p.add_argument("--run-id", help="recorded as the step's run id (default: manual-promote-*)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback",
                       help="roll back the canary in progress, else the champion to previous")
    _common(p, schema=False)
    _rollout_flags(p)
    p.add_argument("--reason", help="recorded in the alias history")
    p.add_argument("--run-id", help="recorded as the step's run id (default: manual-rollback-*)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("compile", help="write components/*/component.yaml and the pipeline YAML")
    p.add_argument("--out-dir", default=".", help="folder holding components/ and pipelines/")
    p.add_argument("--gcs-secret", default=None,
                   help="Kubernetes Secret with the storage key (key.json) mounted into the "
                        "tasks that touch the store; '' for none (default: driftloop-gcs, "
                        "driftloop.kfp.pipeline.GCS_SECRET)")
    p.set_defaults(func=cmd_compile)

    for name, helptext, func in (
        ("submit", "start one pipeline run on a KFP backend", cmd_submit),
        ("schedule", "create or replace a recurring pipeline run on a KFP backend", cmd_schedule),
    ):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
        p.add_argument("--package", default="pipelines/continuous_training.yaml",
                       help="compiled pipeline (make compile)")
        p.add_argument("--isvc-name", help="InferenceService name (default: the model name)")
        p.add_argument("--namespace", default="kubeflow",
                       help="namespace of the InferenceService")
        p.add_argument("--experiment", default="driftloop")
        p.add_argument("--service-account", help="Kubernetes service account the run's pods use")
        p.add_argument("--kfp-namespace", help="profile namespace (multi-user Kubeflow)")
        p.add_argument("--token", help="bearer token for the KFP API")
        p.add_argument("--force", action="store_true", help="pipeline parameter force_retrain")
        if name == "submit":
            p.add_argument("--run-name", help="run display name (default: unique per call)")
        else:
            p.add_argument("--cron", required=True, help='5-field cron, e.g. "0 0 * * *"')
            p.add_argument("--name", default="driftloop-continuous-training",
                           help="recurring run name; the same name replaces the schedule")
        p.set_defaults(func=func)

    p = sub.add_parser("demo", help="serve a model, replay a real stream as simulated days "
                                     "and run the pipeline after each day")
    p.add_argument("--scenario", choices=("tweets", "elec2", "sample"), default="tweets",
                   help="tweets (topic shifts), elec2 (electricity market) or sample "
                        "(generated rows dropped in the store, no serving)")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--data", default="data", help="folder of the data sets (make data)")
    p.add_argument("--in-process", action="store_true",
                   help="call the steps in this process instead of running kfp.local")
    p.add_argument("--days", type=int, default=None, help="run only the first N days")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feedback-share", type=float, default=0.3,
                   help="share of predictions that get a feedback label")
    p.add_argument("--feedback-delay-hours", type=float, default=6.0,
                   help="mean delay of a feedback label (exponential)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one subcommand; a DriftloopError or OSError is one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DriftloopError as exc:
        print(f"driftloop {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a store or output the OS refuses: read-only, no space, ...
        root = getattr(args, "store", None) or getattr(args, "out", None)
        print(f"driftloop {args.command}: error: {describe_os_error(exc, root)}",
              file=sys.stderr)
        return StoreError.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
