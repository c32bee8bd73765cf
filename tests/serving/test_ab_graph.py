"""The cluster's A/B objects: an InferenceGraph Switch on the hash bucket, validated strictly.

Every object is deserialised strictly into kserve 0.20's own models
(``V1alpha1InferenceGraph``, ``V1beta1InferenceService``; tests/serving/test_manifest_models.py),
passes the graph webhook's rules (``inference_graph_validation.go``) and the InferenceService
admission; the Switch is evaluated the way KServe v0.20.0's router evaluates it
(``cmd/router/main.go`` ``pickupRouteByCondition``: the first step whose GJSON path exists)
and must put every key where the local gateway's ``assign`` puts it. The kubernetes backend
applies them through the real client against the API stand-in.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_manifest_models import model_problems
from test_rollout_kube import body_problems

from driftloop.decide.ab_assign import ABTest, Variant, assign
from driftloop.errors import DriftloopError
from driftloop.rollout.ab_graph import (
    BUCKET_FIELD,
    build_ab_objects,
    graph_problems,
    stamp_instances,
)
from driftloop.rollout.admission import schema_problems, webhook_problems
from driftloop.rollout.errors import RolloutError
from driftloop.rollout.inference_service import merge_patch
from driftloop.rollout.kube import KubeRolloutBackend, load_api_client
from standins.k8s_api import K8sApiStandIn

ROOT = Path(__file__).resolve().parents[2]
BASE_ISVC = yaml.safe_load((ROOT / "manifests/base/inferenceservice.yaml").read_text())
STATIC_URI = "gs://driftloop-bucket/driftloop/models/sample/v-static"


def _test(weights: tuple[float, float] = (0.3, 0.7)) -> ABTest:
    return ABTest("static-vs-retrained", "sample",
                  (Variant("static", "v-static", weights[0]),
                   Variant("retrained", "champion", weights[1])))


def _objects(test: ABTest) -> dict[str, Any]:
    return build_ab_objects(test, BASE_ISVC, {"static": STATIC_URI})


_QUERY = re.compile(r"^instances\.#\((\w+)<(\d+)\)$")


def route(graph: dict[str, Any], body: dict[str, Any], rng: random.Random) -> str:
    """The service KServe's router sends ``body`` to (the two GJSON forms we generate).

    ``instances.#(F<N)`` exists when some instance has a number ``F`` below ``N``;
    ``instances`` when the body has it. A Splitter picks by weight at random.
    """
    nodes = graph["spec"]["nodes"]
    node = nodes["root"]
    while True:
        if node["routerType"] == "Splitter":
            point, end = rng.randrange(100), 0
            for step in node["steps"]:
                end += step["weight"]
                if point < end:
                    break
        else:
            for step in node["steps"]:
                cond = step["condition"]
                if m := _QUERY.match(cond):
                    hit = any(isinstance(i.get(m[1]), int) and i[m[1]] < int(m[2])
                              for i in body.get("instances", []))
                else:
                    assert cond == "instances"
                    hit = "instances" in body
                if hit:
                    break
            else:
                raise AssertionError("404: None of the routes matched with the switch condition")
        if step.get("nodeName"):
            node = nodes[step["nodeName"]]
            continue
        return str(step["serviceName"])


def test_the_objects_are_what_kserve_accepts() -> None:
    objects = _objects(_test())
    graph, (pinned,) = objects["graph"], objects["services"]
    for doc in (graph, pinned):
        assert model_problems(doc)[1] == []
    assert graph_problems(graph) == []
    patched = merge_patch(copy.deepcopy(BASE_ISVC), objects["service_patch"])
    for isvc in (pinned, patched):
        assert model_problems(isvc)[1] == []
        assert schema_problems(isvc) == [] and webhook_problems(isvc, None) == []
        ann = isvc["metadata"]["annotations"]
        logger = isvc["spec"]["predictor"]["logger"]
        assert set(logger["metadataAnnotations"]) == {
            "driftloop.io/ab-test", "driftloop.io/ab-variant", "driftloop.io/ab-key-field"}
        assert ann["driftloop.io/ab-test"] == "static-vs-retrained"
    assert pinned["metadata"]["name"] == "driftloop-model-ab-static"
    assert pinned["spec"]["predictor"]["model"]["storageUri"] == STATIC_URI
    assert "canaryTrafficPercent" not in pinned["spec"]["predictor"]
    assert patched["metadata"]["annotations"]["driftloop.io/ab-variant"] == "retrained"


def test_the_switch_routes_every_key_where_the_gateway_assigns_it() -> None:
    test = _test((0.2345, 0.7655))
    graph = _objects(test)["graph"]
    service = {"static": "driftloop-model-ab-static", "retrained": "driftloop-model"}
    rng = random.Random(4)
    for i in range(3000):
        key = f"user-{i}"
        body = {"instances": stamp_instances(test, [{"text": "hi"}, {"text": "yo"}], key)}
        assert route(graph, body, rng) == service[assign(test, key, rng).variant], key
    # without a bucket: the random split, close to the weights
    unkeyed = [route(graph, {"instances": [{"text": "x"}]}, rng) for _ in range(2000)]
    assert abs(unkeyed.count("driftloop-model-ab-static") / 2000 - 0.23) < 0.04
    assert graph["spec"]["nodes"]["unkeyed"]["routerType"] == "Splitter"  # not sticky


def test_weights_the_graph_cannot_split_exactly_are_refused() -> None:
    with pytest.raises(DriftloopError, match=r"variants\[static\]\.weight: 0\.33333 is not"):
        _objects(ABTest("t", "m", (Variant("static", "v", 0.33333),
                                   Variant("retrained", "champion", 0.66667))))
    three = ABTest("t", "m", (Variant("a", "v1", 0.3333), Variant("b", "v2", 0.3333),
                              Variant("c", "champion", 0.3334)))
    graph = build_ab_objects(three, BASE_ISVC, {"a": "gs://b/m/v1", "b": "gs://b/m/v2"})["graph"]
    assert [s["weight"] for s in graph["spec"]["nodes"]["unkeyed"]["steps"]] == [33, 33, 34]
    no_logger = copy.deepcopy(BASE_ISVC)
    del no_logger["spec"]["predictor"]["logger"]
    with pytest.raises(DriftloopError, match=r"spec\.predictor\.logger is not set"):
        build_ab_objects(_test(), no_logger, {"static": STATIC_URI})


@pytest.mark.parametrize(("breakage", "expected"), [
    (lambda g: g["spec"]["nodes"]["unkeyed"]["steps"][0].update(weight=20), "should be 100"),
    (lambda g: g["spec"]["nodes"]["unkeyed"]["steps"][0].pop("weight"), "missing the 'Weight'"),
    (lambda g: g["spec"]["nodes"].update(start=g["spec"]["nodes"].pop("root")), "root node"),
    (lambda g: g["spec"]["nodes"]["root"]["steps"][1].update(name="static"), "more than one"),
    (lambda g: g["spec"]["nodes"]["root"]["steps"][0].update(nodeName="unkeyed"),
     "more than one of"),
    (lambda g: g["metadata"].update(name="AB"), "InferenceGraph name must consist"),
])
def test_the_webhook_rules_catch(breakage: Any, expected: str) -> None:
    graph = _objects(_test())["graph"]
    breakage(graph)
    (problem,) = graph_problems(graph)
    assert expected in problem


# -- the kubernetes backend against the API stand-in ------------------------------------------


@pytest.fixture
def api() -> Iterator[K8sApiStandIn]:
    standin = K8sApiStandIn().start()
    try:
        yield standin
        graphs = [r for r in standin.requests if "/inferencegraphs" in r.path]
        standin.requests = [r for r in standin.requests if r not in graphs]
        problems = body_problems(standin)  # the InferenceServices' bodies
        for r in graphs:  # a graph's create and the graph a patch leaves
            if r.method in ("POST", "PATCH") and 200 <= r.status < 300:
                problems += model_problems(r.json if r.method == "POST" else r.response)[1]
    finally:
        standin.stop()
    assert problems == []
    assert any(r.method == "POST" for r in graphs)


def test_the_kubernetes_backend_applies_and_removes_the_objects(api: K8sApiStandIn) -> None:
    backend = KubeRolloutBackend("driftloop-model", "ml", api_client=load_api_client(
        host=api.url), template=BASE_ISVC, ready_timeout=0.0, request_timeout=5.0)
    try:
        backend.ensure("gs://driftloop-bucket/driftloop/models/sample/v-new")
        backend.set_canary("gs://driftloop-bucket/driftloop/models/sample/v-next", 10)
        with pytest.raises(RolloutError, match="a canary is in progress"):
            backend.start_ab(_test())
        assert api.graphs == {}
        backend.set_traffic(100)
        backend.start_ab(_test())
        graph = api.graphs[("ml", "driftloop-model-ab")]
        assert graph["spec"]["nodes"]["root"]["routerType"] == "Switch"
        pinned = api.get("ml", "driftloop-model-ab-static")
        # the pinned version sits next to the service's rolled-out folder
        assert pinned["spec"]["predictor"]["model"]["storageUri"] == (
            "gs://driftloop-bucket/driftloop/models/sample/v-static")
        main = api.get("ml", "driftloop-model")
        assert main["metadata"]["annotations"]["driftloop.io/ab-variant"] == "retrained"
        backend.start_ab(_test())  # again: the same objects, patched in place
        backend.stop_ab(_test())
        assert api.graphs == {}
        with pytest.raises(KeyError):
            api.get("ml", "driftloop-model-ab-static")
        main = api.get("ml", "driftloop-model")
        assert "driftloop.io/ab-variant" not in main["metadata"]["annotations"]
        assert "metadataAnnotations" not in main["spec"]["predictor"]["logger"]
        backend.stop_ab(_test())  # idempotent
        assert api.get("ml", "driftloop-model")["spec"]["predictor"]["model"]["storageUri"] \
            .endswith("/v-next")
        assert BUCKET_FIELD == "ab_bucket"
    finally:
        backend.api_client.close()


# -- the kustomize component ----------------------------------------------------------------

COMPONENT = ROOT / "manifests/components/ab-test"


def test_the_component_is_a_fresh_render() -> None:
    from driftloop.rollout.ab_graph import render_component

    files = render_component(BASE_ISVC)
    assert {p.name: p.read_text() for p in COMPONENT.iterdir()} == files, \
        "run `make ab-manifests`"


def test_the_run_account_may_stop_the_test_it_judges_and_nothing_more(
        api: K8sApiStandIn) -> None:
    # Regression: the shipped Role let a run get, list, watch and patch InferenceServices
    # only, so the ab-analysis pipeline's stop_ab was refused (403) deleting the graph and
    # the pinned variant of the test it had decided.
    from test_manifests import PIPELINE_SA, allowed, render, run_namespace

    docs = render(ROOT / "manifests/ab/dev")
    namespace = "driftloop-dev"
    run_ns, problems = run_namespace(docs, namespace)
    assert problems == [] and run_ns is not None
    account = (run_ns, PIPELINE_SA)
    backend = KubeRolloutBackend("driftloop-model", "ml", api_client=load_api_client(
        host=api.url), template=BASE_ISVC, ready_timeout=0.0, request_timeout=5.0)
    try:
        backend.ensure("gs://driftloop-bucket/driftloop/models/sample/v-new")
        backend.start_ab(_test())  # a person's action (driftloop ab start), not the run's
        before = len(api.requests)
        backend.stop_ab(_test())  # what the run does
    finally:
        backend.api_client.close()
    verbs = {"GET": "get", "DELETE": "delete", "PATCH": "patch", "POST": "create"}
    sent = set()
    for r in api.requests[before:]:
        parts = r.path.split("?")[0].strip("/").split("/")
        plural, name = parts[parts.index("namespaces") + 2], parts[parts.index("namespaces") + 3]
        sent.add((verbs[r.method], plural, name))
    assert ("delete", "inferencegraphs", "driftloop-model-ab") in sent
    assert ("delete", "inferenceservices", "driftloop-model-ab-static") in sent
    for verb, plural, name in sorted(sent):
        assert allowed(docs, account, verb, "serving.kserve.io", plural, namespace, name), \
            (verb, plural, name)
    for verb, plural, name in (("delete", "inferenceservices", "driftloop-model"),
                               ("delete", "inferencegraphs", "another-graph"),
                               ("create", "inferencegraphs", ""),
                               ("delete", "inferenceservices", "driftloop-model-ab-other")):
        assert not allowed(docs, account, verb, "serving.kserve.io", plural, namespace, name)
    # without the component the run may delete nothing
    dev = render(ROOT / "manifests/overlays/dev")
    assert not allowed(dev, account, "delete", "serving.kserve.io", "inferencegraphs",
                       namespace, "driftloop-model-ab")


def test_the_dev_overlay_with_the_component_renders_objects_kserve_accepts() -> None:
    from test_manifests import render

    docs = render(ROOT / "manifests/ab/dev")
    for doc in docs:
        assert model_problems(doc)[1] == [], doc["kind"]
    isvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceService"}
    (graph,) = [d for d in docs if d["kind"] == "InferenceGraph"]
    assert graph_problems(graph) == []
    targets = {s["serviceName"] for n in graph["spec"]["nodes"].values() for s in n["steps"]
               if s.get("serviceName")}
    assert targets == set(isvcs) == {"driftloop-model", "driftloop-model-ab-static"}
    for isvc in isvcs.values():
        assert isvc["metadata"]["namespace"] == graph["metadata"]["namespace"] == "driftloop-dev"
        logger = isvc["spec"]["predictor"]["logger"]
        # dev's replacement reaches the pinned variant too: both log to the dev sink
        assert logger["url"] == "http://driftloop-sink.driftloop-dev.svc.cluster.local/"
        assert "driftloop.io/ab-variant" in logger["metadataAnnotations"]
        assert schema_problems(isvc) == [] and webhook_problems(isvc, None) == []
    # the overlay's own settings survive the component's patch
    assert isvcs["driftloop-model"]["spec"]["predictor"]["maxReplicas"] == 1
