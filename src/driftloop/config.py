"""All tunable thresholds in one place: typed, frozen, with the documented defaults.

Pipeline parameters and CLI flags override single fields with :func:`dataclasses.replace`;
nothing here reads the environment.

Longer than 600 lines: every section's thresholds live in this one module on purpose (one
place to read, validate and override them); each section is a small frozen dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from driftloop.errors import ConfigError


def _check(cond: bool, name: str, rule: str) -> None:
    if not cond:
        raise ConfigError(f"config {name}: {rule}")


@dataclass(frozen=True)
class DriftConfig:
    """Drift detection thresholds.

    Attributes:
        p_value: Significance level of the per-feature tests, before correction.
        correction: Multiple-testing correction across features: ``bonferroni`` or ``fdr``.
        min_samples: Below this many current rows the report says "insufficient data".
        bins: Number of quantile bins (fixed from the reference) for PSI and JS distance.
        psi_threshold: PSI above which a feature is flagged as shifted in the report text.
        oov_threshold: Out-of-vocabulary rate increase (absolute) that counts as drift for text.
        max_reference_rows: Rows of the reference kept for the stored detector (sampled).
        seed: Seed for sampling the reference.
        effect_size: Effect size a significant column must also reach to count as drifted:
            ``psi`` (population stability index), ``ks`` (KS statistic; total variation
            distance for categorical columns, its categorical counterpart) or ``js``
            (Jensen-Shannon distance, base 2). Measured over the reference's quantile bins
            plus a missing-value bin (numeric, model output) or over the categories the
            chi-squared test compares, rare ones pooled (categorical).
        effect_threshold: Smallest effect that counts as drift. 0.1 is the classic PSI bound
            of a "moderate" shift (below 0.1: no meaningful change; 0.2 and up: major). For
            a small normal mean shift KS ~= 0.4 sqrt(PSI) and JS ~= sqrt(PSI / 5.5), so 0.1
            is a comparable bound for ``ks`` (PSI ~0.065) and ``js`` (PSI ~0.055) too. With the
            default 10 bins a stationary column's estimated PSI is biased upward by about
            ``9 / n`` per side (0.18 at 100 rows per side), so the bound only bites with
            large windows: there the test alone fires on shifts too small to matter, and
            small windows are protected by the test's significance level. It must sit
            below the smallest shift worth a retrain (PSI 0.2: at 0.2 itself half of those
            would be missed, the estimate scattering around it). Measured
            (``benchmarks/drift_false_alarms.py``): a PSI-0.2 shift is caught in >= 99.9%
            of runs from 1k rows, stationary false alarms are <= 4.8% at 100 to 100k
            rows, and a PSI-0.01 shift no longer fires from 1k rows (the test alone: 28-49%
            at 1k, ~100% from 10k).
        feature_thresholds: Per-column ``(name, threshold)`` overrides of
            ``effect_threshold`` (names as in the report, e.g. ``proba[positive]``). A JSON
            list of pairs or an object ``{name: threshold}`` is accepted and normalised.
        min_expected: Categories whose expected count in the smaller of the two samples
            (share in both samples together x rows) is below this are pooled with those
            unseen in the reference into one ``other`` bucket before the chi-squared test (its
            approximation needs expected counts of about 5).
        shards: Shards the current window is cut into for drift (by file,
            :mod:`driftloop.data.window_shards`): one pod each in the pipeline (a
            ``ParallelFor``; its ``drift_shards`` parameter), one call each in process. The
            merged report is the one-shard report (:mod:`driftloop.decide.shards`).
    """

    p_value: float = 0.05
    correction: str = "bonferroni"
    min_samples: int = 100
    bins: int = 10
    psi_threshold: float = 0.2
    oov_threshold: float = 0.10
    max_reference_rows: int = 5000
    seed: int = 0
    effect_size: str = "psi"
    effect_threshold: float = 0.1
    feature_thresholds: tuple[tuple[str, float], ...] = ()
    min_expected: float = 5.0
    shards: int = 1

    def __post_init__(self) -> None:
        _check(0 < self.p_value < 1, "drift.p_value", "must be in (0, 1)")
        _check(self.shards >= 1, "drift.shards", "must be >= 1")
        _check(self.correction in ("bonferroni", "fdr"), "drift.correction",
               "must be bonferroni or fdr")
        _check(self.min_samples >= 1, "drift.min_samples", "must be >= 1")
        _check(self.bins >= 2, "drift.bins", "must be >= 2")
        _check(self.effect_size in ("psi", "ks", "js"), "drift.effect_size",
               "must be psi, ks or js")
        _check(self.effect_threshold >= 0, "drift.effect_threshold", "must be >= 0")
        _check(self.min_expected >= 0, "drift.min_expected", "must be >= 0")
        # config_from_dict turns the outer JSON list into a tuple but leaves the pairs lists
        raw: object = self.feature_thresholds
        items = list(raw.items()) if isinstance(raw, dict) else list(raw)  # type: ignore[call-overload]
        pairs: list[tuple[str, float]] = []
        for item in items:
            ok = (isinstance(item, list | tuple) and len(item) == 2
                  and isinstance(item[0], str) and isinstance(item[1], int | float)
                  and not isinstance(item[1], bool) and item[1] >= 0)
            _check(ok, "drift.feature_thresholds",
                   f"each entry must be a [name, threshold >= 0] pair, got {item!r}")
            pairs.append((item[0], float(item[1])))
        names = [n for n, _ in pairs]
        _check(len(set(names)) == len(names), "drift.feature_thresholds",
               "names must be unique")
        object.__setattr__(self, "feature_thresholds", tuple(pairs))

    def effect_threshold_for(self, name: str) -> tuple[float, bool]:
        """The effect threshold of column ``name`` and whether it is a per-column override."""
        for feature, threshold in self.feature_thresholds:
            if feature == name:
                return threshold, True
        return self.effect_threshold, False


@dataclass(frozen=True)
class TriggerConfig:
    """When to retrain.

    Attributes:
        min_new_labels: Labelled records since the last training cutoff (of any version,
            promoted or not) the label-volume rule needs at least.
        label_share: ... and the new labels must be at least this share of the champion's
            training rows (1.0: they would double its data). A fixed count alone turns the
            rule into "every k runs" on a stationary stream; a share makes retrains
            geometrically rarer as data grows, where learning curves flatten.
        label_alpha: Below the training cap the label-volume rule needs the champion's
            learning curve (half its rows against all) to show a gain at this one-sided
            level; once the training set is at its cap (``train.max_rows``) it fires only
            when the champion's accuracy on the new labels is below its held-out baseline
            at this level.
        min_learning_gain: ... and that gain must be at least this much accuracy (an
            effect size: with many validation rows a negligible gain is significant).
        perf_drop: Relative drop of the champion's live accuracy (below its held-out
            baseline, or from before to after a step in its live error stream) that counts
            as material: the effect size of the performance rule (5 %: 4 points at 85 %).
        perf_alpha: One-sided significance level of the performance rule, shared by its
            two looks: with nothing changed it fires in at most this share of runs.
        perf_min_samples: Labelled records of the recent window needed before the
            performance rule may decide.
        perf_window_days: The performance rule judges the champion on records served in
            this many days before the run (a recent drop is not averaged away).
        max_age_days: Retrain on schedule when no version (promoted or not) has been
            trained for this many days; 0 (the default) switches the schedule off. A
            scheduled retrain is a blind one: with daily runs a schedule of k days is a
            false trigger on 1/k of the runs of an unchanged stream.
        cooldown_hours: No retrain (except forced) this soon after the last one.
        drift_growth: After a drift-triggered challenger was not promoted, drift fires
            again on the same reference only when its effect size grew by this factor...
        drift_refire_labels: ... or this many new labels arrived since that attempt (a new
            challenger would learn from them) ...
        drift_cooldown_days: ... or this many days passed since that attempt.
        change_alpha: Significance of the change point searched in the champion's error
            stream when drift or performance fires (Bonferroni over the split points).
        min_post_change_rows: Training rows (labelled, not held out) after a detected
            change needed to train on the post-change rows only; fewer: the whole window
            is used (and the reason says so).
    """

    min_new_labels: int = 500
    label_share: float = 1.0
    label_alpha: float = 0.01
    min_learning_gain: float = 0.005
    perf_drop: float = 0.05
    perf_alpha: float = 0.01
    perf_min_samples: int = 100
    perf_window_days: float = 3.0
    max_age_days: float = 0.0
    cooldown_hours: float = 0.0
    drift_growth: float = 1.5
    drift_refire_labels: int = 500
    drift_cooldown_days: float = 7.0
    change_alpha: float = 0.01
    min_post_change_rows: int = 500

    def __post_init__(self) -> None:
        _check(self.min_new_labels >= 1, "trigger.min_new_labels", "must be >= 1")
        _check(self.label_share >= 0, "trigger.label_share", "must be >= 0")
        _check(0 < self.label_alpha < 1, "trigger.label_alpha", "must be in (0, 1)")
        _check(0 <= self.min_learning_gain < 1, "trigger.min_learning_gain",
               "must be in [0, 1)")
        _check(0 < self.perf_drop < 1, "trigger.perf_drop", "must be in (0, 1)")
        _check(0 < self.perf_alpha < 1, "trigger.perf_alpha", "must be in (0, 1)")
        _check(self.perf_window_days > 0, "trigger.perf_window_days", "must be > 0")
        _check(self.max_age_days >= 0, "trigger.max_age_days", "must be >= 0 (0: off)")
        _check(self.cooldown_hours >= 0, "trigger.cooldown_hours", "must be >= 0")
        _check(self.drift_growth >= 1, "trigger.drift_growth", "must be >= 1")
        _check(0 < self.change_alpha < 1, "trigger.change_alpha", "must be in (0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """How challengers are trained.

    Attributes:
        seed: Seed for the estimator and every split.
        window_days: Labelled production records from this many days back are used
            (``None``: all since the reference).
        max_rows: Keep at most this many most recent training rows.
        eval_fraction: Share of labelled production records held out for evaluation.
        validation_fraction: Share of the training set used for the metadata's validation metrics.
        max_iter: Boosting iterations (tabular) or solver iterations (text).
        learning_rate: Learning rate of the tabular model.
        max_features: TF-IDF vocabulary size (text).
        c: Inverse regularisation strength of the text model.
        importance_rows: Rows (sampled, seeded) the permutation feature importance of a
            new model is measured on (0: not measured).
        importance_repeats: Shuffles per feature of the permutation importance.
    """

    seed: int = 0
    window_days: float | None = None
    max_rows: int = 50_000
    eval_fraction: float = 0.3
    validation_fraction: float = 0.2
    max_iter: int = 200
    learning_rate: float = 0.1
    max_features: int = 20_000
    c: float = 4.0
    importance_rows: int = 1000
    importance_repeats: int = 5

    def __post_init__(self) -> None:
        _check(self.importance_rows >= 0, "train.importance_rows", "must be >= 0")
        _check(self.importance_repeats >= 1, "train.importance_repeats", "must be >= 1")
        _check(0 < self.eval_fraction < 1, "train.eval_fraction", "must be in (0, 1)")
        _check(0 < self.validation_fraction < 1, "train.validation_fraction",
               "must be in (0, 1)")
        _check(self.max_rows >= 10, "train.max_rows", "must be >= 10")


TABULAR_CANDIDATES = ("hgb", "extra_trees", "linear")  # driftloop.models.candidates
TEXT_CANDIDATES = ("tfidf_lr", "tfidf_svm", "word_char")


@dataclass(frozen=True)
class TuningConfig:
    """How a retrain searches for its challenger (:mod:`driftloop.models.tuning`).

    Off by default (``n_trials >= 1`` in the pipeline: on). ``candidates``: ``()`` all of the
    kind; ``n_trials`` (first: the fixed model's settings) and ``tuning_seconds`` per candidate,
    whichever ends first (only trials replay); ``folds``: CV on the training rows, never the
    gate's (median pruning per fold); ``storage``: ``""`` memory, ``"sqlite"`` (run folder) or an
    RDB URL; ``updates``: label-only triggers ask for an update; the rest bound the spaces.
    """

    enabled: bool = False
    candidates: tuple[str, ...] = ()
    n_trials: int = 20
    tuning_seconds: float = 60.0
    folds: int = 3
    storage: str = ""
    updates: bool = False
    min_c: float = 0.01
    max_c: float = 100.0
    min_learning_rate: float = 0.02
    max_learning_rate: float = 0.3
    max_boost_iter: int = 400
    max_trees: int = 300

    def __post_init__(self) -> None:
        _check(set(self.candidates) <= {*TABULAR_CANDIDATES, *TEXT_CANDIDATES},
               "tuning.candidates", f"unknown: {list(self.candidates)}")
        _check(self.n_trials >= 1 and self.folds >= 2 and self.tuning_seconds > 0,
               "tuning.n_trials/folds/tuning_seconds", "must be >= 1 / >= 2 / > 0")
        _check(0 < self.min_c < self.max_c and 0 < self.min_learning_rate
               < self.max_learning_rate <= 1 and min(self.max_boost_iter, self.max_trees) >= 50,
               "tuning bounds", "need 0 < min_c < max_c, 0 < min_learning_rate < "
               "max_learning_rate <= 1, max_boost_iter and max_trees >= 50")


@dataclass(frozen=True)
class GateConfig:
    """The promotion gate.

    Attributes:
        primary_metric: Metric compared between champion and challenger.
        auto_threshold: Improvement needed to promote without a person, measured under
            ``improvement_rule`` (0.05 = 5% of the champion's error removed by default).
        improvement_rule: ``error_reduction`` (default: ``(after - before) / (1 - before)``,
            the share of the champion's error removed; no ceiling), ``relative``
            (``(after - before) / before``, the former "5% relative improvement", which a
            champion above 1 / 1.05 = 0.952 can never meet) or ``absolute``
            (``after - before``; the interval's lower bound must then exceed it too).
        latency_ratio: Challenger median per-row CPU time must be within this multiple of
            the champion's.
        slice_tolerance: Largest allowed drop (absolute) of the primary metric on any slice;
            a slice fails only when it is credibly (on a Holm-corrected interval) worse
            by more than this.
        min_slice_size: Floor of the rows a slice needs to be judged; the gate also
            derives a minimum from ``slice_tolerance`` (73 rows for 0.05) and uses the
            larger. Smaller slices are reported but not judged.
        bootstrap: Paired bootstrap resamples for the confidence interval.
        confidence: Confidence level of the interval.
        seed: Seed of the bootstrap.
        latency_rows: Rows timed one by one per model for the latency rule.
        latency_repeats: Timed calls per row and model (the fastest CPU time counts).
        eval_days: Both models are judged on held-out labels of records served in this
            many days before the run (and after the champion's training cutoff): after a
            change that is what the challenger must be good at. When that gives fewer than
            ``MIN_EVAL_ROWS`` rows, the newest held-out rows since the cutoff are used.
    """

    primary_metric: str = "f1_macro"
    auto_threshold: float = 0.05
    improvement_rule: str = "error_reduction"
    latency_ratio: float = 1.10
    slice_tolerance: float = 0.05
    min_slice_size: int = 30
    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    latency_rows: int = 50
    latency_repeats: int = 2
    eval_days: float = 3.0

    def __post_init__(self) -> None:
        _check(self.primary_metric in PRIMARY_METRICS, "gate.primary_metric",
               f"must be one of {', '.join(PRIMARY_METRICS)}")
        _check(self.auto_threshold >= 0, "gate.auto_threshold", "must be >= 0")
        _check(self.improvement_rule in ("error_reduction", "relative", "absolute"),
               "gate.improvement_rule", "must be one of error_reduction, relative, absolute")
        _check(self.slice_tolerance > 0, "gate.slice_tolerance", "must be > 0")
        _check(self.latency_ratio >= 1, "gate.latency_ratio", "must be >= 1")
        _check(0 < self.confidence < 1, "gate.confidence", "must be in (0, 1)")
        _check(self.bootstrap >= 100, "gate.bootstrap", "must be >= 100")
        _check(self.eval_days > 0, "gate.eval_days", "must be > 0")


@dataclass(frozen=True)
class CanaryConfig:
    """The progressive rollout and how a canary is judged on live traffic.

    The live metric is accuracy on labelled responses, compared within the same time
    buckets (``stratum_hours``) as a Mantel-Haenszel risk difference and judged with an
    anytime-valid confidence sequence (:mod:`driftloop.decide.sequential`), so checking the
    cumulative data on every run keeps the error rate ``alpha``. The rule
    (:func:`driftloop.decide.canary.quality_decision`): rollback when the canary is credibly worse
    (CS upper bound < 0); advance when it is credibly not worse by more than ``tolerance``
    (CS lower bound > -tolerance), or, at a step before the last, once it has
    ``min_labelled`` labels and is not credibly worse; complete (advance to 100) also when
    the label budget (a canary worse by ``tolerance`` is caught with ``power``) is spent and
    it is still not credibly worse; hold otherwise.

    Attributes:
        steps: canaryTrafficPercent steps; the last must be 100 (full rollout).
        min_labelled: Labelled responses each version needs before any quality verdict
            (the normal approximation behind the CS), and what the canary needs to leave a
            step before the last when it is not credibly worse (a screen for gross
            failures: at 100 canary labels the CS half-width is ~0.1).
        tolerance: The canary may be at most this much less accurate (absolute) and still
            advance; it also sets the label budget (:attr:`labels_needed` of an analysis).
        z: Unused since the sequential rule (kept so old configs still load).
        alpha: Two-sided error level of the confidence sequence over all runs: an equally
            good canary is rolled back with probability <= alpha (about alpha / 2).
        power: Probability that a canary worse by ``tolerance`` is rolled back once the
            label budget is spent (the budget is planned for it).
        stratum_hours: Width of the time buckets (from the Unix epoch, UTC; 24 = calendar
            days) within which canary and champion are compared; buckets where only one
            version served carry no weight.
        skip_steps: Overwhelming evidence (CS lower bound > +tolerance) goes straight to 100
            (off by default: every step also checks error rate and latency at its load).
        min_requests: Requests each version needs before the error-rate and latency rules
            give a verdict.
        max_error_rate_increase: Rollback when the canary's error rate credibly exceeds the
            champion's by more than this (absolute; CS lower bound of the increase).
        latency_ratio: Rollback when the canary's p95 latency exceeds this multiple of the
            champion's.
        max_holds: Runs in a row a canary may hold at one step **without a new labelled
            canary response**; the next such hold rolls it back (a backstop when labels stop
            coming, e.g. the traffic moved on to data neither model knows). Holds while
            labels flow do not count: the label budget decides those. 14 = two weeks of
            daily runs.
        max_days: The final look: this many days after the canary's first response an
            inconclusive canary is decided by one fixed-sample test (rollback when its
            ``1 - alpha`` interval lies below 0, else complete). Within the 30-day
            lookback, so the canary's whole history is still read; at 500 labels a day
            the budget needs ~21 days for a canary 2 points worse
            (``benchmarks/canary_power.py``).
    """

    steps: tuple[int, ...] = (10, 50, 100)
    min_labelled: int = 100
    tolerance: float = 0.02
    z: float = 1.96
    max_error_rate_increase: float = 0.02
    latency_ratio: float = 1.5
    max_holds: int = 14
    max_days: float = 28.0
    alpha: float = 0.05
    power: float = 0.95
    stratum_hours: float = 24.0
    skip_steps: bool = False
    min_requests: int = 500

    def __post_init__(self) -> None:
        _check(self.max_holds >= 1, "canary.max_holds", "must be >= 1")
        _check(self.max_days > 0, "canary.max_days", "must be > 0")
        _check(bool(self.steps) and self.steps[-1] == 100, "canary.steps", "must end at 100")
        _check(all(0 < a < b for a, b in zip(self.steps, self.steps[1:], strict=False))
               and self.steps[0] > 0, "canary.steps", "must be increasing percentages > 0")
        _check(self.min_labelled >= 1, "canary.min_labelled", "must be >= 1")
        _check(self.tolerance > 0, "canary.tolerance", "must be > 0")
        _check(0 < self.alpha < 1, "canary.alpha", "must be in (0, 1)")
        _check(0.5 <= self.power < 1, "canary.power", "must be in [0.5, 1)")
        _check(self.stratum_hours > 0, "canary.stratum_hours", "must be > 0")
        _check(self.min_requests >= 1, "canary.min_requests", "must be >= 1")


@dataclass(frozen=True)
class ABConfig:
    """How an A/B test is judged (:func:`driftloop.decide.ab.analyse_ab`).

    The primary metric is accuracy on labelled, keyed responses, compared within the same
    time buckets (``stratum_hours``) as a Mantel-Haenszel risk difference with a per-user
    (cluster-robust) variance, judged with the canary's anytime-valid confidence sequence
    (:mod:`driftloop.decide.sequential`): every run may look, the error rate stays ``alpha``.

    Attributes:
        alpha: Two-sided error level over all looks: P(a winner is declared when the
            variants are equal) <= alpha (split over the comparisons with the control).
        power: Probability of declaring the better variant when it is better by ``mde``
            once the planned sample is in (the power calculation behind ``labels_needed``).
        mde: Minimum detectable effect (absolute accuracy difference) of the power
            calculation; also the futility margin: a test whose interval lies inside
            ``(-mde, +mde)`` stops without a winner.
        min_effect: A winner's interval must lie above this (0: credibly better at all).
        min_labelled: Labelled keyed responses every variant needs before any verdict
            (the normal approximation behind the interval).
        stratum_hours: Width of the time buckets (24 = calendar days) variants are compared
            within, for traffic whose mix changes over the test.
        max_days: Stop rule: the test stops after this many days without a winner.
        min_requests: Requests every variant needs before the error-rate and latency
            guardrails give a verdict.
        max_error_rate_increase: A variant whose error rate credibly exceeds the
            control's by more than this (absolute) cannot win.
        latency_ratio: A variant whose p95 latency exceeds this multiple of the control's
            cannot win.
        auto_promote: Promote the winner through the normal rollout (a canary start) at
            once; False: report it for approval (``needs_approval``).
    """

    alpha: float = 0.05
    power: float = 0.9
    mde: float = 0.02
    min_effect: float = 0.0
    min_labelled: int = 100
    stratum_hours: float = 24.0
    max_days: float = 28.0
    min_requests: int = 500
    max_error_rate_increase: float = 0.02
    latency_ratio: float = 1.5
    auto_promote: bool = False

    def __post_init__(self) -> None:
        _check(0 < self.alpha < 1, "ab.alpha", "must be in (0, 1)")
        _check(0.5 <= self.power < 1, "ab.power", "must be in [0.5, 1)")
        _check(0 < self.mde < 1, "ab.mde", "must be in (0, 1)")
        _check(0 <= self.min_effect < self.mde, "ab.min_effect", "must be in [0, mde)")
        _check(self.min_labelled >= 1, "ab.min_labelled", "must be >= 1")
        _check(self.stratum_hours > 0, "ab.stratum_hours", "must be > 0")
        _check(self.max_days > 0, "ab.max_days", "must be > 0")
        _check(self.min_requests >= 1, "ab.min_requests", "must be >= 1")
        _check(self.max_error_rate_increase >= 0, "ab.max_error_rate_increase", "must be >= 0")
        _check(self.latency_ratio >= 1, "ab.latency_ratio", "must be >= 1")


@dataclass(frozen=True)
class CurationConfig:
    """Curated feedback (:mod:`driftloop.decide.disagreement`, ``decide.review``, ``data.curate``).

    ``disagree_*``: the disagreement rule (two-sided level of its confidence sequence, the
    least rise at the same class mix that fires, the recent window, rows each side
    needs); ``review_*``: the queue's size and the days of candidates; ``dedup``:
    near-duplicates count once in training; ``source_*``: the feedback-source test
    (family-wise false-exclusion rate, least agreement shortfall, labels needed).
    """

    disagree_alpha: float = 0.02
    disagree_rise: float = 0.05
    disagree_window_days: float = 3.0
    disagree_min_rows: int = 100
    review_size: int = 200
    review_days: float = 3.0
    dedup: bool = True
    source_alpha: float = 0.01
    source_margin: float = 0.15
    source_min_labels: int = 20

    def __post_init__(self) -> None:
        _check(0 < self.disagree_alpha < 1, "curation.disagree_alpha", "must be in (0, 1)")
        _check(0 < self.disagree_rise < 1, "curation.disagree_rise", "must be in (0, 1)")
        _check(self.disagree_window_days > 0, "curation.disagree_window_days", "must be > 0")
        _check(self.disagree_min_rows >= 1, "curation.disagree_min_rows", "must be >= 1")
        _check(self.review_size >= 0, "curation.review_size", "must be >= 0")
        _check(self.review_days > 0, "curation.review_days", "must be > 0")
        _check(0 < self.source_alpha < 1, "curation.source_alpha", "must be in (0, 1)")
        _check(0 <= self.source_margin < 1, "curation.source_margin", "must be in [0, 1)")
        _check(self.source_min_labels >= 1, "curation.source_min_labels", "must be >= 1")


PRIMARY_METRICS: tuple[str, ...] = (
    "accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc",
)


@dataclass(frozen=True)
class SinkConfig:
    """The payload sink's group commit (:mod:`driftloop.serving.sink_commit`).

    Attributes:
        commit_max_batch: Most lines (one per event write) one fsync round takes. ``1``:
            no group commit, each event written and fsync'd on its own (the per-event
            baseline of ``benchmarks/sink_throughput.py``).
        commit_max_wait_ms: Longest wait, after a batch's first line, for more lines
            before its fsync; the committer waits only while other events are being
            handled (PostgreSQL's ``commit_delay`` / ``commit_siblings``). It bounds the
            latency a batch adds: 2 ms against the 20 ms p99 target.
    """

    commit_max_batch: int = 512
    commit_max_wait_ms: float = 2.0

    def __post_init__(self) -> None:
        _check(isinstance(self.commit_max_batch, int) and not isinstance(
            self.commit_max_batch, bool) and 1 <= self.commit_max_batch <= 65_536,
            "sink.commit_max_batch", "must be an integer from 1 to 65536")
        _check(0 <= self.commit_max_wait_ms <= 1000, "sink.commit_max_wait_ms",
               "must be from 0 to 1000 (milliseconds)")


@dataclass(frozen=True)
class NotifyConfig:
    """Where notifications go.

    Attributes:
        backend: ``none``, ``log``, ``webhook`` or ``smtp``.
        webhook_url: Target of the JSON POST (webhook backend).
        smtp_host: SMTP server host (smtp backend).
        smtp_port: SMTP server port.
        sender: From address.
        recipients: To addresses.
        timeout_s: Network timeout of one delivery.
    """

    backend: str = "log"
    webhook_url: str | None = None
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    sender: str = "driftloop@localhost"
    recipients: tuple[str, ...] = ()
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _check(self.backend in ("none", "log", "webhook", "smtp"), "notify.backend",
               "must be none, log, webhook or smtp")
        _check(self.backend != "webhook" or bool(self.webhook_url), "notify.webhook_url",
               "is required for the webhook backend")
        _check(self.backend != "smtp" or bool(self.recipients), "notify.recipients",
               "at least one is required for the smtp backend")


@dataclass(frozen=True)
class IngestConfig:
    """How the lookback is read.

    Attributes:
        shards: Shards the lookback's files are split into (by the CRC-32 of each file's
            key, :func:`driftloop.data.ingest.shard_owns`): one ``ingest_shard`` pod each
            in the pipeline (its ``ingest_shards`` parameter), one call each in process.
            The merged records are those of one reading (:func:`~driftloop.data.ingest.
            merge_parts`).
    """

    shards: int = 1

    def __post_init__(self) -> None:
        _check(self.shards >= 1, "ingest.shards", "must be >= 1")


@dataclass(frozen=True)
class RuntimeConfig:
    """How the process uses the machine.

    Attributes:
        max_threads: Threads the OpenMP and BLAS pools (scikit-learn, numpy, scipy) and
            pyarrow may start (:mod:`driftloop.threads`). ``0`` (default): decided from
            the CPUs the process may really use: every usable CPU (affinity, cgroup quota:
            a pod's CPU limit) for batch work when they are reserved for it, else 1.
            ``N > 0``: that many, never more than the usable CPUs. ``-1``: driftloop
            leaves every library at its own default (for comparison:
            ``benchmarks/threads.py``).
    """

    max_threads: int = 0

    def __post_init__(self) -> None:
        _check(self.max_threads >= -1, "runtime.max_threads",
               "must be >= 1, 0 (decide from the machine) or -1 (library defaults)")


@dataclass(frozen=True)
class Config:
    """Every step's configuration."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    ab: ABConfig = field(default_factory=ABConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)


_SECTIONS: dict[str, type] = {
    "ingest": IngestConfig,
    "drift": DriftConfig,
    "trigger": TriggerConfig,
    "train": TrainConfig,
    "tuning": TuningConfig,
    "gate": GateConfig,
    "notify": NotifyConfig,
    "canary": CanaryConfig,
    "ab": ABConfig,
    "sink": SinkConfig,
    "runtime": RuntimeConfig,
    "curation": CurationConfig,
}


def config_from_dict(raw: dict[str, object], source: str = "<config>") -> Config:
    """Build a :class:`Config` from ``{"drift": {...}, "trigger": {...}, ...}``.

    Missing sections and fields keep their defaults; unknown ones are an error naming them.
    """
    import dataclasses

    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}")
    sections: dict[str, object] = {}
    for name, cls in _SECTIONS.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {name!r} must be an object")
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(values) - known
        if bad:
            raise ConfigError(f"{source}: {name}: unknown field(s) {sorted(bad)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        sections[name] = cls(**fixed)
    return Config(**sections)  # type: ignore[arg-type]
