"""Every Kubernetes object driftloop ships, deserialised strictly into the official models.

The models are the ones the projects publish: the ``kubernetes`` Python client's (core, apps,
RBAC, ...) and kserve 0.20's SDK (``V1beta1InferenceService``, ``V1alpha1ServingRuntime``,
which nest the Kubernetes client's ``V1Container``, ``V1Probe``, ...). Their constructors
check required fields themselves when client-side validation is on (``V1HTTPGetAction(
port=None)`` raises), but deserialising into them is lenient: an unknown key is dropped and a
number where a string belongs is converted. So :func:`model_problems` walks the YAML against
each model's ``openapi_types`` / ``attribute_map`` and builds the objects bottom-up with the
models' own constructors: an unknown key, a missing required field or a value of the wrong
JSON type is a problem, named by its path. What it builds must serialise back
(``ApiClient().sanitize_for_serialization``) to exactly the YAML: nothing was lost.

Two things are not the generated models' doing and are said where they are made:
- Kubernetes ``Quantity`` fields (resource requests and limits, ``emptyDir.sizeLimit``) are
  strings in the models but the API also takes plain numbers (``cpu: 1``).
- The Prometheus Operator publishes no Python models: ``ServiceMonitor`` and
  ``PrometheusRule`` are checked against fields transcribed from their CRDs
  (``example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml`` and
  ``..._prometheusrules.yaml``, prometheus-operator v0.93.0); nested objects we do not use
  (relabelings, TLS, auth, a rule's status) are taken as free-form there.
- ``manifests/monitoring/rules.yaml`` is a plain Prometheus rules file, not a Kubernetes
  object: ``promtool check rules`` checks it (``tests/monitoring/test_alert_rules.py``).

``tests/serving/test_manifests.py`` runs the same checker on every kustomize render; this
module checks each file as written and proves the checker catches what a cluster refuses.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import inspect
import re
from pathlib import Path
from typing import Any, ClassVar

import kserve.configuration
import kserve.models
import kubernetes.client
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
#: Where the repository keeps Kubernetes YAML: the kustomize tree and the predictor image.
SHIPPED_DIRS = (ROOT / "manifests", ROOT / "kserve")
#: kustomize's own files (validated by kustomize itself, which refuses unknown fields).
KUSTOMIZE_GROUP = "kustomize.config.k8s.io"
#: Plain Prometheus rules files (no Kubernetes object: promtool checks them).
PROMETHEUS_RULE_FILES = {ROOT / "manifests" / "monitoring" / "rules.yaml"}

#: The API groups whose kinds the Kubernetes client models (group "" is core).
KUBERNETES_GROUPS = {"", "apps", "batch", "autoscaling", "policy", "rbac.authorization.k8s.io",
                     "networking.k8s.io", "storage.k8s.io", "admissionregistration.k8s.io",
                     "apiextensions.k8s.io", "coordination.k8s.io", "scheduling.k8s.io"}
KSERVE_GROUP = "serving.kserve.io"
MONITORING_GROUP = "monitoring.coreos.com"

#: (model, attribute) pairs of type Quantity: a string in the models, a number or a string
#: in the API (k8s.io/apimachinery/pkg/api/resource, Quantity's UnmarshalJSON).
QUANTITY_FIELDS = {("V1ResourceRequirements", "limits"), ("V1ResourceRequirements", "requests"),
                   ("V1EmptyDirVolumeSource", "size_limit")}

#: Stands in for a missing required field, so the constructor reports the next one too.
_PLACEHOLDER = "<missing>"
_MISSING = re.compile(r"Invalid value for `(\w+)`, must not be `None`")


# -- ServiceMonitor: no published Python model ------------------------------------------


class TranscribedModel:
    """A generated-model look-alike for a CRD whose project ships no Python models.

    Same protocol as the generated classes (``openapi_types``, ``attribute_map``, a
    constructor that raises the generated models' ``ValueError`` for a missing required
    field), so :func:`model_problems` and ``sanitize_for_serialization`` treat it alike.
    Attribute names are the JSON names.
    """

    openapi_types: ClassVar[dict[str, str]] = {}
    attribute_map: ClassVar[dict[str, str]] = {}
    required: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, local_vars_configuration: Any = None, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.openapi_types)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no fields {sorted(unknown)}")
        for attr in self.openapi_types:
            if attr in self.required and kwargs.get(attr) is None:
                raise ValueError(f"Invalid value for `{attr}`, must not be `None`")
            setattr(self, attr, kwargs.get(attr))


def _transcribed(name: str, types: dict[str, str], required: tuple[str, ...] = ()) -> type:
    return type(name, (TranscribedModel,), {
        "openapi_types": types, "attribute_map": {k: k for k in types},
        "required": frozenset(required)})


# Field names, JSON types and `required` lists of monitoring.coreos.com/v1 ServiceMonitor
# as in its CRD at prometheus-operator v0.93.0 ("object" = not walked further).
MONITORING_MODELS: dict[str, type] = {
    "MonitoringV1ServiceMonitor": _transcribed("MonitoringV1ServiceMonitor", {
        "apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta",
        "spec": "MonitoringV1ServiceMonitorSpec", "status": "object"}, ("spec",)),
    "MonitoringV1ServiceMonitorSpec": _transcribed("MonitoringV1ServiceMonitorSpec", {
        "attachMetadata": "object", "bodySizeLimit": "str",
        "convertClassicHistogramsToNHCB": "bool", "endpoints": "list[MonitoringV1Endpoint]",
        "fallbackScrapeProtocol": "str", "jobLabel": "str", "keepDroppedTargets": "int",
        "labelLimit": "int", "labelNameLengthLimit": "int", "labelValueLengthLimit": "int",
        "namespaceSelector": "MonitoringV1NamespaceSelector",
        "nativeHistogramBucketLimit": "int", "nativeHistogramMinBucketFactor": "object",
        "podTargetLabels": "list[str]", "sampleLimit": "int", "scrapeClass": "str",
        "scrapeClassicHistograms": "bool", "scrapeNativeHistograms": "bool",
        "scrapeProtocols": "list[str]", "selector": "V1LabelSelector",
        "selectorMechanism": "str", "serviceDiscoveryRole": "str", "targetLabels": "list[str]",
        "targetLimit": "int"}, ("endpoints", "selector")),
    "MonitoringV1Endpoint": _transcribed("MonitoringV1Endpoint", {
        "authorization": "object", "basicAuth": "object", "bearerTokenFile": "str",
        "bearerTokenSecret": "object", "enableHttp2": "bool", "filterRunning": "bool",
        "followRedirects": "bool", "honorLabels": "bool", "honorTimestamps": "bool",
        "interval": "str", "metricRelabelings": "object", "noProxy": "str", "oauth2": "object",
        "params": "object", "path": "str", "port": "str", "proxyConnectHeader": "object",
        "proxyFromEnvironment": "bool", "proxyUrl": "str", "relabelings": "object",
        "scheme": "str", "scrapeTimeout": "str", "targetPort": "object", "tlsConfig": "object",
        "trackTimestampsStaleness": "bool"}),
    "MonitoringV1NamespaceSelector": _transcribed("MonitoringV1NamespaceSelector", {
        "any": "bool", "matchNames": "list[str]"}),
    # PrometheusRule (monitoring.coreos.com_prometheusrules.yaml at v0.93.0): spec.groups[]
    # (required: name), each rules[] (required: expr, an int-or-string).
    "MonitoringV1PrometheusRule": _transcribed("MonitoringV1PrometheusRule", {
        "apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta",
        "spec": "MonitoringV1PrometheusRuleSpec", "status": "object"}, ("spec",)),
    "MonitoringV1PrometheusRuleSpec": _transcribed("MonitoringV1PrometheusRuleSpec", {
        "groups": "list[MonitoringV1RuleGroup]"}),
    "MonitoringV1RuleGroup": _transcribed("MonitoringV1RuleGroup", {
        "interval": "str", "labels": "dict(str, str)", "limit": "int", "name": "str",
        "partial_response_strategy": "str", "query_offset": "str",
        "rules": "list[MonitoringV1Rule]"}, ("name",)),
    "MonitoringV1Rule": _transcribed("MonitoringV1Rule", {
        "alert": "str", "annotations": "dict(str, str)", "expr": "object", "for": "str",
        "keep_firing_for": "str", "labels": "dict(str, str)", "record": "str"}, ("expr",)),
}


# -- the strict checker ------------------------------------------------------------------


def model_name(doc: dict[str, Any]) -> str | None:
    """The model class for an object's apiVersion and kind, e.g. ``V1beta1InferenceService``.

    The generators name a kind's model after its version and kind (``apps/v1`` Deployment
    -> ``V1Deployment``); ``None`` when no package we trust models that group and version.
    """
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    kind = str(doc.get("kind", ""))
    if not re.fullmatch(r"v\d+((alpha|beta)\d+)?", version) or not kind:
        return None
    if group == MONITORING_GROUP:
        name = f"Monitoring{version.capitalize()}{kind}"
        return name if name in MONITORING_MODELS else None
    name = f"V{version[1:]}{kind}"
    if group == KSERVE_GROUP:
        return name if hasattr(kserve.models, name) else None
    if group in KUBERNETES_GROUPS:
        return name if hasattr(kubernetes.client, name) else None
    return None


def _model_class(type_name: str) -> type | None:
    return (MONITORING_MODELS.get(type_name) or getattr(kserve.models, type_name, None)
            or getattr(kubernetes.client, type_name, None))


@functools.cache
def _configuration(package: str) -> Any:
    """A client Configuration with client-side validation on (required fields are checked)."""
    config = (kserve.configuration.Configuration() if package == "kserve"
              else kubernetes.client.Configuration())
    config.client_side_validation = True
    return config


def _scalar_ok(value: Any, type_name: str, quantity: bool) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    checks = {
        "str": isinstance(value, str) or (quantity and number),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": number,
        "bool": isinstance(value, bool),
        "object": True,  # int-or-string, free-form maps
        "datetime": isinstance(value, (str, dt.datetime)),
        "date": isinstance(value, (str, dt.date)),
    }
    return checks[type_name]


def _build(value: Any, type_name: str, path: str, problems: list[str],
           quantity: bool = False) -> Any:
    """``value`` as an instance of ``type_name`` (None, with problems, where it is not one)."""
    if type_name in ("str", "int", "float", "bool", "object", "datetime", "date"):
        if value is not None and not _scalar_ok(value, type_name, quantity):
            problems.append(f"{path}: {type(value).__name__} {value!r}, expected {type_name}")
        return value
    if type_name.startswith("list[") and type_name.endswith("]"):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list ({type_name})")
            return None
        return [_build(item, type_name[5:-1], f"{path}[{i}]", problems, quantity)
                for i, item in enumerate(value)]
    if type_name.startswith("dict(") and type_name.endswith(")"):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping ({type_name})")
            return None
        inner = type_name[5:-1].split(", ", 1)[1]
        return {k: _build(v, inner, f"{path}.{k}", problems, quantity) for k, v in value.items()}
    cls = _model_class(type_name)
    if cls is None:
        problems.append(f"{path}: no model class {type_name}")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object ({type_name})")
        return None
    attrs = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        if key not in attrs:
            problems.append(f"{path}.{key}: not a field of {type_name}")
            continue
        attr = attrs[key]
        built = _build(item, cls.openapi_types[attr], f"{path}.{key}", problems,
                       (type_name, attr) in QUANTITY_FIELDS)
        # a broken but present value must not be reported as missing too
        kwargs[attr] = _PLACEHOLDER if built is None and item is not None else built
    return _construct(cls, kwargs, path, problems)


def _construct(cls: type, kwargs: dict[str, Any], path: str, problems: list[str]) -> Any:
    """The model's own constructor decides what is required; report every missing field."""
    package = "kserve" if cls.__module__.startswith("kserve.") else "kubernetes"
    while True:
        try:
            return cls(**kwargs, local_vars_configuration=_configuration(package))
        except ValueError as exc:
            missing = _MISSING.fullmatch(str(exc))
            if missing is None or kwargs.get(missing.group(1)) is not None:
                problems.append(f"{path}: {cls.__name__}: {exc}")
                return None
            attr = missing.group(1)
            json_name = getattr(cls, "attribute_map", {}).get(attr, attr)
            problems.append(f"{path}.{json_name}: required by {cls.__name__}, missing")
            kwargs[attr] = _PLACEHOLDER


def model_problems(doc: dict[str, Any], label: str | None = None) -> tuple[Any, list[str]]:
    """Deserialise one object strictly: (the model instance, the problems; [] = valid)."""
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    label = label or f"{doc.get('kind')}/{meta.get('name')}"
    name = model_name(doc)
    if name is None:
        return None, [f"{label}: no official model for apiVersion {doc.get('apiVersion')!r} "
                      f"kind {doc.get('kind')!r}: it cannot be checked"]
    problems: list[str] = []
    obj = _build(doc, name, label, problems)
    if not problems:
        back = kubernetes.client.ApiClient().sanitize_for_serialization(obj)
        problems += _round_trip_problems(obj, doc, back, label)
    return obj, problems


@functools.cache
def _defaults(cls: type) -> dict[str, Any]:
    """The constructor's non-None defaults (kserve's SDK writes ``name=''`` for omitted names)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params
            if p.default is not None and p.default is not inspect.Parameter.empty}


def _round_trip_problems(obj: Any, doc: Any, back: Any, path: str) -> list[str]:
    """Where the serialised model differs from the YAML (a constructor default aside)."""
    if hasattr(obj, "openapi_types") and isinstance(doc, dict) and isinstance(back, dict):
        problems = []
        attrs = {json_name: attr for attr, json_name in obj.attribute_map.items()}
        for key in sorted(set(doc) | set(back)):
            attr = attrs.get(key, key)
            if key not in back:
                problems.append(f"{path}.{key}: lost by {type(obj).__name__}")
            elif key not in doc:
                if _defaults(type(obj)).get(attr, object()) != back[key]:
                    problems.append(f"{path}.{key}: added by {type(obj).__name__}: {back[key]!r}")
            else:
                problems += _round_trip_problems(getattr(obj, attr), doc[key], back[key],
                                                 f"{path}.{key}")
        return problems
    if isinstance(obj, list) and isinstance(doc, list) and isinstance(back, list) \
            and len(doc) == len(back):
        return [p for i, (o, d, b) in enumerate(zip(obj, doc, back, strict=True))
                for p in _round_trip_problems(o, d, b, f"{path}[{i}]")]
    if isinstance(obj, dict) and isinstance(doc, dict) and isinstance(back, dict) \
            and set(doc) == set(back):
        return [p for k in doc for p in _round_trip_problems(obj[k], doc[k], back[k],
                                                              f"{path}.{k}")]
    return [] if doc == back else [f"{path}: {doc!r} comes back as {back!r}"]


# -- what the repository ships -----------------------------------------------------------


def _kustomize_configurations() -> set[Path]:
    """Files in kustomize's own formats, not the API's: those kustomizations name under
    ``configurations:``, and JSON 6902 patches (a list of operations; the object they
    patch is checked in the render)."""
    found = set()
    for base in SHIPPED_DIRS:
        for kustomization in base.rglob("kustomization.yaml"):
            spec = yaml.safe_load(kustomization.read_text()) or {}
            found |= {(kustomization.parent / p).resolve() for p in spec.get("configurations", [])}
            for patch in spec.get("patches") or []:
                path = kustomization.parent / patch["path"] if "path" in patch else None
                if path and isinstance(yaml.safe_load(path.read_text()), list):
                    found.add(path.resolve())
    return found


def shipped_files() -> list[Path]:
    return sorted(p for base in SHIPPED_DIRS if base.is_dir()
                  for p in base.rglob("*") if p.suffix in (".yaml", ".yml"))


def shipped_objects() -> list[tuple[str, dict[str, Any]]]:
    """(``file#index``, object) for every Kubernetes object in a shipped YAML file."""
    configurations = _kustomize_configurations()
    objects = []
    for path in shipped_files():
        if path.resolve() in configurations or path in PROMETHEUS_RULE_FILES:
            continue
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if not doc or str(doc.get("apiVersion", "")).startswith(KUSTOMIZE_GROUP + "/"):
                continue
            objects.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return objects


SHIPPED = shipped_objects()


def test_the_scan_finds_the_shipped_objects() -> None:
    kinds = {doc["kind"] for _, doc in SHIPPED}
    assert {"InferenceService", "ServingRuntime", "Deployment", "Service", "ServiceAccount",
            "Role", "RoleBinding", "ServiceMonitor", "PrometheusRule"} <= kinds, kinds
    # every YAML file is either kustomize's own or holds API objects that are checked here
    checked = {label.split("#")[0] for label, _ in SHIPPED}
    configurations = _kustomize_configurations()
    for path in shipped_files():
        if path.resolve() in configurations or f"apiVersion: {KUSTOMIZE_GROUP}" in path.read_text():
            continue
        if path in PROMETHEUS_RULE_FILES:
            assert set(yaml.safe_load(path.read_text())) == {"groups"}, path
            continue
        assert str(path.relative_to(ROOT)) in checked, path


@pytest.mark.parametrize("label", [label for label, _ in SHIPPED])
def test_shipped_object_deserialises_strictly(label: str) -> None:
    doc = dict(SHIPPED)[label]
    obj, problems = model_problems(doc, label)
    assert problems == [], "\n".join(problems)
    assert type(obj).__name__ == model_name(doc)


def test_the_runtime_is_a_kserve_model_with_kubernetes_containers() -> None:
    """The ServingRuntime comes back as kserve's model, its probes as the Kubernetes client's."""
    doc = next(d for _, d in SHIPPED if d["kind"] == "ServingRuntime")
    runtime, problems = model_problems(doc)
    assert problems == []
    assert isinstance(runtime, kserve.models.V1alpha1ServingRuntime)
    container = runtime.spec.containers[0]
    assert isinstance(container, kubernetes.client.V1Container)
    for probe in (container.readiness_probe, container.liveness_probe):
        assert isinstance(probe.http_get, kubernetes.client.V1HTTPGetAction)
        assert probe.http_get.port == container.ports[0].container_port == 8080


# -- the checker catches what a cluster refuses --------------------------------------------


def _runtime() -> dict[str, Any]:
    return copy.deepcopy(next(d for _, d in SHIPPED if d["kind"] == "ServingRuntime"))


def _isvc() -> dict[str, Any]:
    return copy.deepcopy(next(d for _, d in SHIPPED if d["kind"] == "InferenceService"))


def test_the_models_themselves_require_the_probe_port() -> None:
    """The requirement is the official model's, not ours (client-side validation on)."""
    with pytest.raises(ValueError, match="`port`, must not be `None`"):
        kubernetes.client.V1HTTPGetAction(path="/v2/health/ready",
                                          local_vars_configuration=_configuration("kubernetes"))


def test_a_probe_without_a_port_is_caught() -> None:
    """The manifest as it was before issue 12 (the ServingRuntime CRD answers 422)."""
    doc = _runtime()
    for probe in ("readinessProbe", "livenessProbe"):
        del doc["spec"]["containers"][0][probe]["httpGet"]["port"]
    _, problems = model_problems(doc)
    name = doc["metadata"]["name"]
    assert problems == [
        f"ServingRuntime/{name}.spec.containers[0].{probe}.httpGet.port: required by "
        "V1HTTPGetAction, missing" for probe in ("readinessProbe", "livenessProbe")]


def test_an_unknown_field_is_caught() -> None:
    doc = _runtime()
    doc["spec"]["containers"][0]["readinessprobe"] = doc["spec"]["containers"][0]["readinessProbe"]
    _, problems = model_problems(doc)
    assert problems == [f"ServingRuntime/{doc['metadata']['name']}.spec.containers[0]."
                        "readinessprobe: not a field of V1Container"]


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["spec"]["predictor"].__setitem__("minReplica", 1),
     "spec.predictor.minReplica: not a field of V1beta1PredictorSpec"),
    (lambda d: d["spec"]["predictor"]["model"].__setitem__("storageURI", "gs://b/m"),
     "spec.predictor.model.storageURI: not a field of V1beta1ModelSpec"),
    (lambda d: d.__setitem__("spec", {}),
     "spec.predictor: required by V1beta1InferenceServiceSpec"),
    (lambda d: d["spec"]["predictor"].__setitem__("minReplicas", "1"),
     "spec.predictor.minReplicas: str '1', expected int"),
    (lambda d: d["spec"]["predictor"].__setitem__("canaryTrafficPercent", True),
     "spec.predictor.canaryTrafficPercent: bool True, expected int"),
    (lambda d: d["spec"]["predictor"]["logger"].__setitem__("url", ["http://x"]),
     "spec.predictor.logger.url: list ['http://x'], expected str"),
    (lambda d: d["metadata"].__setitem__("annotations", ["a"]),
     "metadata.annotations: expected a mapping"),
], ids=["misspelt predictor field", "misspelt model field", "no predictor",
        "replicas as a string", "traffic as a bool", "url as a list", "annotations as a list"])
def test_inferenceservice_mistakes_are_caught(mutate: Any, expected: str) -> None:
    doc = _isvc()
    mutate(doc)
    _, problems = model_problems(doc)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda c: c.pop("name"), "spec.containers[0].name: required by V1Container, missing"),
    (lambda c: c["args"].__setitem__(-1, 8080),
     "spec.containers[0].args[7]: int 8080, expected str"),
    (lambda c: c["ports"][0].__setitem__("containerPort", "8080"),
     "spec.containers[0].ports[0].containerPort: str '8080', expected int"),
    (lambda c: c.__setitem__("securityContext", {"runAsNonRoot": True, "fsGroup": 1}),
     "spec.containers[0].securityContext.fsGroup: not a field of V1SecurityContext"),
    (lambda c: c["resources"]["limits"].__setitem__("cpu", [1]),
     "spec.containers[0].resources.limits.cpu: list [1], expected str"),
], ids=["container without a name", "numeric arg", "port as a string", "pod field in a container",
        "cpu as a list"])
def test_container_mistakes_are_caught(mutate: Any, expected: str) -> None:
    doc = _runtime()
    mutate(doc["spec"]["containers"][0])
    _, problems = model_problems(doc)
    assert any(expected in p for p in problems), problems


def test_the_round_trip_notices_what_a_model_changed() -> None:
    """A value the model serialises differently, or a field it adds, is reported."""
    action = kubernetes.client.V1HTTPGetAction(path="/p", port=8080)
    back = kubernetes.client.ApiClient().sanitize_for_serialization(action)
    assert _round_trip_problems(action, {"path": "/p", "port": 8080}, back, "p") == []
    assert _round_trip_problems(action, {"path": "/p", "port": "8080"}, back, "p") == [
        "p.port: '8080' comes back as 8080"]
    assert _round_trip_problems(action, {"port": 8080}, back, "p") == [
        "p.path: added by V1HTTPGetAction: '/p'"]
    # kserve's SDK fills in name='' for an omitted model name: a default, not a change
    model = kserve.models.V1beta1ModelSpec(model_format=kserve.models.V1beta1ModelFormat(
        name="sklearn"))
    doc = {"modelFormat": {"name": "sklearn"}}
    back = kubernetes.client.ApiClient().sanitize_for_serialization(model)
    assert back == {**doc, "name": ""} and _round_trip_problems(model, doc, back, "m") == []


def test_a_numeric_quantity_is_accepted() -> None:
    """``cpu: 1`` is a valid Quantity for the API even though the model types it as a string."""
    doc = _runtime()
    doc["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 1
    assert model_problems(doc)[1] == []


@pytest.mark.parametrize(("doc", "expected"), [
    ({"apiVersion": "extensions/v1beta1", "kind": "Deployment", "metadata": {"name": "x"}},
     "no official model"),
    ({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "x"}},
     "no official model"),
    ({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
      "metadata": {"name": "x"}, "spec": {"selector": {}}},
     "spec.endpoints: required by MonitoringV1ServiceMonitorSpec, missing"),
    ({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
      "metadata": {"name": "x"}, "spec": {"selector": {}, "endpoints": [{"portName": "http"}]}},
     "spec.endpoints[0].portName: not a field of MonitoringV1Endpoint"),
    ({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "x"},
      "rules": [{"apiGroups": [""], "resources": ["configmaps"]}]},
     "rules[0].verbs: required by V1PolicyRule, missing"),
    ({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
      "metadata": {"name": "x"}, "roleRef": {"kind": "Role", "name": "r"}},
     "roleRef.apiGroup: required by V1RoleRef, missing"),
    ({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
      "metadata": {"name": "x"}, "spec": {"groups": [{"rules": [{"alert": "A", "expr": "1"}]}]}},
     "spec.groups[0].name: required by MonitoringV1RuleGroup, missing"),
    ({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
      "metadata": {"name": "x"}, "spec": {"groups": [{"name": "g", "rules": [{"alert": "A"}]}]}},
     "spec.groups[0].rules[0].expr: required by MonitoringV1Rule, missing"),
    ({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
      "metadata": {"name": "x"},
      "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "1", "fore": "5m"}]}]}},
     "spec.groups[0].rules[0].fore: not a field of MonitoringV1Rule"),
    ({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
      "metadata": {"name": "x"}, "spec": {"groups": [{"name": "g", "rules": [
          {"alert": "A", "expr": "1", "labels": {"severity": 1}}]}]}},
     "spec.groups[0].rules[0].labels.severity: int 1, expected str"),
], ids=["retired apiVersion", "unknown group", "monitor without endpoints",
        "monitor endpoint field", "rule without verbs", "roleRef without apiGroup",
        "rule group without a name", "rule without expr", "misspelt rule field",
        "numeric rule label"])
def test_other_mistakes_are_caught(doc: dict[str, Any], expected: str) -> None:
    _, problems = model_problems(doc)
    assert any(expected in p for p in problems), problems
