"""The ``driftloop`` command's flags: one subparser per subcommand.

:func:`build_parser` declares every subcommand, its flags and their help text, and binds
each subcommand to its function in :mod:`driftloop.cli.commands` (``args.func``). It is
its own module because the flags are the command's interface, read on their own (what
does ``driftloop train`` take?), while what a subcommand does lives with the commands.
"""

from __future__ import annotations

import argparse
from typing import Any

from driftloop import __version__
from driftloop.cli.commands import (
    cmd_ab,
    cmd_compile,
    cmd_decide,
    cmd_demo,
    cmd_drift,
    cmd_evaluate,
    cmd_ingest,
    cmd_models,
    cmd_promote,
    cmd_review,
    cmd_rollback,
    cmd_run,
    cmd_sample,
    cmd_schedule,
    cmd_status,
    cmd_submit,
    cmd_train,
)


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
    p.add_argument("--ready-timeout", type=float, default=None,
                   help="kubernetes backend: seconds a step waits for the new revision to be "
                        "ready and serving its share (default: 720)")


def _at_least(low: float, kind: type) -> Any:
    """An argparse type: a number of ``kind`` that is at least ``low`` (one-line error)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: must be >= {low:g}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``driftloop`` command."""
    parser = argparse.ArgumentParser(
        prog="driftloop",
        description="Continuous training for Kubeflow and KServe: the steps of the loop.",
    )
    parser.add_argument("--version", action="version", version=f"driftloop {__version__}")
    # Checked by main (driftloop.logs.resolve_format), not by choices=: a bad value is one
    # line naming the flag, like every other driftloop error, not a usage dump.
    parser.add_argument("--log-format", metavar="{text,json}", default=None,
                        help="log records (INFO and up) as plain text or one JSON object "
                             "per line, also in the tasks it starts (default: "
                             "$DRIFTLOOP_LOG_FORMAT; without either, warnings as plain "
                             "text)")
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
    p.add_argument("--n-trials", type=_at_least(0, int), default=None,
                   help="Optuna trials per candidate model (0: no search, the fixed model; "
                        "default: the config's tuning section)")
    p.add_argument("--tuning-seconds", type=_at_least(0.001, float), default=None,
                   help="seconds of each candidate's search (default: the config's)")
    p.add_argument("--run-id")
    p.add_argument("--local", action="store_true",
                   help="run the KFP pipeline through kfp.local (one subprocess per task)")
    p.add_argument("--pipeline-root",
                   help="with --local: keep the task artifacts here (default: a temp folder)")
    p.add_argument("--verbose", action="store_true",
                   help="with --local: stream every task's output to stderr")
    p.add_argument("--pushgateway-url", default="",
                   help="push the run's decisions to this Prometheus Pushgateway when it ends")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("models", help="list, show, verify or promote registered versions")
    _common(p, schema=False)
    p.add_argument("action", choices=["list", "show", "verify", "promote"])
    p.add_argument("version", nargs="?")
    p.add_argument("--reason")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("review", help="the review queue: export the unlabelled responses "
                                      "most worth labelling, or show what came back")
    _common(p)
    p.add_argument("action", choices=["export", "stats"])
    p.add_argument("--now", help="logical time (ISO-8601; a date means its end; default now)")
    p.add_argument("--lookback-days", type=int, default=30, help="days of records read")
    p.add_argument("--size", type=int, default=None,
                   help="responses in the queue (default: curation.review_size, 200)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl",
                   help="export format (default: jsonl)")
    p.add_argument("--out", help="export: write the queue here (default: stdout); the "
                                 "statistics then go to stdout")
    p.set_defaults(func=cmd_review)

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

    p = sub.add_parser("ab", help="start, show or stop an A/B test (sticky per-user split)")
    _common(p, schema=False)
    _rollout_flags(p)
    p.add_argument("action", choices=["start", "status", "stop"])
    p.add_argument("--test-id", help="the test (start: default ab-<UTC time>; stop: required)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=TARGET[:WEIGHT]",
                   help="start: one arm, e.g. static=v20260101-1200-ab12cd34:0.5 or "
                        "retrained=champion (an alias follows promotions); the first is the "
                        "control; without weights the split is equal")
    p.add_argument("--key-field", default="user_id",
                   help="start: request field holding the user/session key")
    p.add_argument("--key-header", default="x-user-id",
                   help="start: HTTP header holding the key (checked first)")
    p.add_argument("--salt", default="", help="start: hash salt (default: the test id)")
    p.set_defaults(func=cmd_ab)

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
    p.add_argument("--ab", choices=("static",), default=None,
                   help="static: an A/B test of the first champion, frozen, against the "
                        "continuously retrained one on live traffic (sticky per user)")
    p.add_argument("--ab-share", type=float, default=0.2,
                   help="share of the users the static model serves (with --ab); the rest "
                        "is the loop's, whose canaries need the traffic")
    p.set_defaults(func=cmd_demo)
    return parser
