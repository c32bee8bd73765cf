"""The A/B test's component: judge the running tests on live traffic (issue 15).

Same rules as :mod:`driftloop.kfp.components`: the body imports :mod:`driftloop.steps`
inside itself and calls one step, :func:`driftloop.steps.ab.ab_step`.
"""

# No ``from __future__ import annotations``: kfp reads the real annotation objects.

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from driftloop.kfp.image import component


@component
def analyse_ab(
    store_uri: str,
    model_name: str,
    run_id: str,
    now: str,
    isvc_name: str,
    namespace: str,
    rollout_backend: str,
    rollout_state: str,
    webhook: str,
    auto_promote: bool,
    records: Input[Dataset],
    ab_report: Output[Markdown],
    ab_metrics: Output[Metrics],
) -> str:
    """Judge every running A/B test of the model; stop decided ones and act on the winner.

    Per variant on the logged keyed responses joined with feedback since the test started
    (unkeyed responses counted apart): accuracy, macro-F1, error rate and p95 latency. Each
    variant is compared with the control by the per-day stratified accuracy difference
    with a per-user variance and an anytime-valid confidence sequence (alpha over all runs);
    the sample size comes from a power calculation (ab.alpha, ab.power, ab.mde). A test
    stops with a winner, for futility, or after ab.max_days; the winner is promoted through
    the normal rollout (a canary start, with notification) when auto_promote, else reported
    for approval. Records runs/<run-id>/ab.json and ab.md; test state in
    ab/<model>/<test-id>.json.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        model_name: Model name in the registry.
        run_id: The run's id; its folder under runs/ in the store.
        now: The run's logical time (from ingest).
        isvc_name: KServe InferenceService serving the model ("" = registry only).
        namespace: Kubernetes namespace of the InferenceService.
        rollout_backend: local (state folder), kubernetes (the cluster's API) or none.
        rollout_state: The local backend's state folder ("" = <store>/rollout).
        webhook: http(s) URL receiving the A/B and promotion events ("" = log only).
        auto_promote: Promote a winner at once (a canary start) instead of asking for
            approval.
        records: The lookback's records (from ingest).
        ab_report: Every test's analysis (per-variant numbers, every rule).
        ab_metrics: Per test and variant: labelled responses, accuracy, the difference and
            its interval.

    Returns:
        The ids of the tests this run stopped, comma-separated ("" = none).
    """
    from pathlib import Path

    from driftloop import steps

    out = steps.ab_step(
        store_uri, model_name, records.path, run_id=run_id, now=now, isvc_name=isvc_name,
        namespace=namespace, rollout_backend=rollout_backend, rollout_state=rollout_state,
        webhook=webhook, auto_promote=auto_promote,
    )
    Path(ab_report.path).write_text(out.to_markdown())
    ab_report.metadata.update({"tests": len(out.analyses), "stopped": ",".join(out.stopped)})
    for name, value in out.metrics().items():
        ab_metrics.log_metric(name, value)
    return ",".join(out.stopped)
