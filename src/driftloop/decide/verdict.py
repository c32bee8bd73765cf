"""The gate's typed results and how a verdict reads: rules, scores, Markdown, next steps.

:mod:`driftloop.decide.gate` decides; this module holds what it decides *into*: one
:class:`RuleResult` per rule, a :class:`SliceCheck` per slice, a :class:`ModelScore` per
model, the :class:`GateDecision` of the rules alone and the :class:`Verdict` the loop
stores, with its Markdown (the KFP UI, notifications) and the commands a person can run
next. It is its own module because the latency measurement
(:mod:`driftloop.decide.latency`) and the gate both build :class:`RuleResult` values, and
readers of stored verdicts (the loop, reports) need the types without the scoring code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from driftloop.serde import JsonResult

__all__ = [
    "GateDecision",
    "ModelScore",
    "RuleResult",
    "SliceCheck",
    "Verdict",
    "fmt",
    "next_steps_for",
]


@dataclass
class RuleResult:
    """One gate rule: what was measured, against what, and the verdict in a sentence."""

    name: str
    passed: bool
    measured: float | None
    threshold: float | None
    detail: str


@dataclass
class SliceCheck:
    """How one slice was judged by the slice rule.

    ``drop`` is champion - challenger on the slice (positive: the challenger is worse),
    ``drop_low`` the lower bound of that drop at the Bonferroni level of the judged
    slices (None when not judged); ``failed`` means credibly worse by more than the
    tolerance (Holm step-down).
    """

    key: str
    n: int
    drop: float | None
    drop_low: float | None
    judged: bool
    failed: bool


@dataclass
class ModelScore:
    """One model's scores on the eval set.

    Latency is per row, in milliseconds of the calling thread's CPU time: the model's
    ``predict_proba`` on single-row frames (closer to serving than batch time / n),
    the fastest of the repeats of each row, then the 50th/95th percentile over the
    sampled rows (see :func:`measure_latency`). It excludes HTTP, payload decoding and
    time spent waiting (for a core, the GIL, I/O).
    ``slices`` maps ``column=value`` (or ``class=<true label>`` without a slice column)
    to that slice's metrics and ``n``.
    """

    version: str
    n: int
    metrics: dict[str, float]
    latency_p50_ms: float
    latency_p95_ms: float
    slices: dict[str, dict[str, float]]


@dataclass
class Verdict(JsonResult):
    """The gate's decision with every rule behind it.

    ``improvement_rel`` holds the improvement measured under ``improvement_rule``
    (the name is kept for old readers; verdicts written before the rule existed used
    ``relative``). ``labels`` is the class set both models were scored over,
    ``next_steps`` the commands a person can run (shown in the Markdown).
    """

    decision: str
    first_model: bool
    reasons: list[str]
    rules: list[RuleResult]
    primary_metric: str
    improvement_rel: float | None
    ci_low: float | None
    ci_high: float | None
    champion: ModelScore | None
    challenger: ModelScore
    created_at: str
    confidence: float = 0.95
    improvement_rule: str = "relative"
    labels: list[str] = field(default_factory=list)
    slice_checks: list[SliceCheck] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """Render the verdict for the KFP UI / a notification."""
        return _markdown(self)


@dataclass
class GateDecision:
    """The gate's rules applied to predictions (see :func:`gate_decision`).

    ``improvement`` is measured under the config's ``improvement_rule``; ``diff`` is
    challenger - champion on the primary metric; ``labels`` the class set averaged over.
    """

    decision: str
    reasons: list[str]
    rules: list[RuleResult]
    labels: list[str]
    diff: float
    improvement: float
    ci_low: float
    ci_high: float
    champion_metrics: dict[str, float]
    challenger_metrics: dict[str, float]
    champion_slices: dict[str, dict[str, float]]
    challenger_slices: dict[str, dict[str, float]]
    slice_checks: list[SliceCheck]


def fmt(value: float | None, spec: str = ".4f") -> str:
    """``value`` formatted with ``spec``; ``n/a`` when missing or not finite."""
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def _markdown(v: Verdict) -> str:
    pm = v.primary_metric
    lines = [f"## Verdict: {v.decision.upper()}", "", *[f"- {r}" for r in v.reasons], ""]
    if v.next_steps:
        lines += ["### What to do", "", *[f"- {s}" for s in v.next_steps], ""]
    lines += ["| rule | passed | measured | threshold | detail |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {'yes' if r.passed else 'NO'} | {fmt(r.measured)} | "
              f"{fmt(r.threshold)} | {r.detail} |" for r in v.rules]
    scores = [s for s in (v.champion, v.challenger) if s is not None]
    lines += ["", "| model | version | n | " + " | ".join(v.challenger.metrics)
              + " | p50 ms | p95 ms |", "|---" * (len(v.challenger.metrics) + 5) + "|"]
    for role, s in zip(("champion", "challenger")[-len(scores):], scores, strict=True):
        cells = " | ".join(fmt(s.metrics.get(m)) for m in v.challenger.metrics)
        lines.append(f"| {role} | {s.version} | {s.n} | {cells} | {s.latency_p50_ms:.3f} | "
                     f"{s.latency_p95_ms:.3f} |")
    checks = {c.key: c for c in v.slice_checks}
    lines += ["", f"| slice | n | champion {pm} | challenger {pm} | drop | drop lower bound "
              "| judged |", "|---|---|---|---|---|---|---|"]
    for key, vals in v.challenger.slices.items():
        before = v.champion.slices.get(key, {}).get(pm) if v.champion else None
        c = checks.get(key)
        judged = "n/a" if c is None else ("FAILED" if c.failed else
                                          "yes" if c.judged else "no (too few rows)")
        lines.append(f"| {key} | {int(vals['n'])} | {fmt(before)} | {fmt(vals.get(pm))} | "
                     f"{fmt(c.drop if c else None, '+.4f')} | "
                     f"{fmt(c.drop_low if c else None, '+.4f')} | {judged} |")
    if v.labels:
        lines += ["", f"Class set: {', '.join(v.labels)}."]
    return "\n".join(lines) + "\n"


def next_steps_for(decision: str, version: str, store: str | None, model: str | None,
                   ) -> list[str]:
    """The commands a person can run after ``decision`` on ``version`` (in the Markdown)."""
    where = f"--store {store or 'STORE'} --model {model or 'MODEL'}"
    promote = f"`driftloop promote {version} {where}`"
    if decision == "needs_approval":
        return [f"approve: {promote} (starts a canary of {version})",
                "reject: no action needed: the champion keeps serving"]
    if decision == "promote":
        return [f"the loop starts a canary of {version}; to stop it: "
                f"`driftloop rollback {where}`"]
    return ["no action needed: the champion keeps serving",
            f"to ship {version} anyway (overriding the gate): {promote}"]
