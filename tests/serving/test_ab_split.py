"""The local gateway's sticky A/B split, over real HTTP on 127.0.0.1, and what the sink keeps.

Two real registered models behind real kserve servers; the test is started and stopped on
the local backend (``start_ab`` / ``stop_ab``) while the gateway runs.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from driftloop.config import TrainConfig
from driftloop.data.storage import LocalStore
from driftloop.data.validate import SERVED_COLUMNS
from driftloop.decide.ab_assign import (
    KEY_COLUMN,
    KEYED_COLUMN,
    KEYED_HEADER,
    TEST_COLUMN,
    VARIANT_COLUMN,
    VARIANT_HEADER,
    ABTest,
    Variant,
    assign,
)
from driftloop.demo.sample import make_rows, sample_schema, write_sample_store
from driftloop.errors import DriftloopError
from driftloop.models.registry import Registry
from driftloop.models.train import save_model_artifact, train_model
from driftloop.rollout import version_storage_uri
from driftloop.rollout.ab_graph import BUCKET_FIELD
from driftloop.rollout.gateway import LocalGateway
from driftloop.rollout.local import LocalRolloutBackend
from driftloop.serving.sink_events import AB_ANNOTATIONS, AB_BUCKET_FIELD, build_records

MODEL = "sample"
pytestmark = pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")


@pytest.fixture(scope="module")
def uris(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ab") / "store"
    write_sample_store(root, days=1, rows_per_day=20, reference_rows=400, seed=5)
    reference = pd.read_parquet(root / f"reference/{MODEL}/seed.parquet")
    registry = Registry(LocalStore(root), MODEL)
    for version, it in (("v-static", 30), ("v-new", 5)):
        result = train_model(reference, sample_schema(), TrainConfig(max_iter=it, seed=1),
                             model_name=MODEL, version=version,
                             now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        registry.register(save_model_artifact(result, root.parent / version))
    return {v: version_storage_uri(registry, v) for v in ("v-static", "v-new")}


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    return make_rows(20, np.random.default_rng(3), drifted=False)[
        ["x0", "x1", "segment"]].to_dict(orient="records")


def _test(**kw: Any) -> ABTest:
    return ABTest("t1", MODEL, (Variant("static", "v-static", 0.3),
                                Variant("retrained", "champion", 0.7)), **kw)


def _predict(client: httpx.Client, instances: list[dict[str, Any]],
             headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(f"/v1/models/{MODEL}:predict", json={"instances": instances},
                       headers=headers or {})


def test_each_user_stays_in_one_variant_and_unkeyed_requests_are_counted_apart(
        tmp_path: Path, uris: dict[str, str], rows: list[dict[str, Any]]) -> None:
    backend = LocalRolloutBackend(tmp_path / "state", MODEL, "ml")
    backend.ensure(uris["v-new"])
    test = _test()
    with LocalGateway(backend, model_name=MODEL, ab_seed=1) as gateway, \
            httpx.Client(base_url=gateway.url, timeout=10.0) as client:
        assert _predict(client, rows[:1]).headers.get(VARIANT_HEADER) is None  # no test yet
        routes = backend.start_ab(test)
        assert routes.routes == {"static": uris["v-static"], "retrained": ""}
        seen: dict[str, set[str]] = {}
        for i in range(120):
            user = f"u{i % 40}"
            # the key in the header for even rounds, in every instance's field otherwise
            if i % 2:
                answer = _predict(client, [{**rows[i % 20], "user_id": user}] * 2)
            else:
                answer = _predict(client, [rows[i % 20]], {"X-User-Id": user})
            assert answer.status_code == 200, answer.text
            variant = answer.headers[VARIANT_HEADER]
            assert answer.headers[KEYED_HEADER] == "true"
            # the variant's model answered: a pinned version, or the service's split
            version = answer.json()["model_version"]
            assert version == ("v-static" if variant == "static" else "v-new")
            assert variant == assign(test, user, random.Random(0)).variant
            seen.setdefault(user, set()).add(variant)
        assert all(len(v) == 1 for v in seen.values())
        shares = Counter(next(iter(v)) for v in seen.values())
        assert set(shares) == {"static", "retrained"}
        unkeyed = Counter(_predict(client, rows[:1]).headers[VARIANT_HEADER] for _ in range(60))
        assert unkeyed["static"] + unkeyed["retrained"] == 60 and min(unkeyed.values()) > 5
        assert sum(n for (_, keyed), n in gateway.ab_served.items() if not keyed) == 60
        assert sum(n for (_, keyed), n in gateway.ab_served.items() if keyed) == 120
        mixed = _predict(client, [{**rows[0], "user_id": "a"}, {**rows[1], "user_id": "b"}])
        assert mixed.status_code == 400 and "instances[*].user_id" in mixed.json()["error"]
        backend.stop_ab(test)
        after = _predict(client, rows[:1], {"X-User-Id": "u1"})
        assert VARIANT_HEADER not in after.headers and after.json()["model_version"] == "v-new"
        assert gateway.ab_test() is None


def test_start_ab_refuses_a_second_test_and_a_missing_version(
        tmp_path: Path, uris: dict[str, str]) -> None:
    backend = LocalRolloutBackend(tmp_path / "state", MODEL, "ml")
    backend.ensure(uris["v-new"])
    backend.start_ab(_test())
    other = ABTest("t2", MODEL, (Variant("a", "v-static", 0.5), Variant("b", "champion", 0.5)))
    with pytest.raises(DriftloopError, match="t1 is running"):
        backend.start_ab(other)
    backend.stop_ab(other)  # not the running one: nothing happens
    assert backend.ab_path.exists()
    backend.stop_ab(_test())
    assert not backend.ab_path.exists()
    gone = ABTest("t3", MODEL, (Variant("a", "v-nope", 0.5), Variant("b", "champion", 0.5)))
    with pytest.raises(DriftloopError, match=r"ab.variants\[a\].target: .*v-nope is not a model"):
        backend.start_ab(gone)


def test_the_logged_pairs_become_records_with_the_ab_columns(
        tmp_path: Path, uris: dict[str, str], rows: list[dict[str, Any]]) -> None:
    from driftloop.serving.server import start_app
    from driftloop.serving.sink import PayloadSink, create_app

    store = LocalStore(tmp_path / "sink", create=True)
    sink = PayloadSink(store)
    server = start_app(create_app(sink))
    backend = LocalRolloutBackend(tmp_path / "state", MODEL, "ml")
    backend.ensure(uris["v-new"])
    backend.start_ab(_test())
    try:
        with LocalGateway(backend, model_name=MODEL, logger_url=f"{server.url}/",
                          ab_seed=2) as gateway, \
                httpx.Client(base_url=gateway.url, timeout=10.0) as client:
            sent = {}
            for i in range(12):
                headers = {"x-user-id": f"h{i}"} if i < 6 else {}
                answer = _predict(client, [{**rows[i], "id": f"r{i}"}], headers)
                sent[f"r{i}"] = answer.headers[VARIANT_HEADER]
            assert gateway.log_failures == 0
    finally:
        server.stop()
        sink.close()
    records = [json.loads(line) for key in store.list("requests")
               for line in store.read_text(key).splitlines() if line.strip()]
    by_id = {r["id"]: r for r in records}
    assert set(by_id) == set(sent)
    for rid, variant in sent.items():
        r = by_id[rid]
        keyed = int(rid[1:]) < 6
        assert (r[VARIANT_COLUMN], r[KEYED_COLUMN], r[TEST_COLUMN]) == (variant, keyed, "t1")
        assert r.get(KEY_COLUMN) == (f"h{rid[1:]}" if keyed else None)
        assert r["model_version"] == ("v-static" if variant == "static" else "v-new")


def test_a_cluster_variants_events_make_the_same_columns() -> None:
    """KServe's logger sends only the variant service's annotations: keyed = a bucket."""
    from driftloop.serving.sink_events import parse_cloudevent

    annotations = json.dumps({"driftloop.io/ab-test": "t1", "driftloop.io/ab-variant": "static",
                              "driftloop.io/ab-key-field": "user_id", "other": "x"})
    events = []
    for side, body in (("request", {"instances": [
            {"id": "a", "x0": 1.0, "user_id": "u7", BUCKET_FIELD: 12}, {"id": "b", "x0": 2.0}]}),
            ("response", {"predictions": [{"label": "yes"}, {"label": "no"}]})):
        headers = {"ce-id": "e1", "ce-type": f"org.kubeflow.serving.inference.{side}",
                   "ce-source": "pod", "ce-specversion": "1.0", "ce-annotations": annotations,
                   "content-type": "application/json"}
        events.append(parse_cloudevent(headers, json.dumps(body).encode()))
    a, b = build_records("e1", *events)
    assert (a[VARIANT_COLUMN], a[KEYED_COLUMN], a[KEY_COLUMN], a[TEST_COLUMN]) == (
        "static", True, "u7", "t1")
    assert (b[VARIANT_COLUMN], b[KEYED_COLUMN], b.get(KEY_COLUMN)) == ("static", False, None)
    assert "other" not in a and "ab_key_field" not in a


def test_the_names_agree_across_the_floors() -> None:
    # data/validate.py sits below decide/ and cannot import these names
    assert {VARIANT_COLUMN, KEYED_COLUMN, TEST_COLUMN, KEY_COLUMN} <= set(SERVED_COLUMNS)
    assert {VARIANT_COLUMN, KEYED_COLUMN, TEST_COLUMN, KEY_COLUMN} <= set(AB_ANNOTATIONS.values())
    assert AB_BUCKET_FIELD == BUCKET_FIELD
