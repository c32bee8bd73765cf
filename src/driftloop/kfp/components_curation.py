"""The curation component: the run's disagreements and review queue (issue 15).

One task after ingest (and after the canary analysis, whose completed canary is the new
champion); its body calls exactly one step, :func:`driftloop.steps.curate_step`.
"""

# No ``from __future__ import annotations``: kfp reads the real annotation objects.

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from driftloop.kfp.image import component


@component
def curate_feedback(
    store_uri: str,
    schema_uri: str,
    model_name: str,
    run_id: str,
    now: str,
    records: Input[Dataset],
    review_queue: Output[Dataset],
    disagreements: Output[Dataset],
    curation_report: Output[Markdown],
    curation_metrics: Output[Metrics],
) -> None:
    """Find the recent disagreements and the unlabelled responses most worth labelling.

    Disagreements: labelled responses of the recent days whose user label differs from
    the prediction served with them, with its confidence, counted per class and slice.
    Review queue: unlabelled recent responses by lowest margin (ties: highest entropy),
    slices taking turns, near-duplicates once; label them through the sink's POST /feedback
    with the queued id. Records runs/<run-id>/disagreements.parquet, review_queue.jsonl
    and curation.json / curation.md. Nothing is decided here: the trigger's disagreement
    rule is judged by decide_retrain.

    Args:
        store_uri: Store root: a folder or gs://bucket/prefix.
        schema_uri: Schema file (JSON or YAML, local or gs://).
        model_name: Model name in the registry.
        run_id: The run's id; its folder under runs/ in the store.
        now: The run's logical time (from ingest).
        records: Every accepted record of the lookback (from ingest).
        review_queue: The review queue (JSON Lines: id, features, prediction, confidence,
            margin, entropy, slice, choices).
        disagreements: The disagreeing labelled responses (Parquet).
        curation_report: Disagreement counts per class and slice, and the queue's summary.
        curation_metrics: Disagreements, labelled responses, rate, queued and candidates.
    """
    from pathlib import Path

    from driftloop import steps

    out = steps.curate_step(store_uri, schema_uri, model_name, records.path, run_id=run_id,
                            now=now, queue_path=review_queue.path,
                            disagreements_path=disagreements.path)
    review_queue.metadata.update({"rows": out.review.queued, "format": "jsonl"})
    disagreements.metadata.update({"rows": out.disagreements.disagreements,
                                   "format": "parquet"})
    Path(curation_report.path).write_text(out.to_markdown())
    for name, value in out.metrics().items():
        curation_metrics.log_metric(name, value)
