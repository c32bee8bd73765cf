from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from driftloop.models.metrics import (
    align_proba,
    class_set,
    compute_metrics,
    confusion_metrics,
    per_class_metrics,
    roc_auc,
)


def _absent_class_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """400 rows of a/b; champion 90% right, challenger 95% right, once predicting "c"."""
    y = np.array(["a"] * 200 + ["b"] * 200, dtype=object)
    champ = y.copy()
    champ[:20], champ[200:220] = "b", "a"
    chall = y.copy()
    chall[:9], chall[200:210], chall[9] = "b", "a", "c"
    return y, champ, chall


def test_macro_metrics_average_over_the_given_class_set_for_both_models():
    y, champ, chall = _absent_class_case()
    labels = ["a", "b"]  # the classes of the schema that occur in the eval set
    before = compute_metrics(y, champ, None, ["a", "b"], labels=labels)
    after = compute_metrics(y, chall, None, ["a", "b", "c"], labels=labels)
    assert before["f1_macro"] == pytest.approx(0.900)
    assert after["f1_macro"] == pytest.approx(0.952, abs=1e-3)
    assert after["f1_macro"] > before["f1_macro"]
    # Without a class set, sklearn averages over a, b and c for the challenger only.
    assert compute_metrics(y, chall, None, ["a", "b", "c"])["f1_macro"] < 0.65
    _, _, f1, _ = precision_recall_fscore_support(y, chall, labels=labels, average="macro",
                                                  zero_division=0)
    assert after["f1_macro"] == pytest.approx(f1)


def test_confusion_metrics_average_over_a_fixed_class_set_not_the_present_ones():
    rng = np.random.default_rng(2)
    names = np.array(["a", "b", "c", "d"])
    t = rng.integers(0, 3, 250)  # "d" only ever predicted
    p = np.where(rng.random(250) < 0.6, t, rng.integers(0, 4, 250))
    conf = np.zeros((4, 4))
    np.add.at(conf, (t, p), 1)
    for avg in ([0, 1, 2], [0, 1, 2, 3]):
        fast = confusion_metrics(conf[None], labels=avg)
        slow = compute_metrics(names[t], names[p], None, list(names), labels=list(names[avg]))
        for name, values in fast.items():
            assert values[0] == pytest.approx(slow[name]), (avg, name)
    # A resample in which nobody predicts "d" averages over the same classes as one that does.
    no_d = conf.copy()
    no_d[:, 0] += no_d[:, 3]
    no_d[:, 3] = 0
    both = confusion_metrics(np.stack([conf, no_d]), labels=[0, 1, 2])
    ref = compute_metrics(names[t], np.where(p == 3, "a", names[p]), None, list(names),
                          labels=["a", "b", "c"])
    assert both["f1_macro"][1] == pytest.approx(ref["f1_macro"])


def test_auc_aligns_probabilities_to_the_class_set_and_keeps_every_row():
    rng = np.random.default_rng(1)
    y = rng.choice(["a", "b", "c"], 400)
    three = rng.dirichlet([1, 1, 1], 400)
    three[np.arange(400), np.searchsorted(["a", "b", "c"], y)] += 0.5
    three /= three.sum(axis=1, keepdims=True)
    two = three[:, :2] / three[:, :2].sum(axis=1, keepdims=True)  # knows only a and b
    labels = ["a", "b", "c"]
    aligned = align_proba(two, ["a", "b"], labels)
    assert aligned.shape == (400, 3) and (aligned[:, 2] == 0).all()
    assert aligned[:, :2] == pytest.approx(two)
    expected = roc_auc_score(y, aligned, multi_class="ovr", labels=labels)
    assert roc_auc(y, two, ["a", "b"], labels=labels) == pytest.approx(expected)
    assert compute_metrics(y, y, two, ["a", "b"], labels=labels)["roc_auc"] == (
        pytest.approx(expected))
    assert roc_auc(y, three, labels, labels=labels) == pytest.approx(
        roc_auc_score(y, three, multi_class="ovr"))
    # Column order of the model does not matter once aligned.
    shuffled = three[:, [2, 0, 1]]
    assert roc_auc(y, shuffled, ["c", "a", "b"], labels=labels) == pytest.approx(
        roc_auc(y, three, labels, labels=labels))


def test_binary_auc_over_the_class_set_uses_its_second_label_as_positive():
    rng = np.random.default_rng(0)
    y = rng.choice(["neg", "pos"], 300)
    p_pos = np.clip((y == "pos") * 0.3 + rng.random(300) * 0.7, 0, 1)
    reversed_cols = np.column_stack([p_pos, 1 - p_pos])
    got = roc_auc(y, reversed_cols, ["pos", "neg"], labels=["neg", "pos"])
    assert got == pytest.approx(roc_auc_score(y == "pos", p_pos))
    # A model that knows only "pos" still scores every row (p(neg) = 0).
    only_pos = p_pos[:, None]
    assert roc_auc(y, only_pos, ["pos"], labels=["neg", "pos"]) == pytest.approx(
        roc_auc_score(y == "pos", p_pos))


def test_per_class_metrics_over_the_class_set():
    y, _, chall = _absent_class_case()
    out = per_class_metrics(y, chall, None, ["a", "b", "c"], labels=["a", "b"])
    assert set(out) == {"a", "b"}
    assert out["a"]["n"] == 200 and out["a"]["recall_macro"] == pytest.approx(190 / 200)
    proba = np.zeros((400, 2))
    proba[np.arange(400), (chall == "b").astype(int)] = 1.0
    known = per_class_metrics(y, chall, proba, ["a", "b"], labels=["a", "b", "c"])
    assert set(known) == {"a", "b"}  # "c" has no rows to be a slice of
    assert np.isfinite(known["a"]["roc_auc"])


def test_class_set_starts_with_the_schema_labels_and_keeps_unknown_extras():
    assert class_set(("neg", "pos"), ["pos"], ["neg"]) == ["neg", "pos"]
    assert class_set(("b", "a"), ["a", "z"], ["y"]) == ["b", "a", "y", "z"]
    assert class_set(None, ["b", "a"], ["c"]) == ["a", "b", "c"]
