"""An A/B test through the local gateway over real HTTP on 127.0.0.1, decided by the analysis.

A frozen model trained before a concept drift ("static") and one trained after it (the
champion, "retrained") serve drifted traffic side by side. The test is started with
``driftloop.steps.ab.start_ab`` on the local backend; simulated users send requests to the
gateway with their id in the ``x-user-id`` header or in the instances' ``user_id`` field
(a few send none); the gateway plays KServe's payload logger into the real sink, and every
prediction gets its true label through the sink's ``POST /feedback``. The in-process
``ab-analysis`` pipeline (ingest, then the A/B step) then reads the store: every user stayed
in one variant, the retrained variant wins, and the decided test is taken off the gateway.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import httpx
import numpy as np
import pandas as pd
import pytest

from driftloop.config import ABConfig, Config, TrainConfig
from driftloop.data.storage import LocalStore
from driftloop.decide.ab_assign import KEYED_HEADER, VARIANT_HEADER, Variant
from driftloop.demo.sample import make_rows, sample_schema
from driftloop.models.registry import Registry
from driftloop.models.train import save_model_artifact, train_model
from driftloop.rollout import version_storage_uri
from driftloop.rollout.gateway import LocalGateway
from driftloop.rollout.local import LocalRolloutBackend
from driftloop.serving.server import start_app
from driftloop.serving.sink import PayloadSink, create_app
from driftloop.steps.ab import start_ab
from driftloop.steps.loop import run_ab_analysis

MODEL = "sample"
STATIC, RETRAINED = "v-static", "v-retrained"
USERS = 30
#: Instances per request (one user's).
PER_REQUEST = 4
pytestmark = pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")


def test_an_ab_test_keeps_users_in_one_variant_and_declares_the_better_one(tmp_path) -> None:
    store = LocalStore(tmp_path / "store", create=True)
    registry = Registry(store, MODEL)
    rng = np.random.default_rng(21)
    trained_at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for version, drifted in ((STATIC, False), (RETRAINED, True)):
        rows = make_rows(600, rng, drifted=drifted)
        frame = rows.assign(id=[f"{version}-{i}" for i in range(len(rows))],
                            timestamp=pd.Timestamp(trained_at))
        result = train_model(frame, sample_schema(), TrainConfig(max_iter=40, seed=7),
                             model_name=MODEL, version=version, now=trained_at)
        registry.register(save_model_artifact(result, tmp_path / version))
    registry.promote(RETRAINED, reason="trained after the drift", run_id="seed")
    backend = LocalRolloutBackend(tmp_path / "rollout", MODEL, "ml")
    backend.ensure(version_storage_uri(registry, RETRAINED))

    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    test, note = start_ab(store, MODEL, [Variant("static", STATIC, 0.5),
                                         Variant("retrained", "champion", 0.5)],
                          test_id="static-vs-retrained", now=started, backend=backend)
    assert "configured" in note

    sink = PayloadSink(store)
    server = start_app(create_app(sink))
    seen: dict[str, set[str]] = defaultdict(set)
    traffic = make_rows(480, np.random.default_rng(22), drifted=True).to_dict(orient="records")
    unkeyed = 0
    try:
        with LocalGateway(backend, model_name=MODEL, logger_url=f"{server.url}/",
                          ab_seed=3) as gateway, \
                httpx.Client(base_url=gateway.url, timeout=30.0) as client:
            feedback = []
            for i in range(len(traffic) // PER_REQUEST):
                rows = traffic[i * PER_REQUEST:(i + 1) * PER_REQUEST]
                user = f"user-{i % USERS}"
                instances = [{"id": f"r{i}-{k}", "x0": row["x0"], "x1": row["x1"],
                              "segment": row["segment"]} for k, row in enumerate(rows)]
                headers = {}
                if i % 20 == 19:
                    user = ""  # no key: the random split, counted apart
                    unkeyed += len(rows)
                elif i % USERS < USERS // 2:
                    headers["x-user-id"] = user
                else:  # one user's request: the key in every instance
                    instances = [{**inst, "user_id": user} for inst in instances]
                answer = client.post(f"/v1/models/{MODEL}:predict",
                                     json={"instances": instances}, headers=headers)
                assert answer.status_code == 200, answer.text
                assert answer.headers[KEYED_HEADER] == ("true" if user else "false")
                if user:
                    seen[user].add(answer.headers[VARIANT_HEADER])
                feedback += [{"id": inst["id"], "label": row["label"]}
                             for inst, row in zip(instances, rows, strict=True)]
            stored = httpx.post(f"{server.url}/feedback", json=feedback, timeout=30.0)
            assert stored.status_code == 200, stored.text
            assert gateway.log_failures == 0
    finally:
        server.stop()
        sink.close()

    # sticky: every keyed user saw exactly one variant, and both variants have users
    assert all(len(v) == 1 for v in seen.values()) and len(seen) == USERS
    assert {next(iter(v)) for v in seen.values()} == {"static", "retrained"}

    config = Config(ab=ABConfig(min_labelled=60, min_requests=60))
    outcome = run_ab_analysis(store, sample_schema(), MODEL, now=dt.datetime.now(dt.UTC),
                              run_id="ab-e2e", backend=backend, config=config)
    (analysis,) = outcome.analyses
    assert analysis.mixed_users == 0
    assert (analysis.decision, analysis.winner) == ("winner", "retrained"), analysis.reasons
    stats = {s.name: s for s in analysis.variants}
    assert sum(s.unkeyed for s in stats.values()) == unkeyed
    assert stats["retrained"].accuracy > stats["static"].accuracy
    assert sum(s.labelled for s in stats.values()) == len(traffic) - unkeyed
    # the decided test is off the gateway's path
    assert outcome.stopped == [test.test_id] and not backend.ab_path.exists()
