"""Reading a run back: every typed result a run recorded under ``runs/<run-id>/``.

Writing them is :mod:`driftloop.data.runs` (a low floor: any step records there);
reading them back needs every result type, so it lives up here with the steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from driftloop.data.ingest import (
    IngestReport,
)
from driftloop.data.runs import RunStatus
from driftloop.data.storage import Store
from driftloop.decide.drift import (
    DriftReport,
)
from driftloop.decide.gate import Verdict
from driftloop.decide.trigger import (
    RetrainDecision,
)
from driftloop.errors import DriftloopError
from driftloop.models.registry import AliasState
from driftloop.rollout.progressive import RolloutStep
from driftloop.serde import loads
from driftloop.steps.ab import ABOutcome
from driftloop.steps.review import CurationOutcome
from driftloop.steps.train import (
    TrainSummary,
)


@dataclass
class RunRecord:
    """Everything one run recorded under ``runs/<run-id>/`` (``None``: not recorded)."""

    run_id: str
    ingest: IngestReport | None = None
    drift: DriftReport | None = None
    decision: RetrainDecision | None = None
    train: TrainSummary | None = None
    verdict: Verdict | None = None
    aliases: AliasState | None = None
    rollout: RolloutStep | None = None
    status: RunStatus | None = None
    ab: ABOutcome | None = None
    curation: CurationOutcome | None = None
    recorded: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The decision chain, one line per step that ran."""
        out = []
        if self.ingest is not None:
            out.append(f"ingest   {self.ingest.summary()}")
        if self.drift is not None:
            out.append(f"drift    {self.drift.status}: "
                       + ("; ".join(self.drift.reasons) or "no feature drifted"))
        elif self.decision is not None:
            out.append("drift    skipped: no champion yet")
        if self.decision is not None:
            out.append(f"decide   {'retrain' if self.decision.retrain else 'no retrain'}: "
                       + "; ".join(self.decision.reasons))
        if self.curation is not None:
            d, q = self.curation.disagreements, self.curation.review
            rate = f" ({d.rate:.1%})" if d.labelled else ""
            out.append(f"curate   {d.disagreements} of {d.labelled} recent labels disagree "
                       f"with the champion{rate}; {q.queued} of {q.candidates} unlabelled "
                       "queued for review")
        if self.train is not None:
            t = self.train
            score = "n/a" if t.validation_score is None else f"{t.validation_score:.3f}"
            out.append(f"train    {t.version}: {t.train_rows} rows, validation "
                       f"{t.primary_metric}={score}")
        if self.verdict is not None:
            out.append(f"evaluate {self.verdict.decision}: " + "; ".join(self.verdict.reasons))
        if self.aliases is not None:
            out.append(f"registry champion={self.aliases.champion} "
                       f"previous={self.aliases.previous}")
        if self.rollout is not None:
            r = self.rollout
            out.append(f"rollout  {r.action} {r.version} {r.from_percent}% -> "
                       f"{r.to_percent}%: " + "; ".join(r.reasons))
        if self.ab is not None:
            for a in self.ab.analyses:
                out.append(f"ab       {a.test_id} {a.decision}"
                           + (f" winner {a.winner}" if a.winner else "") + ": "
                           + "; ".join(a.reasons))
        if self.status is not None:
            extra = f": {self.status.error}" if self.status.error else ""
            out.append(f"status   {self.status.state}{extra}")
        return out


#: What a run writes under ``runs/<run-id>/`` (``<name>.json``, some also ``.md``), in order.
_RECORD_TYPES: dict[str, type[Any]] = {
    "ingest": IngestReport, "drift": DriftReport, "decision": RetrainDecision,
    "train": TrainSummary, "verdict": Verdict, "aliases": AliasState,
    "rollout": RolloutStep, "status": RunStatus, "ab": ABOutcome,
    "curation": CurationOutcome,
}


def list_runs(store: Store) -> list[str]:
    """The ids of every run recorded in the store, sorted."""
    return sorted({key.split("/")[1] for key in store.list("runs") if key.count("/") >= 2})


def read_run(store: Store, run_id: str) -> RunRecord:
    """Read back what run ``run_id`` recorded.

    Raises:
        DriftloopError: The store has no record of the run.
    """
    record = RunRecord(run_id)
    for name, cls in _RECORD_TYPES.items():
        key = f"runs/{run_id}/{name}.json"
        if store.exists(key):
            setattr(record, name, loads(cls, store.read_text(key)))
            record.recorded.append(name)
    if not record.recorded:
        raise DriftloopError(f"{store.url(f'runs/{run_id}')}: no run recorded under this id")
    return record
