"""Warm-start updates: a cheap challenger between full retrains, from the champion's settings.

An update (the trigger's ``kind="update"``: only new labels fired and
``tuning.updates`` is on) skips the search: the champion's own candidate and parameters
(recorded in its ``metadata.json``) are refit on the planned rows, which are the
champion's training rows plus the new labels (the label-volume rule plans from the
champion's reference on). It is registered as a challenger like any other and judged by
the same gate on held-out rows neither model trained on.

Why a refit and not ``warm_start`` for the boosting model: scikit-learn 1.9.1's
``BaseHistGradientBoosting.fit`` (``sklearn/ensemble/_hist_gradient_boosting/
gradient_boosting.py``) builds a new ``_BinMapper`` from the data of every call, and on a
warm start computes the raw predictions of the existing trees with
``_raw_predict(X_binned_train)``, i.e. the old trees' *bin* thresholds read against the
*new* bins. On data that is not the data of the first fit (new labels) the bins move and
the continued boosting starts from wrong residuals. The same holds for the pipeline's
encoders (a category first seen in the new labels changes the ordinal codes). A refit
with fixed settings costs one fit (no search) and is sound for every candidate kind.
"""

from __future__ import annotations

from typing import Any

from driftloop.models.candidates import DEFAULT, TEXT_CANDIDATES, as_params


def update_spec(champion_metadata: dict[str, Any] | None) -> tuple[str, dict[str, Any], str]:
    """The candidate and parameters an update refits, from the champion's metadata.

    Returns:
        ``(candidate, params, reason)``; the fixed model when the champion records no
        search (trained before tuning existed, or with tuning off).
    """
    meta = champion_metadata or {}
    record = meta.get("candidates") or {}
    winner = record.get("winner")
    version = meta.get("version", "the champion")
    if not winner or winner == DEFAULT:
        return DEFAULT, {}, (f"update: refit of {version}'s fixed model on its rows plus "
                             f"the new labels (no search)")
    params = dict(meta.get("params", {}).get("tuned", {}))
    for name, result in ((r.get("candidate"), r) for r in record.get("results", [])):
        if name == winner and not params:
            params = dict(result.get("params") or {})
    params = as_params(params)
    kind = "text" if winner in TEXT_CANDIDATES else "tabular"
    return winner, params, (f"update: refit of {version}'s {kind} candidate {winner} with "
                            f"its parameters on its rows plus the new labels (no search)")

