"""A/B tests on a cluster with KServe's own objects: an InferenceGraph Switch on a hash bucket.

What KServe v0.20.0 offers, read from its source (github.com/kserve/kserve at v0.20.0):

* ``pkg/apis/serving/v1alpha1/inference_graph.go``: an ``InferenceGraph`` is a map of
  router nodes (``Sequence``, ``Splitter``, ``Ensemble``, ``Switch``), ``root`` first; a
  step targets a ``serviceName`` (an InferenceService; the controller resolves it to the
  predictor's URL, ``pkg/controller/v1alpha1/inferencegraph/controller.go``), a
  ``serviceUrl`` or another ``nodeName``.
* ``cmd/router/main.go``: a **Splitter** picks a step with ``crypto/rand`` on every request
  (``pickupRoute``: a random number in 0..99 against the cumulative weights) -- a
  user sees both variants, so a Splitter is **not sticky**. A **Switch** evaluates each
  step's ``condition`` as a GJSON path (tidwall/gjson v1.18.0, ``go.mod``) on the request
  body and takes the first step whose path ``Exists()`` (``pickupRouteByCondition``); when
  none exists it answers 404 "None of the routes matched with the switch condition". (The
  ``{ .input.userId == 1 }`` in the type's comment is not what the router evaluates.)
* ``pkg/apis/serving/v1alpha1/inference_graph_validation.go``: the graph's name is a
  ``[a-z]([-a-z0-9]*[a-z0-9])?``, a ``root`` node is required, step names are unique per
  node, each step has exactly one target, a Splitter's weights are all set and sum to 100.

So the sticky split is: the client (or a transformer in front of the graph) puts the key's
hash bucket ``ab_bucket`` = ``floor(bucket(salt, key) * 10000)`` into every V1 instance
(:func:`client_bucket`, :func:`stamp_instances`: the same hash the local gateway uses,
:func:`driftloop.decide.ab_assign.bucket`), and the graph's ``root`` Switch routes on it
with one step per variant in order of its upper edge, ``instances.#(ab_bucket<EDGE)``
(GJSON's query on an array; the first step that matches wins, so no lower bound is
needed). A request without a bucket matches the last step, ``instances`` (any V1 request),
which goes to an ``unkeyed`` Splitter node: the random split of the interface, counted
apart. Hashing needs no state, so nothing of ours runs in the request path: the Switch is
KServe's router, the variants are InferenceServices.

The variants: one whose target is ``champion`` is the loop's own InferenceService (its
canaries go on as before); any other is an InferenceService ``<service>-ab-<variant>``
pinned to its version folder, a copy of the service's predictor. Every variant service
carries the annotations ``driftloop.io/ab-test``, ``-variant`` and ``-key-field`` and lists
them in ``spec.predictor.logger.metadataAnnotations``: KServe's agent injector passes the
named annotations to the logger (``pkg/webhook/admission/pod/agent_injector.go``,
``--metadata-annotations``) and the logger sends them as the ``Ce-Annotations`` extension
(``pkg/logger/worker.go``), from which the sink makes the record columns (``ab_test``,
``ab_variant``, ``ab_key`` from the key field; ``ab_keyed`` = the request had a bucket;
serving/sink_events.py). None of this has run on a cluster.

Limits: the Switch reads V1 bodies (``instances``); a request holds one user's instances
(mixed buckets go to the first matching variant); weights must be whole basis points.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from driftloop.decide.ab_assign import ABTest, Variant, bucket
from driftloop.errors import DriftloopError
from driftloop.rollout.ab_split import (
    KEY_FIELD_ANNOTATION,
    SERVICE_ALIAS,
    TEST_ANNOTATION,
    VARIANT_ANNOTATION,
)
from driftloop.rollout.inference_service import PREVIOUS_URI_ANNOTATION, to_plain

#: The InferenceGraph API (``pkg/apis/serving/v1alpha1``, KServe v0.20.0).
GRAPH_API_VERSION = "serving.kserve.io/v1alpha1"
GRAPH_KIND = "InferenceGraph"
GRAPH_PLURAL = "inferencegraphs"
GRAPH_VERSION = "v1alpha1"
#: Buckets of the hash (basis points: a weight of 0.0001 is one bucket).
BUCKETS = 10_000
#: The instance field holding the bucket (the sink reads its presence as "keyed").
BUCKET_FIELD = "ab_bucket"
#: The annotations each variant service carries and its logger forwards.
AB_ANNOTATIONS = (TEST_ANNOTATION, VARIANT_ANNOTATION, KEY_FIELD_ANNOTATION)
_DNS = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _dns(name: str, what: str) -> str:
    if len(name) > 63 or not _DNS.match(name):
        raise DriftloopError(f"{what}: {name!r} is not a DNS-1035 label ([a-z]([-a-z0-9]*"
                             "[a-z0-9])?, at most 63 characters)")
    return name


def graph_problems(obj: Mapping[str, Any]) -> list[str]:
    """What KServe v0.20.0's InferenceGraph validating webhook refuses, in its words.

    ``pkg/apis/serving/v1alpha1/inference_graph_validation.go`` (``validateInferenceGraph``):
    the name, a ``root`` node, unique step names per node, exactly one target per step,
    Splitter weights all set and summing to 100. Checked in that order; the first failure
    is what the webhook answers (one message), so at most one problem is returned.
    """
    name = str((obj.get("metadata") or {}).get("name") or "")
    nodes = (obj.get("spec") or {}).get("nodes") or {}
    if not _DNS.match(name):
        return [f'The InferenceGraph "{name}" is invalid: a InferenceGraph name must consist '
                "of lower case alphanumeric characters or '-', and must start with "
                "alphabetical character. (e.g. \"my-name\" or \"abc-123\", regex used for "
                "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"]
    if "root" not in nodes:
        return ["root node not found, InferenceGraph needs a node with name 'root' as the "
                "root node of the graph"]
    for node_name, node in nodes.items():
        seen: set[str] = set()
        for step in node.get("steps") or []:
            step_name = step.get("name") or ""
            if step_name and step_name in seen:
                return [f'Node "{node_name}" of InferenceGraph "{name}" contains more than '
                        f'one step with name "{step_name}"']
            seen.add(step_name)
    for node_name, node in nodes.items():
        for i, step in enumerate(node.get("steps") or []):
            count = sum(bool(step.get(k)) for k in ("nodeName", "serviceName", "serviceUrl"))
            if count != 1:
                what = ("does not specify an inference target" if count == 0 else
                        "specifies more than one of nodeName, serviceName, serviceUrl")
                return [f'Step {i} ("{step.get("name") or ""}") in node "{node_name}" of '
                        f'InferenceGraph "{name}" {what}']
    for node_name, node in nodes.items():
        if node.get("routerType") != "Splitter":
            continue
        total = 0
        for step in node.get("steps") or []:
            if step.get("weight") is None:
                return [f"InferenceGraph[{name}] Node[{node_name}] Route"
                        f"[{step.get('serviceName') or ''}] missing the 'Weight'"]
            total += int(step["weight"])
        if total != 100:
            return [f"InferenceGraph[{name}] Node[{node_name}] splitter node: the sum of "
                    "traffic weights for all routing targets should be 100"]
    return []


def graph_name(service: str) -> str:
    """The InferenceGraph's name: ``<service>-ab``."""
    return _dns(f"{service}-ab", "InferenceGraph name")


def variant_service(service: str, test: ABTest, variant: str) -> str:
    """The InferenceService serving ``variant``: the service itself for ``champion``."""
    if test.variant(variant).target == SERVICE_ALIAS:
        return service
    slug = re.sub(r"[^a-z0-9-]", "-", variant.lower()).strip("-")
    return _dns(f"{service}-ab-{slug}", f"ab.variants[{variant}] service name")


def bucket_edges(test: ABTest) -> list[int]:
    """Each variant's upper bucket edge, cumulative, the last one :data:`BUCKETS`.

    Raises:
        DriftloopError: A weight is not a whole number of basis points (the Switch could
            not split as :func:`~driftloop.decide.ab_assign.assign` does).
    """
    edges, edge = [], 0.0
    for v in test.variants:
        points = v.weight * BUCKETS
        if not math.isclose(points, round(points), abs_tol=1e-6):
            raise DriftloopError(f"ab.variants[{v.name}].weight: {v.weight} is not a whole "
                                 f"number of 1/{BUCKETS} (the InferenceGraph splits in "
                                 "basis points)")
        edge += round(points)
        edges.append(int(edge))
    edges[-1] = BUCKETS
    return edges


def client_bucket(test: ABTest, key: str) -> int:
    """The ``ab_bucket`` a client sends for ``key``: ``floor(bucket(salt, key) * 10000)``."""
    return min(BUCKETS - 1, int(bucket(test.effective_salt, key) * BUCKETS))


def stamp_instances(test: ABTest, instances: Sequence[Mapping[str, Any]], key: str | None
                    ) -> list[dict[str, Any]]:
    """V1 instances with the key field and its bucket set (no key: unchanged, unkeyed)."""
    if key is None or key == "":
        return [dict(i) for i in instances]
    b = client_bucket(test, key)
    return [{**i, test.key_field: key, BUCKET_FIELD: b} for i in instances]


def _percents(test: ABTest) -> list[int]:
    """Splitter weights in percent summing to 100 (largest remainder)."""
    raw = [v.weight * 100 for v in test.variants]
    out = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)
    for i in order[: 100 - sum(out)]:
        out[i] += 1
    return out


def build_graph(test: ABTest, service: str, namespace: str) -> dict[str, Any]:
    """The InferenceGraph ``<service>-ab``: a Switch on ``ab_bucket``, unkeyed to a Splitter."""
    names = [variant_service(service, test, v.name) for v in test.variants]
    switch = [{"name": v.name, "serviceName": svc,
               "condition": f"instances.#({BUCKET_FIELD}<{edge})"}
              for v, svc, edge in zip(test.variants, names, bucket_edges(test), strict=True)]
    switch.append({"name": "unkeyed", "nodeName": "unkeyed", "condition": "instances"})
    splitter = [{"name": v.name, "serviceName": svc, "weight": pct}
                for v, svc, pct in zip(test.variants, names, _percents(test), strict=True)]
    return {
        "apiVersion": GRAPH_API_VERSION, "kind": GRAPH_KIND,
        "metadata": {"name": graph_name(service), "namespace": namespace,
                     "annotations": {TEST_ANNOTATION: test.test_id},
                     "labels": {"app.kubernetes.io/part-of": "driftloop"}},
        "spec": {"nodes": {"root": {"routerType": "Switch", "steps": switch},
                           "unkeyed": {"routerType": "Splitter", "steps": splitter}}},
    }


def variant_annotations(test: ABTest, variant: str) -> dict[str, str]:
    """The annotations of a variant's InferenceService (forwarded by its logger)."""
    return {TEST_ANNOTATION: test.test_id, VARIANT_ANNOTATION: variant,
            KEY_FIELD_ANNOTATION: test.key_field}


def service_patch(test: ABTest, variant: str, service: Mapping[str, Any]) -> dict[str, Any]:
    """Merge patch that makes the loop's own service log as ``variant`` (a new revision)."""
    logger = copy.deepcopy(((service.get("spec") or {}).get("predictor") or {}).get("logger")
                           or {})
    if not logger:
        raise DriftloopError(f"InferenceService {service.get('metadata', {}).get('name')}: "
                             "spec.predictor.logger is not set; an A/B test needs the payload "
                             "logger to record each variant")
    logger["metadataAnnotations"] = sorted(set(logger.get("metadataAnnotations") or [])
                                           | set(AB_ANNOTATIONS))
    return {"metadata": {"annotations": variant_annotations(test, variant)},
            "spec": {"predictor": {"logger": logger}}}


def unpatch_service(service: Mapping[str, Any]) -> dict[str, Any]:
    """Merge patch that removes what :func:`service_patch` added."""
    logger = copy.deepcopy(((service.get("spec") or {}).get("predictor") or {}).get("logger")
                           or {})
    kept = [a for a in logger.get("metadataAnnotations") or [] if a not in AB_ANNOTATIONS]
    logger["metadataAnnotations"] = kept or None
    return {"metadata": {"annotations": dict.fromkeys(AB_ANNOTATIONS)},
            "spec": {"predictor": {"logger": logger}}}


def build_variant_service(test: ABTest, variant: str, service: Mapping[str, Any],
                          storage_uri: str) -> dict[str, Any]:
    """The InferenceService of a pinned variant: the service's predictor on its version."""
    src = to_plain(service)
    meta = src.get("metadata") or {}
    name = variant_service(str(meta.get("name")), test, variant)
    predictor = copy.deepcopy((src.get("spec") or {}).get("predictor") or {})
    predictor.pop("canaryTrafficPercent", None)
    predictor.setdefault("model", {})["storageUri"] = storage_uri
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k.startswith("serving.kserve.io/")}
    annotations.update(variant_annotations(test, variant))
    annotations[PREVIOUS_URI_ANNOTATION] = storage_uri
    obj = {"apiVersion": src.get("apiVersion", "serving.kserve.io/v1beta1"),
           "kind": src.get("kind", "InferenceService"),
           "metadata": {"name": name, "annotations": annotations,
                        "labels": dict(meta.get("labels") or {})},
           "spec": {"predictor": predictor}}
    if meta.get("namespace"):
        obj["metadata"]["namespace"] = meta["namespace"]
    if not obj["metadata"]["labels"]:
        del obj["metadata"]["labels"]
    obj["spec"]["predictor"] = predictor
    patched = service_patch(test, variant, obj)
    predictor["logger"] = patched["spec"]["predictor"]["logger"]
    return obj


def build_ab_objects(test: ABTest, service: Mapping[str, Any],
                     storage_uris: Mapping[str, str]) -> dict[str, Any]:
    """Everything a cluster needs for ``test`` in front of ``service``.

    Args:
        test: The test.
        service: The loop's InferenceService object (or its manifest).
        storage_uris: The version folder of each pinned (non-``champion``) variant.

    Returns:
        ``{"graph": InferenceGraph, "services": [pinned variant InferenceServices],
        "service_patch": merge patch of the loop's service, or None}``.

    Raises:
        DriftloopError: A pinned variant has no folder, a weight is not whole basis points,
            a name is not a DNS label, or the service has no payload logger.
    """
    meta = service.get("metadata") or {}
    name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "")
    pinned, patch = [], None
    for v in test.variants:
        if v.target == SERVICE_ALIAS:
            patch = service_patch(test, v.name, service)
            continue
        uri = storage_uris.get(v.name)
        if not uri:
            raise DriftloopError(f"ab.variants[{v.name}].target: {v.target!r} needs its "
                                 "storageUri (a registry version folder)")
        pinned.append(build_variant_service(test, v.name, service, uri))
    graph = build_graph(test, name, namespace)
    if not namespace:
        del graph["metadata"]["namespace"]
    return {"graph": graph, "services": pinned, "service_patch": patch}


#: The Role of manifests/base/rbac.yaml that the pipeline's run account is bound to.
ROLLOUT_ROLE = "driftloop-inferenceservice-patcher"

#: The example test the kustomize component ships (manifests/components/ab-test).
EXAMPLE_TEST = ABTest("static-vs-retrained", "sample", (
    Variant("static", "STATIC-VERSION", 0.5), Variant("retrained", SERVICE_ALIAS, 0.5)))


def _header(what: str) -> str:
    import textwrap

    text = ("GENERATED by `make ab-manifests` (python -m driftloop.rollout.ab_graph): do not "
            f"edit; a test fails when this differs from a fresh render. {what}")
    return textwrap.indent(textwrap.fill(text, 88), "# ") + "\n"


def render_component(base_service: Mapping[str, Any], test: ABTest = EXAMPLE_TEST,
                     store_models: str = "gs://driftloop-bucket/driftloop/models/sample"
                     ) -> dict[str, str]:
    """The kustomize Component of an A/B test: ``file name -> YAML text``.

    An overlay lists it under ``components:`` next to its install mode; the graph, the
    pinned variants and the patch of the loop's service are :func:`build_ab_objects`'.
    """
    import yaml

    def dump(obj: Any) -> str:
        return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)

    uris = {v.name: f"{store_models}/{v.target}" for v in test.variants
            if v.target != SERVICE_ALIAS}
    objects = build_ab_objects(test, base_service, uris)
    patch = objects["service_patch"]
    service_name = (base_service.get("metadata") or {}).get("name")
    files = {"inferencegraph.yaml": _header(
        "Clients POST V1 bodies to the graph's status.url with ab_bucket in every instance "
        "(driftloop.rollout.ab_graph.stamp_instances); see README, A/B tests on a cluster.") +
        dump(objects["graph"])}
    resources = ["inferencegraph.yaml"]
    for pinned in objects["services"]:
        name = f"{pinned['metadata']['name']}.yaml"
        files[name] = _header(
            "A pinned variant: replace the version in storageUri with the frozen version.") + (
            dump(pinned))
        resources.append(name)
    patches = []
    if patch is not None:
        # only what the test adds: a merge patch keeps the overlay's logger url and mode
        small = {"apiVersion": base_service.get("apiVersion"), "kind": base_service.get("kind"),
                 "metadata": {"name": service_name, **patch["metadata"]},
                 "spec": {"predictor": {"logger": {"metadataAnnotations": patch["spec"][
                     "predictor"]["logger"]["metadataAnnotations"]}}}}
        files["service-patch.yaml"] = _header(
            "The loop's own service logs as its variant.") + dump(small)
        patches.append({"path": "service-patch.yaml", "target": {
            "group": "serving.kserve.io", "kind": "InferenceService", "name": service_name}})
    # The ab-analysis pipeline stops a decided test (KubeRolloutBackend.stop_ab): it
    # deletes this test's graph and pinned variants, and nothing else. The rules join the
    # rollout Role, so the install mode's binding already gives them to the run's account.
    names = {"inferencegraphs": [objects["graph"]["metadata"]["name"]],
             "inferenceservices": [s["metadata"]["name"] for s in objects["services"]]}
    rules = [{"op": "add", "path": "/rules/-", "value": {
        "apiGroups": ["serving.kserve.io"], "resources": [plural], "verbs": ["delete"],
        "resourceNames": sorted(found)}} for plural, found in names.items() if found]
    files["rbac-patch.yaml"] = _header(
        "What the ab-analysis pipeline's run may do to this test: delete its graph and "
        "pinned variants when it is decided (a JSON patch of the rollout Role).") + dump(rules)
    patches.append({"path": "rbac-patch.yaml", "target": {
        "group": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLLOUT_ROLE}})
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
                     "resources": resources, "patches": patches}
    files["kustomization.yaml"] = _header(
        f"A/B test {test.test_id} of model {test.model_name}: list this component in an "
        "overlay (see manifests/overlays/dev).") + dump(kustomization)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """Write the component: ``python -m driftloop.rollout.ab_graph --out DIR``."""
    import argparse
    from pathlib import Path

    import yaml

    parser = argparse.ArgumentParser(prog="python -m driftloop.rollout.ab_graph")
    parser.add_argument("--out", required=True, help="the component folder to write")
    parser.add_argument("--service", default="manifests/base/inferenceservice.yaml",
                        help="the loop's InferenceService manifest")
    args = parser.parse_args(argv)
    base = yaml.safe_load(Path(args.service).read_text(encoding="utf-8"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_component(base).items():
        (out / name).write_text(text, encoding="utf-8")
    return 0


__all__ = [
    "BUCKETS",
    "BUCKET_FIELD",
    "GRAPH_API_VERSION",
    "GRAPH_KIND",
    "GRAPH_PLURAL",
    "GRAPH_VERSION",
    "bucket_edges",
    "build_ab_objects",
    "build_graph",
    "build_variant_service",
    "client_bucket",
    "graph_name",
    "graph_problems",
    "render_component",
    "service_patch",
    "stamp_instances",
    "unpatch_service",
    "variant_service",
]


if __name__ == "__main__":
    raise SystemExit(main())
