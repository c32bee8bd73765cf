"""The kustomize manifests: render every overlay (and the base) and check the objects.

Each ``check_*`` function returns a list of problems (empty = fine), so the same checks run
on the real renders and, in the negative tests, on deliberately broken ones: a check that
cannot fail proves nothing. Rendering uses ``kubectl kustomize`` (kustomize v5 embedded);
nothing is applied to a cluster.

Every rendered object is deserialised strictly into the official models
(:func:`test_manifest_models.model_problems`), and the RBAC of each install mode of Kubeflow
Pipelines (multi-user: the run's pods in the overlay's profile namespace; single-user: in
``kubeflow``) is evaluated the way the API server does (``RuleAllows`` in
``pkg/apis/rbac/v1/evaluation_helpers.go`` and ``appliesToUser`` in
``pkg/registry/rbac/validation/rule.go``, kubernetes/kubernetes), for every overlay in both
modes.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from test_manifest_models import model_problems

from driftloop import __version__
from driftloop.kfp.image import IMAGE_REPOSITORY
from driftloop.kfp.pipeline import GCS_SECRET, GCS_SECRET_MOUNT
from driftloop.serving.alerts import rules_file
from driftloop.serving.dashboard import dashboard

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
BASE = MANIFESTS / "base"
OVERLAYS_DIR = MANIFESTS / "overlays"
OVERLAYS = sorted(p.name for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())
#: The run side of a single-user install, applied in KFP's own namespace.
KUBEFLOW_DIR = MANIFESTS / "kubeflow"
TARGETS = ["base", *OVERLAYS]

#: Install modes of Kubeflow Pipelines -> the component an overlay picks for it.
MODES = {"multi-user": "kfp-multi-user", "single-user": "kfp-single-user"}
#: The mode each shipped overlay demonstrates (its kustomization says how to switch).
SHIPPED_MODES = {"dev": "single-user", "prod": "multi-user"}

PREDICTOR_IMAGE = f"{IMAGE_REPOSITORY}-predictor"
PIPELINE_SA = "driftloop-pipeline"
ROLLOUT_ROLE = "driftloop-inferenceservice-patcher"
ROLLOUT_BINDING = "driftloop-pipeline-inferenceservice-patcher"
RUNNER_ROLE = "driftloop-pipeline-runner"
RBAC_GROUP = "rbac.authorization.k8s.io"
SINK = "driftloop-sink"
ISVC = "driftloop-model"
Grant = tuple[str, str, str, str, str]  # namespace, API group, resource, verb, resourceName


def rollout_grants(namespace: str) -> set[Grant]:
    """What the rollout step does to the InferenceService (src/driftloop/rollout/kube.py)."""
    return {(namespace, "serving.kserve.io", "inferenceservices", verb, "")
            for verb in ("get", "list", "watch", "patch")}


def runner_grants(namespace: str) -> set[Grant]:
    """What KFP's driver and launcher and Argo's executor need from the run's account.

    See manifests/components/pipeline-runner/pipeline-runner.yaml for the upstream files.
    """
    return {(namespace, "", "configmaps", "get", "kfp-launcher"),
            (namespace, "", "secrets", "get", "mlpipeline-minio-artifact"),
            (namespace, "argoproj.io", "workflowtaskresults", "create", ""),
            (namespace, "argoproj.io", "workflowtaskresults", "patch", "")}

PART_OF = ("app.kubernetes.io/part-of", "driftloop")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "ClusterServingRuntime",
                  "ClusterStorageContainer", "MutatingWebhookConfiguration",
                  "ValidatingWebhookConfiguration"}
PREDICTOR_PORT = 8080  # the predictor image's --http_port (kserve/Dockerfile)
#: KServe's storage initializer reads GCS credentials from a secret listed on the predictor's
#: service account, under the key gcloud-application-credentials.json.
KSERVE_GCS_SECRET = "driftloop-gcs-kserve"

Docs = list[dict[str, Any]]


# -- rendering ---------------------------------------------------------------------------


@functools.cache
def _kubectl() -> str:
    """The kubectl binary, or skip when it (or a kustomize v5 inside it) is missing."""
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize manifests "
                    "(CI machines have it; `kubectl kustomize` needs no cluster)")
    out = subprocess.run([exe, "version", "--client", "-o", "json"], capture_output=True,
                         text=True, timeout=30, check=False)
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "") if out.returncode == 0 \
        else ""
    major = re.match(r"v(\d+)", version)
    if not major or int(major.group(1)) < 5:
        pytest.skip(f"kubectl at {exe} embeds kustomize {version or '(unknown)'}; the "
                    "manifests use replacements/labels and need kustomize v5 (kubectl >= 1.27)")
    return exe


def render(path: Path) -> Docs:
    """``kubectl kustomize PATH`` parsed into a list of objects (fails with kubectl's error)."""
    proc = subprocess.run([_kubectl(), "kustomize", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


_MODE_TREES = tempfile.TemporaryDirectory(prefix="driftloop-manifests-")


@functools.cache
def _target_path(target: str) -> Path:
    """``base``, ``kubeflow``, an overlay, or ``OVERLAY@MODE``: that overlay with the
    install-mode component swapped for MODE's (in a copy of the tree)."""
    if target == "base":
        return BASE
    if target == "kubeflow":
        return KUBEFLOW_DIR
    overlay, _, mode = target.partition("@")
    if not mode:
        return OVERLAYS_DIR / overlay
    tree = Path(_MODE_TREES.name) / target / "manifests"
    shutil.copytree(MANIFESTS, tree, ignore=shutil.ignore_patterns("*.md"))
    path = tree / "overlays" / overlay
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
    kustomization["components"] = [f"../../components/{MODES[mode]}"]
    (path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return path


@functools.cache
def _rendered(target: str) -> tuple[str, str]:
    path = _target_path(target)
    return json.dumps(render(path)), _declared_namespace(path)


def rendered(target: str) -> Docs:
    """A fresh (mutable) copy of the cached render of ``target``."""
    return json.loads(_rendered(target)[0])


def namespace_of(target: str) -> str:
    return _rendered(target)[1]


def _declared_namespace(path: Path) -> str:
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
    namespace = kustomization.get("namespace")
    assert namespace, f"{path}/kustomization.yaml sets no namespace"
    return str(namespace)


# -- helpers -----------------------------------------------------------------------------


def objects(docs: Docs, kind: str, name: str | None = None) -> Docs:
    return [d for d in docs if d.get("kind") == kind
            and (name is None or d.get("metadata", {}).get("name") == name)]


def one(docs: Docs, kind: str, name: str | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    found = objects(docs, kind, name)
    label = f"{kind}/{name}" if name else kind
    if len(found) != 1:
        return None, [f"expected exactly one {label}, found {len(found)}"]
    return found[0], []


def containers_of(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container (and init container) anywhere in an object, whatever its kind."""
    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    yield from (c for c in value if isinstance(c, dict))
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)
    yield from walk(obj)


def resolve_arg(docs: Docs, container: dict[str, Any], flag: str) -> str | None:
    """The value after ``flag`` in the args, with ``$(VAR)`` resolved like the kubelet does.

    A variable may be a literal ``value`` or a ``configMapKeyRef`` into a ConfigMap of the
    same render; anything unresolvable comes back as ``<unresolved ...>``.
    """
    args = [str(a) for a in container.get("args", [])]
    if flag not in args or args.index(flag) + 1 >= len(args):
        return None
    env = {e["name"]: e for e in container.get("env", [])}

    def lookup(match: re.Match[str]) -> str:
        var = env.get(match.group(1))
        if var is None:
            return f"<unresolved {match.group(1)}>"
        if "value" in var:
            return str(var["value"])
        ref = var.get("valueFrom", {}).get("configMapKeyRef", {})
        cm, _ = one(docs, "ConfigMap", ref.get("name"))
        data = (cm or {}).get("data", {})
        return str(data[ref["key"]]) if ref.get("key") in data else \
            f"<unresolved {match.group(1)}>"

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lookup, args[args.index(flag) + 1])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def predictor_model(isvc: dict[str, Any]) -> dict[str, Any]:
    return isvc.get("spec", {}).get("predictor", {}).get("model", {})


def runtime_of(docs: Docs, isvc: dict[str, Any]) -> dict[str, Any] | None:
    """The ServingRuntime of this render that the InferenceService names, if any."""
    found = objects(docs, "ServingRuntime", predictor_model(isvc).get("runtime"))
    return found[0] if len(found) == 1 else None


def predictor_container(docs: Docs, isvc: dict[str, Any]) -> dict[str, Any]:
    runtime = runtime_of(docs, isvc) or {}
    containers = runtime.get("spec", {}).get("containers", [])
    return next((c for c in containers if c.get("name") == "kserve-container"),
                containers[0] if containers else {})


def sink_store(docs: Docs) -> str | None:
    sink = objects(docs, "Deployment", SINK)
    return resolve_arg(docs, sink_container(sink[0]), "--store") if sink else None


def sink_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get(
        "containers", [])
    return containers[0] if containers else {}


# -- checks ------------------------------------------------------------------------------


def check_namespaces(docs: Docs, namespace: str) -> list[str]:
    problems = []
    for d in docs:
        meta = d.get("metadata", {})
        label = f"{d.get('kind')}/{meta.get('name')}"
        if d.get("kind") in CLUSTER_SCOPED:
            problems.append(f"{label}: cluster-scoped objects are not part of driftloop")
        elif meta.get("namespace") != namespace:
            problems.append(f"{label}: namespace {meta.get('namespace')!r}, not {namespace!r}")
        if meta.get("labels", {}).get(PART_OF[0]) != PART_OF[1]:
            problems.append(f"{label}: label {PART_OF[0]}={PART_OF[1]} missing")
    return problems


def check_inferenceservice(docs: Docs, namespace: str) -> list[str]:
    isvc, problems = one(docs, "InferenceService")
    if isvc is None:
        return problems
    if isvc.get("apiVersion") != "serving.kserve.io/v1beta1":
        problems.append(f"InferenceService apiVersion {isvc.get('apiVersion')}")
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
    if mode != "Serverless":
        problems.append(f"InferenceService deploymentMode {mode!r}: canaryTrafficPercent "
                        "needs Serverless (Knative)")
    predictor = isvc.get("spec", {}).get("predictor", {})
    if not isinstance(predictor.get("minReplicas"), int) or predictor["minReplicas"] < 1:
        problems.append(f"predictor minReplicas {predictor.get('minReplicas')!r} (< 1)")
    logger = predictor.get("logger", {})
    if logger.get("mode") != "all":
        problems.append(f"logger mode {logger.get('mode')!r}, not 'all'")
    url = urlsplit(str(logger.get("url", "")))
    expected_host = f"{SINK}.{namespace}.svc.cluster.local"
    if url.scheme != "http" or url.hostname != expected_host or url.path not in ("", "/"):
        problems.append(f"logger url {logger.get('url')!r} is not http://{expected_host}/")
    service, found = one(docs, "Service", SINK)
    problems += found
    if service is not None:
        ports = [p.get("port") for p in service.get("spec", {}).get("ports", [])]
        if (url.port or 80) not in ports:
            problems.append(f"logger url port {url.port or 80} is not a port of "
                            f"Service/{SINK} {ports}")
    model = predictor_model(isvc)
    runtime = runtime_of(docs, isvc)
    if runtime is None:
        problems.append(f"spec.predictor.model.runtime {model.get('runtime')!r} names no "
                        "ServingRuntime of this render")
        return problems
    formats = {f.get("name") for f in runtime.get("spec", {}).get("supportedModelFormats", [])}
    if model.get("modelFormat", {}).get("name") not in formats:
        problems.append(f"model format {model.get('modelFormat')} is not one of the "
                        f"runtime's {sorted(formats)}")
    protocols = runtime.get("spec", {}).get("protocolVersions", [])
    if model.get("protocolVersion", "v1") not in protocols:
        problems.append(f"protocolVersion {model.get('protocolVersion')!r} not in {protocols}")
    container = predictor_container(docs, isvc)
    ports = [p.get("containerPort") for p in container.get("ports", [])]
    if ports and PREDICTOR_PORT not in ports:
        problems.append(f"predictor containerPort {ports}, expected {PREDICTOR_PORT}")
    if str(PREDICTOR_PORT) != resolve_arg(docs, container, "--http_port"):
        problems.append(f"predictor --http_port is not {PREDICTOR_PORT}")
    if resolve_arg(docs, container, "--host") != "0.0.0.0":
        problems.append("predictor does not bind 0.0.0.0 (--host)")
    if resolve_arg(docs, container, "--model_dir") != "/mnt/models":
        problems.append("predictor does not serve /mnt/models (where KServe puts storageUri)")
    if predictor.get("securityContext"):
        problems.append("predictor sets a pod-level securityContext: Knative rejects it unless "
                        "kubernetes.podspec-securitycontext is enabled; set it per container")
    sc = container.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True or sc.get("runAsUser") == 0:
        problems.append("predictor container does not runAsNonRoot")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("predictor container allows privilege escalation")
    return problems


def check_store(docs: Docs, namespace: str) -> list[str]:
    """The predictor serves a version folder of the store the sink writes; keys are in place."""
    problems = []
    isvc, found = one(docs, "InferenceService")
    sink, found2 = one(docs, "Deployment", SINK)
    problems += found + found2
    if isvc is None or sink is None:
        return problems
    store = sink_store(docs)
    if not store or "<unresolved" in store:
        return [*problems, f"sink --store resolves to {store!r}"]
    uri = str(predictor_model(isvc).get("storageUri", ""))
    rest = uri.removeprefix(f"{store.rstrip('/')}/models/")
    if rest == uri or len([part for part in rest.split("/") if part]) != 2:
        problems.append(f"storageUri {uri!r} is not a version folder "
                        f"{store.rstrip('/')}/models/<model>/<version> of the sink's store")
    if store.startswith("gs://"):
        pod = sink.get("spec", {}).get("template", {}).get("spec", {})
        problems += [f"sink: {p}" for p in _gcs_key_problems(pod, sink_container(sink))]
        account = isvc.get("spec", {}).get("predictor", {}).get("serviceAccountName")
        sa, found = one(docs, "ServiceAccount", account)
        if sa is None:
            problems.append(f"the predictor's ServiceAccount {account!r} is not in the render")
        elif {"name": KSERVE_GCS_SECRET} not in sa.get("secrets", []):
            problems.append(f"ServiceAccount/{account} does not list {KSERVE_GCS_SECRET}: "
                            "KServe's storage initializer cannot read gs://")
    return problems


def _gcs_key_problems(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    volumes = {v.get("name") for v in pod.get("volumes", [])
               if v.get("secret", {}).get("secretName") == GCS_SECRET}
    mounts = [m for m in container.get("volumeMounts", []) if m.get("name") in volumes]
    problems = []
    if not any(m.get("mountPath") == GCS_SECRET_MOUNT for m in mounts):
        problems.append(f"secret {GCS_SECRET} is not mounted at {GCS_SECRET_MOUNT}")
    if any(not m.get("readOnly") for m in mounts):
        problems.append(f"secret {GCS_SECRET} is mounted writable")
    env = {e.get("name"): e.get("value") for e in container.get("env", [])}
    if env.get("GOOGLE_APPLICATION_CREDENTIALS") != f"{GCS_SECRET_MOUNT}/key.json":
        problems.append("GOOGLE_APPLICATION_CREDENTIALS is not "
                        f"{GCS_SECRET_MOUNT}/key.json")
    return problems


# -- RBAC, evaluated like the API server ---------------------------------------------------


def _applies_to(binding: dict[str, Any], account: tuple[str, str]) -> bool:
    """Whether a (Cluster)RoleBinding names the service account ``(namespace, name)``.

    As ``appliesToUser`` (pkg/registry/rbac/validation/rule.go): a ServiceAccount subject
    without a namespace means the RoleBinding's own; groups are the ones every service
    account is in.
    """
    namespace, name = account
    own = binding.get("metadata", {}).get("namespace", "") if binding.get("kind") == \
        "RoleBinding" else ""
    groups = {"system:serviceaccounts", f"system:serviceaccounts:{namespace}",
              "system:authenticated"}
    for subject in binding.get("subjects") or []:
        kind = subject.get("kind")
        if kind == "ServiceAccount" and subject.get("name") == name \
                and (subject.get("namespace") or own) == namespace:
            return True
        if kind == "Group" and subject.get("name") in groups:
            return True
        if kind == "User" and subject.get("name") == f"system:serviceaccount:{namespace}:{name}":
            return True
    return False


def bound_rules(docs: Docs, account: tuple[str, str]) -> list[tuple[str | None, dict[str, Any]]]:
    """(namespace, rule) for every rule bound to ``account`` in ``docs`` (None: cluster-wide)."""
    found = []
    for binding in docs:
        kind = binding.get("kind")
        if kind not in ("RoleBinding", "ClusterRoleBinding") or not _applies_to(binding, account):
            continue
        ref = binding.get("roleRef", {})
        scope = binding["metadata"].get("namespace") if kind == "RoleBinding" else None
        if ref.get("apiGroup") != RBAC_GROUP:
            continue
        if ref.get("kind") == "Role" and kind == "RoleBinding":
            roles = [r for r in objects(docs, "Role", ref.get("name"))
                     if r["metadata"].get("namespace") == scope]
        elif ref.get("kind") == "ClusterRole":
            roles = objects(docs, "ClusterRole", ref.get("name"))
        else:
            roles = []
        found += [(scope, rule) for role in roles for rule in role.get("rules") or []]
    return found


def allowed(docs: Docs, account: tuple[str, str], verb: str, group: str, resource: str,
            namespace: str, name: str = "") -> bool:
    """Whether ``account`` may ``verb`` ``group/resource[/name]`` in ``namespace``.

    ``RuleAllows`` (pkg/apis/rbac/v1/evaluation_helpers.go): verbs, groups and resources
    match exactly or by ``*``; a rule with resourceNames matches only a request that names
    one of them, so never a ``create`` (whose request has no name) or a ``list``.
    """
    def matches(rule: dict[str, Any]) -> bool:
        names = rule.get("resourceNames") or []
        return (any(v in ("*", verb) for v in rule.get("verbs") or [])
                and any(g in ("*", group) for g in rule.get("apiGroups") or [])
                and any(r in ("*", resource) for r in rule.get("resources") or [])
                and (not names or (name != "" and name in names)))
    return any(scope in (None, namespace) and matches(rule)
               for scope, rule in bound_rules(docs, account))


def grants(docs: Docs, account: tuple[str, str]) -> set[Grant]:
    """Every (namespace, group, resource, verb, resourceName) the bound rules spell out."""
    return {(scope or "*", g, r, v, n) for scope, rule in bound_rules(docs, account)
            for g in rule.get("apiGroups") or [] for r in rule.get("resources") or []
            for v in rule.get("verbs") or [] for n in rule.get("resourceNames") or [""]}


def kubeflow_namespace() -> str:
    """Where single-user KFP runs the workflows: the namespace of manifests/kubeflow."""
    return _declared_namespace(KUBEFLOW_DIR)


def run_namespace(docs: Docs, namespace: str) -> tuple[str | None, list[str]]:
    """Where this render expects the run's pods: its own namespace (multi-user: the account
    is in the render) or the subject of the rollout binding (single-user: ``kubeflow``)."""
    if objects(docs, "ServiceAccount", PIPELINE_SA):
        return namespace, []
    binding, problems = one(docs, "RoleBinding", ROLLOUT_BINDING)
    if binding is None:
        return None, [*problems, "no install mode: the overlay lists neither "
                      "components/kfp-multi-user nor components/kfp-single-user"]
    subjects = [s for s in binding.get("subjects") or [] if s.get("name") == PIPELINE_SA]
    run_ns = subjects[0].get("namespace") if len(subjects) == 1 else None
    if run_ns != kubeflow_namespace():
        return None, [f"RoleBinding/{ROLLOUT_BINDING} subjects {binding.get('subjects')}: "
                      f"without ServiceAccount/{PIPELINE_SA} in the render (single-user) the "
                      f"subject must be {PIPELINE_SA} in {kubeflow_namespace()!r}"]
    return run_ns, []


def check_rbac(docs: Docs, namespace: str) -> list[str]:
    """The run's account gets exactly what it needs here, from Roles of this namespace."""
    problems = []
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        if objects(docs, kind):
            problems.append(f"{kind} present: the pipeline may act in its namespace only")
    run_ns, found = run_namespace(docs, namespace)
    problems += found
    if run_ns is None:
        return problems
    account = (run_ns, PIPELINE_SA)
    expected = rollout_grants(namespace) | (runner_grants(namespace) if run_ns == namespace
                                            else set())
    actual = grants(docs, account)
    if actual != expected:
        problems.append(f"Role grants to {run_ns}/{PIPELINE_SA}: {sorted(actual - expected)} "
                        f"more than a run needs, {sorted(expected - actual)} missing")
    for binding in objects(docs, "RoleBinding"):
        name = binding["metadata"]["name"]
        ref = binding.get("roleRef", {})
        if ref.get("apiGroup") != RBAC_GROUP or ref.get("kind") != "Role" \
                or not objects(docs, "Role", ref.get("name")):
            problems.append(f"RoleBinding/{name} roleRef {ref} is not a Role of this render")
        expected_subjects = [{"kind": "ServiceAccount", "name": PIPELINE_SA, "namespace": run_ns}]
        if binding.get("subjects") != expected_subjects:
            problems.append(f"RoleBinding/{name} subjects {binding.get('subjects')}, expected "
                            f"{expected_subjects}")
    return problems


def check_sink(docs: Docs, namespace: str) -> list[str]:
    deployment, problems = one(docs, "Deployment", SINK)
    service, found = one(docs, "Service", SINK)
    problems += found
    if deployment is None:
        return problems
    spec = deployment.get("spec", {})
    if spec.get("replicas") != 1:
        problems.append(f"sink replicas {spec.get('replicas')!r}: it must be one writer")
    if spec.get("strategy", {}).get("type") != "Recreate":
        problems.append(f"sink strategy {spec.get('strategy')}: Recreate keeps one writer")
    for hpa in objects(docs, "HorizontalPodAutoscaler"):
        if hpa.get("spec", {}).get("scaleTargetRef", {}).get("name") == SINK:
            problems.append("an HPA scales the sink (single writer)")
    pod = spec.get("template", {}).get("spec", {})
    pod_sc = pod.get("securityContext", {})
    containers = pod.get("containers", [])
    if not containers:
        return [*problems, "sink has no container"]
    for c in containers:
        sc = c.get("securityContext", {})
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append(f"sink container {c.get('name')} does not runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"sink container {c.get('name')} runs as uid 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"sink container {c.get('name')} allows privilege escalation")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"sink container {c.get('name')} has a writable root filesystem")
    container = sink_container(deployment)
    empty_dirs = {v.get("name") for v in pod.get("volumes", []) if "emptyDir" in v}
    if not any(m.get("mountPath") == "/tmp" and m.get("name") in empty_dirs
               for m in container.get("volumeMounts", [])):
        problems.append("sink has no emptyDir at /tmp (read-only root filesystem)")
    if not any(v.get("secret", {}).get("secretName") == GCS_SECRET
               for v in pod.get("volumes", [])):
        problems.append(f"sink does not mount the secret {GCS_SECRET}")
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != "/healthz" or (get.get("port") not in ports
                                             and get.get("port") not in ports.values()):
            problems.append(f"sink {probe} is not GET /healthz on a container port")
    if resolve_arg(docs, container, "--host") != "0.0.0.0":
        problems.append("sink does not bind 0.0.0.0 (--host)")
    sink_port = resolve_arg(docs, container, "--port")
    if service is not None:
        labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
        if not selects(service.get("spec", {}).get("selector", {}), labels):
            problems.append(f"Service/{SINK} does not select the sink pods")
        for port in service.get("spec", {}).get("ports", []):
            target = port.get("targetPort", port.get("port"))
            number = ports.get(target, target)
            if str(number) != str(sink_port):
                problems.append(f"Service/{SINK} port {port.get('port')} -> {target} does "
                                f"not reach the sink's --port {sink_port}")
    return problems


def check_monitoring(docs: Docs, namespace: str) -> list[str]:
    """A ServiceMonitor scrapes the predictor pods' /metrics, another the sink's."""
    problems = []
    isvc, _ = one(docs, "InferenceService")
    sink, _ = one(docs, "Deployment", SINK)
    services = objects(docs, "Service")
    scraped: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    monitors = objects(docs, "ServiceMonitor")
    if not monitors:
        return ["no ServiceMonitor"]
    for mon in monitors:
        name = mon["metadata"]["name"]
        spec = mon.get("spec", {})
        selector = spec.get("selector", {}).get("matchLabels", {})
        ns_sel = spec.get("namespaceSelector")
        if ns_sel and ns_sel != {"matchNames": [namespace]}:
            problems.append(f"ServiceMonitor/{name} looks outside {namespace}: {ns_sel}")
        matched = [s for s in services if selects(selector, s["metadata"].get("labels", {}))]
        if not matched:
            problems.append(f"ServiceMonitor/{name} selects no Service ({selector})")
        for svc in matched:
            port_names = {p.get("name") for p in svc.get("spec", {}).get("ports", [])}
            for ep in spec.get("endpoints", []):
                if ep.get("port") not in port_names:
                    problems.append(f"ServiceMonitor/{name} endpoint port {ep.get('port')!r} "
                                    f"is not a port of Service/{svc['metadata']['name']}")
                scraped.setdefault(svc["metadata"]["name"], []).append((svc, ep))
    if isvc is not None:
        # KServe labels the predictor pods with these (Knative's own Services are per revision).
        pod_labels = {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
                      "component": "predictor"}
        ok = any(selects(svc.get("spec", {}).get("selector", {}), pod_labels)
                 and ep.get("path", "/metrics") == "/metrics"
                 and any(p.get("name") == ep.get("port")
                         and str(p.get("targetPort", p.get("port"))) == str(PREDICTOR_PORT)
                         for p in svc["spec"].get("ports", []))
                 for pairs in scraped.values() for svc, ep in pairs)
        if not ok:
            problems.append(f"no ServiceMonitor scrapes /metrics on port {PREDICTOR_PORT} of "
                            f"the predictor pods {pod_labels}")
    if sink is not None:
        labels = sink["spec"]["template"]["metadata"].get("labels", {})
        if not any(selects(svc.get("spec", {}).get("selector", {}), labels)
                   and ep.get("path", "/metrics") == "/metrics"
                   for pairs in scraped.values() for svc, ep in pairs):
            problems.append("no ServiceMonitor scrapes the sink's /metrics")
    return problems


#: Grafana's dashboard sidecar loads ConfigMaps with this label (grafana/helm-charts,
#: charts/grafana/values.yaml: sidecar.dashboards.label; labelValue "" = any value).
DASHBOARD_LABEL = ("grafana_dashboard", "1")


def check_dashboard_and_rules(docs: Docs, namespace: str) -> list[str]:
    """The overlay ships the generated dashboard for the sidecar and the generated rules."""
    problems = []
    boards = [d for d in objects(docs, "ConfigMap")
              if d["metadata"].get("labels", {}).get(DASHBOARD_LABEL[0]) == DASHBOARD_LABEL[1]]
    if [d["metadata"]["name"] for d in boards] != ["driftloop-dashboard"]:
        problems.append(f"expected one ConfigMap driftloop-dashboard labelled "
                        f"{DASHBOARD_LABEL[0]}={DASHBOARD_LABEL[1]!r}, found "
                        f"{[d['metadata']['name'] for d in boards]}")
    for board in boards:
        data = board.get("data", {})
        if list(data) != ["driftloop-dashboard.json"]:
            problems.append(f"ConfigMap/{board['metadata']['name']}: data keys {list(data)}")
        elif json.loads(data["driftloop-dashboard.json"]) != dashboard():
            problems.append(f"ConfigMap/{board['metadata']['name']}: the dashboard is not a "
                            "fresh generation (make monitoring)")
    rules = objects(docs, "PrometheusRule")
    if [r["metadata"]["name"] for r in rules] != ["driftloop"]:
        problems.append(f"expected one PrometheusRule driftloop, found "
                        f"{[r['metadata']['name'] for r in rules]}")
    for rule in rules:
        if rule.get("spec") != rules_file():
            problems.append(f"PrometheusRule/{rule['metadata']['name']}: its groups are not "
                            "a fresh generation (make monitoring)")
    return problems


def check_images(docs: Docs, namespace: str) -> list[str]:
    problems = []
    for d in docs:
        containers = list(containers_of(d))
        if d.get("kind") == "InferenceService" and "image" in predictor_model(d):
            containers.append({"name": "model", "image": predictor_model(d)["image"]})
        for c in containers:
            image = str(c.get("image", ""))
            label = f"{d.get('kind')}/{d['metadata'].get('name')} container {c.get('name')}"
            name, _, digest = image.partition("@")
            repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else \
                (name, "", "")
            if not digest and not tag:
                problems.append(f"{label}: image {image!r} has no tag or digest")
            if tag == "latest":
                problems.append(f"{label}: image {image!r} uses :latest")
            if repo != PREDICTOR_IMAGE:
                problems.append(f"{label}: image {image!r} is not {PREDICTOR_IMAGE}")
    return problems


def check_resources(docs: Docs, namespace: str) -> list[str]:
    problems = []
    for d in docs:
        containers = list(containers_of(d))
        if d.get("kind") == "InferenceService":
            containers.append({"name": "model", **predictor_model(d)})
        for c in containers:
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(part, {}))
                if missing:
                    problems.append(f"{d.get('kind')}/{d['metadata'].get('name')} container "
                                    f"{c.get('name')}: no {part} for {sorted(missing)}")
    return problems


def check_fields(docs: Docs, namespace: str) -> list[str]:
    """Every object deserialises strictly into its official model (test_manifest_models)."""
    return [p for d in docs for p in model_problems(d)[1]]


CHECKS: dict[str, Callable[[Docs, str], list[str]]] = {
    "namespaces": check_namespaces,
    "inferenceservice": check_inferenceservice,
    "store": check_store,
    "rbac": check_rbac,
    "sink": check_sink,
    "monitoring": check_monitoring,
    "images": check_images,
    "resources": check_resources,
    "fields": check_fields,
}


def all_problems(docs: Docs, namespace: str) -> list[str]:
    return [p for check in CHECKS.values() for p in check(docs, namespace)]


# -- the manifests as written ------------------------------------------------------------


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS), OVERLAYS


#: Every overlay as shipped and in both install modes; the base leaves the mode (and with it
#: every RoleBinding) to the overlay, so its RBAC is checked by test_base_binds_nobody.
MODE_TARGETS = [f"{overlay}@{mode}" for overlay in OVERLAYS for mode in MODES]


@pytest.mark.parametrize(("target", "check"), [
    (target, check) for target in [*TARGETS, *MODE_TARGETS] for check in sorted(CHECKS)
    if (target, check) != ("base", "rbac")])
def test_rendered_manifests(target: str, check: str) -> None:
    problems = CHECKS[check](rendered(target), namespace_of(target))
    assert problems == [], f"{target}: " + "\n".join(problems)


@pytest.mark.parametrize("target", [*OVERLAYS, *MODE_TARGETS])
def test_overlays_ship_the_dashboard_and_the_rules(target: str) -> None:
    docs = rendered(target)
    assert check_dashboard_and_rules(docs, namespace_of(target)) == []
    for kind, name in (("ConfigMap", "driftloop-dashboard"), ("PrometheusRule", "driftloop")):
        assert objects(docs, kind, name)[0]["metadata"]["namespace"] == namespace_of(target)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: objects(d, "ConfigMap", "driftloop-dashboard")[0]["metadata"]["labels"].pop(
        "grafana_dashboard"), "expected one ConfigMap driftloop-dashboard"),
    (lambda d: objects(d, "ConfigMap", "driftloop-dashboard")[0]["data"].__setitem__(
        "driftloop-dashboard.json", "{}"), "not a fresh generation"),
    (lambda d: _set("spec.groups.0.rules.0.expr", "vector(1)")(
        objects(d, "PrometheusRule")[0]), "groups are not a fresh generation"),
    (lambda d: d.remove(objects(d, "PrometheusRule")[0]), "expected one PrometheusRule"),
], ids=["sidecar label missing", "stale dashboard", "stale rule", "no rules"])
def test_the_monitoring_check_catches(mutate: Callable[[Docs], Any], expected: str) -> None:
    docs = rendered("prod")
    mutate(docs)
    problems = check_dashboard_and_rules(docs, namespace_of("prod"))
    assert any(expected in p for p in problems), problems


def test_base_binds_nobody() -> None:
    """The rollout Role is in the base; who gets it is the install mode's business."""
    docs = rendered("base")
    assert [r["metadata"]["name"] for r in objects(docs, "Role")] == [ROLLOUT_ROLE]
    assert objects(docs, "RoleBinding") == [] and objects(docs, "ServiceAccount", PIPELINE_SA) == []
    assert any("no install mode" in p for p in check_rbac(docs, namespace_of("base")))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_picks_one_install_mode(overlay: str) -> None:
    kustomization = yaml.safe_load((OVERLAYS_DIR / overlay / "kustomization.yaml").read_text())
    picked = [c for c in kustomization.get("components", [])
              if Path(c).name in MODES.values()]
    assert len(picked) == 1, f"{overlay} lists {picked}: pick exactly one of {list(MODES.values())}"
    assert Path(picked[0]).name == MODES[SHIPPED_MODES[overlay]]
    docs = rendered(overlay)
    run_ns, problems = run_namespace(docs, namespace_of(overlay))
    assert problems == []
    assert run_ns == (namespace_of(overlay) if SHIPPED_MODES[overlay] == "multi-user"
                      else kubeflow_namespace())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_mode_copies_render_like_the_shipped_overlays(overlay: str) -> None:
    """The copies behind MODE_TARGETS differ from the tree only in the component they pick."""
    assert rendered(f"{overlay}@{SHIPPED_MODES[overlay]}") == rendered(overlay)


SINGLE_USER_BREAKAGES: dict[str, tuple[Callable[[Docs], None], str]] = {
    "subject in the serving namespace": (
        lambda d: _set("subjects.0.namespace", d[0]["metadata"]["namespace"])(
            objects(d, "RoleBinding", ROLLOUT_BINDING)[0]), "subject must be"),
    "subject is KFP's default account": (
        lambda d: _set("subjects.0.name", "pipeline-runner")(
            objects(d, "RoleBinding", ROLLOUT_BINDING)[0]), "subject must be"),
    "both modes at once": (
        lambda d: d.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
            "name": PIPELINE_SA, "namespace": d[0]["metadata"]["namespace"],
            "labels": dict([PART_OF])}}), "missing"),
    "no rollout binding": (
        lambda d: d.remove(objects(d, "RoleBinding", ROLLOUT_BINDING)[0]), "no install mode"),
}


@pytest.mark.parametrize("breakage", sorted(SINGLE_USER_BREAKAGES))
def test_checks_catch_a_wrong_single_user_manifest(breakage: str) -> None:
    docs, namespace = rendered("prod@single-user"), namespace_of("prod@single-user")
    assert all_problems(docs, namespace) == []
    mutate, expected = SINGLE_USER_BREAKAGES[breakage]
    mutate(docs)
    problems = all_problems(docs, namespace)
    assert any(expected in p for p in problems), problems


def test_the_kubeflow_namespace_render() -> None:
    """Single-user: ServiceAccount, runner Role and binding in KFP's namespace, nothing else."""
    docs, namespace = rendered("kubeflow"), namespace_of("kubeflow")
    assert namespace == "kubeflow"
    assert check_namespaces(docs, namespace) == []
    assert check_fields(docs, namespace) == []
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("Role", RUNNER_ROLE), ("RoleBinding", RUNNER_ROLE), ("ServiceAccount", PIPELINE_SA)]
    assert grants(docs, (namespace, PIPELINE_SA)) == runner_grants(namespace)


def _run_docs(overlay: str, mode: str) -> tuple[Docs, str, str]:
    """Everything applied for ``overlay`` in ``mode``, the serving and the run namespace."""
    target = f"{overlay}@{mode}"
    docs, serving_ns = rendered(target), namespace_of(target)
    if mode == "single-user":
        return [*docs, *rendered("kubeflow")], serving_ns, kubeflow_namespace()
    return docs, serving_ns, serving_ns


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_run_account_can_do_what_a_kfp_run_needs(overlay: str, mode: str) -> None:
    """Every pod of a KFP 2.17 run uses the run's account (KFP's driver and launcher, Argo's
    executor, the rollout step); each must be allowed, nothing more."""
    docs, serving_ns, run_ns = _run_docs(overlay, mode)
    account = (run_ns, PIPELINE_SA)
    assert objects(docs, "ServiceAccount", PIPELINE_SA)[0]["metadata"]["namespace"] == run_ns
    # KFP's root-DAG driver: the launcher config (Forbidden fails the run)
    assert allowed(docs, account, "get", "", "configmaps", run_ns, "kfp-launcher")
    # KFP's launcher: the default minio:// pipeline root's keys
    assert allowed(docs, account, "get", "", "secrets", run_ns, "mlpipeline-minio-artifact")
    # Argo's executor: the task results
    for verb in ("create", "patch"):
        assert allowed(docs, account, verb, "argoproj.io", "workflowtaskresults", run_ns)
    # driftloop's rollout step: the InferenceService in the serving namespace
    for verb in ("get", "list", "watch", "patch"):
        assert allowed(docs, account, verb, "serving.kserve.io", "inferenceservices",
                       serving_ns, ISVC)
    # and nothing beyond
    refused = [
        ("create", "serving.kserve.io", "inferenceservices", serving_ns, ""),
        ("delete", "serving.kserve.io", "inferenceservices", serving_ns, ISVC),
        ("update", "serving.kserve.io", "inferenceservices", serving_ns, ISVC),
        ("get", "", "secrets", run_ns, GCS_SECRET),
        ("get", "", "secrets", serving_ns, "driftloop-gcs-kserve"),
        ("list", "", "secrets", run_ns, ""),
        ("list", "", "configmaps", run_ns, ""),
        ("get", "", "configmaps", run_ns, "driftloop-config"),
        ("update", "", "configmaps", run_ns, "kfp-launcher"),
        ("delete", "argoproj.io", "workflowtaskresults", run_ns, "t"),
        ("patch", "argoproj.io", "workflows", run_ns, "w"),
        ("get", "", "pods", run_ns, "p"),
        ("create", "argoproj.io", "workflowtaskresults", "default", ""),
        ("get", "serving.kserve.io", "inferenceservices", "default", ISVC),
    ]
    for verb, group, resource, namespace, name in refused:
        assert not allowed(docs, account, verb, group, resource, namespace, name), \
            (verb, group, resource, namespace, name)
    assert grants(docs, account) == rollout_grants(serving_ns) | runner_grants(run_ns)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_single_user_needs_the_kubeflow_render_too(overlay: str) -> None:
    """Without manifests/kubeflow the driver would be refused kfp-launcher."""
    target = f"{overlay}@single-user"
    account = (kubeflow_namespace(), PIPELINE_SA)
    assert not allowed(rendered(target), account, "get", "", "configmaps",
                       kubeflow_namespace(), "kfp-launcher")
    assert allowed(rendered(target), account, "patch", "serving.kserve.io", "inferenceservices",
                   namespace_of(target), ISVC)


def test_the_rbac_evaluator_follows_the_api_server() -> None:
    """The few RBAC rules the checks rely on, on hand-made objects."""
    def role(rule: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "Role", "metadata": {"name": "r", "namespace": "a"}, "rules": [rule]}

    def binding(subject: dict[str, Any], namespace: str = "a") -> dict[str, Any]:
        return {"kind": "RoleBinding", "metadata": {"name": "b", "namespace": namespace},
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "r"},
                "subjects": [subject]}

    sa = {"kind": "ServiceAccount", "name": "s"}
    get_cm = role({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"],
                   "resourceNames": ["kfp-launcher"]})
    docs = [get_cm, binding(sa)]  # a subject without namespace: the binding's own
    assert allowed(docs, ("a", "s"), "get", "", "configmaps", "a", "kfp-launcher")
    assert not allowed(docs, ("a", "s"), "get", "", "configmaps", "a", "other")
    assert not allowed(docs, ("a", "s"), "list", "", "configmaps", "a")
    assert not allowed(docs, ("b", "s"), "get", "", "configmaps", "a", "kfp-launcher")
    assert not allowed(docs, ("a", "s"), "get", "", "configmaps", "b", "kfp-launcher")
    # a binding in another namespace than the Role's finds no Role
    assert not allowed([get_cm, binding(sa, "b")], ("b", "s"), "get", "", "configmaps", "b",
                       "kfp-launcher")
    # resourceNames never allow create
    named = role({"apiGroups": ["x"], "resources": ["y"], "verbs": ["create"],
                  "resourceNames": ["n"]})
    assert not allowed([named, binding(sa)], ("a", "s"), "create", "x", "y", "a")
    star = role({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})
    group = {"kind": "Group", "name": "system:serviceaccounts:a"}
    assert allowed([star, binding(group)], ("a", "any"), "delete", "apps", "deployments", "a",
                   "d")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_sets_its_own_namespace_and_store(overlay: str) -> None:
    docs, base = rendered(overlay), rendered("base")
    assert namespace_of(overlay) != namespace_of("base")
    assert sink_store(docs) != sink_store(base), \
        f"{overlay} keeps the base's placeholder store {sink_store(docs)}"
    isvc, _ = one(docs, "InferenceService")
    base_isvc, _ = one(base, "InferenceService")
    assert isvc is not None and base_isvc is not None
    assert predictor_model(isvc)["storageUri"] != predictor_model(base_isvc)["storageUri"]


def test_prod_runs_two_predictor_replicas_at_least() -> None:
    isvc, _ = one(rendered("prod"), "InferenceService")
    assert isvc is not None and isvc["spec"]["predictor"]["minReplicas"] >= 2


def test_base_image_tag_is_the_package_version() -> None:
    images = {c["image"] for d in rendered("base") for c in containers_of(d)}
    assert images == {f"{PREDICTOR_IMAGE}:{__version__}"}, \
        "bump the image tag in manifests/base/kustomization.yaml with driftloop.__version__"


@pytest.mark.parametrize("target", TARGETS)
def test_the_rollout_step_can_drive_the_inferenceservice(target: str) -> None:
    """The rollout backend's own checks accept the rendered object and read its state."""
    rollout = pytest.importorskip("driftloop.rollout.inference_service")
    docs = rendered(target)
    isvc, _ = one(docs, "InferenceService")
    assert isvc is not None
    assert rollout.validate_inference_service(isvc) == []
    rollout.check_serverless(isvc, target)
    state = rollout.ServiceState.from_object(isvc)
    assert state.spec_storage_uri == predictor_model(isvc)["storageUri"]
    assert not state.canary_in_progress and state.canary_traffic_percent is None
    # what the backend would create without manifests names this same runtime and format
    template_model = rollout.DEFAULT_TEMPLATE["spec"]["predictor"]["model"]
    assert template_model["runtime"] == predictor_model(isvc)["runtime"]
    assert template_model["modelFormat"] == predictor_model(isvc)["modelFormat"]


# -- the checks catch wrong manifests ----------------------------------------------------


def _isvc(docs: Docs) -> dict[str, Any]:
    return objects(docs, "InferenceService")[0]


def _runtime(docs: Docs) -> dict[str, Any]:
    return objects(docs, "ServingRuntime")[0]


def _sink_pod(docs: Docs) -> dict[str, Any]:
    return objects(docs, "Deployment", SINK)[0]["spec"]["template"]["spec"]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return apply


def _role(docs: Docs, name: str = ROLLOUT_ROLE) -> dict[str, Any]:
    return objects(docs, "Role", name)[0]


def _runner_rule(docs: Docs, resource: str) -> dict[str, Any]:
    return next(r for r in _role(docs, RUNNER_ROLE)["rules"] if resource in r["resources"])


BREAKAGES: dict[str, tuple[Callable[[Docs], None], str]] = {
    "role with * verbs": (
        lambda d: _set("rules.0.verbs", ["*"])(_role(d)), "Role grants"),
    "role with * resources": (
        lambda d: _set("rules.0.resources", ["*"])(_role(d)), "Role grants"),
    "role with create": (
        lambda d: _role(d)["rules"][0]["verbs"].append("create"), "Role grants"),
    "role without watch": (
        lambda d: _role(d)["rules"][0]["verbs"].remove("watch"), "Role grants"),
    "role reading secrets": (
        lambda d: _role(d)["rules"].append(
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}), "Role grants"),
    "runner without kfp-launcher": (
        lambda d: _role(d, RUNNER_ROLE)["rules"].remove(_runner_rule(d, "configmaps")),
        "('ml', '', 'configmaps', 'get', 'kfp-launcher')] missing"),
    "runner reading every configmap": (
        lambda d: _runner_rule(d, "configmaps").pop("resourceNames"), "Role grants"),
    "runner reading every secret": (
        lambda d: _runner_rule(d, "secrets").pop("resourceNames"), "Role grants"),
    "runner without the artifact secret": (
        lambda d: _role(d, RUNNER_ROLE)["rules"].remove(_runner_rule(d, "secrets")),
        "mlpipeline-minio-artifact')] missing"),
    "runner without task results": (
        lambda d: _role(d, RUNNER_ROLE)["rules"].remove(_runner_rule(d, "workflowtaskresults")),
        "'workflowtaskresults', 'create', '')"),
    "runner patching no task results": (
        lambda d: _runner_rule(d, "workflowtaskresults")["verbs"].remove("patch"),
        "'workflowtaskresults', 'patch', '')] missing"),
    "runner binding to another account": (
        lambda d: _set("subjects.0.name", "default-editor")(
            objects(d, "RoleBinding", RUNNER_ROLE)[0]), "RoleBinding/driftloop-pipeline-runner"),
    "runner role in another namespace": (
        lambda d: _set("metadata.namespace", "kubeflow")(_role(d, RUNNER_ROLE)), "missing"),
    "no pipeline account": (
        lambda d: d.remove(objects(d, "ServiceAccount", PIPELINE_SA)[0]), "subject must be"),
    "probe without a port": (
        lambda d: _runtime(d)["spec"]["containers"][0]["readinessProbe"]["httpGet"].pop("port"),
        "readinessProbe.httpGet.port: required by V1HTTPGetAction"),
    "unknown probe field": (
        lambda d: _runtime(d)["spec"]["containers"][0]["livenessProbe"].__setitem__(
            "httpGet.port", 8080), "livenessProbe.httpGet.port: not a field of V1Probe"),
    "cluster role": (
        lambda d: d.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                            "metadata": {"name": "x", "labels": dict([PART_OF])}}),
        "ClusterRole present"),
    "binding to another service account": (
        lambda d: _set("subjects.0.name", "default")(objects(d, "RoleBinding", ROLLOUT_BINDING)[0]),
        f"RoleBinding/{ROLLOUT_BINDING} subjects"),
    "binding subject in another namespace": (
        lambda d: _set("subjects.0.namespace", "kubeflow")(
            objects(d, "RoleBinding", ROLLOUT_BINDING)[0]),
        f"RoleBinding/{ROLLOUT_BINDING} subjects"),
    "binding to a cluster role": (
        lambda d: _set("roleRef.kind", "ClusterRole")(
            objects(d, "RoleBinding", ROLLOUT_BINDING)[0]),
        f"RoleBinding/{ROLLOUT_BINDING} roleRef"),
    "raw deployment": (
        lambda d: _set("metadata.annotations", {"serving.kserve.io/deploymentMode":
                                                "RawDeployment"})(_isvc(d)), "deploymentMode"),
    "logger to the base namespace": (
        lambda d: _set("spec.predictor.logger.url",
                       "http://driftloop-sink.driftloop.svc.cluster.local/")(_isvc(d)),
        "logger url"),
    "logger to another service": (
        lambda d: _set("spec.predictor.logger.url",
                       f"http://sink.{d[0]['metadata']['namespace']}.svc.cluster.local/")(
            _isvc(d)), "logger url"),
    "logger mode request": (
        lambda d: _set("spec.predictor.logger.mode", "request")(_isvc(d)), "logger mode"),
    "predictor as root": (
        lambda d: _set("spec.containers.0.securityContext.runAsNonRoot", False)(
            _runtime(d)), "predictor container does not runAsNonRoot"),
    "predictor pod securityContext": (
        lambda d: _set("spec.predictor.securityContext", {"fsGroup": 1})(_isvc(d)),
        "pod-level securityContext"),
    "misspelt predictor field": (
        lambda d: _isvc(d)["spec"]["predictor"].__setitem__("minReplica", 1), "minReplica"),
    "runtime annotations under metadata only": (
        lambda d: _runtime(d)["spec"]["containers"][0].__setitem__("annotations", {}),
        "not a field of V1Container"),
    "misplaced deployment field": (
        lambda d: _sink_pod(d).__setitem__("replicas", 1), "not a field of V1PodSpec"),
    "no min replicas": (
        lambda d: _isvc(d)["spec"]["predictor"].pop("minReplicas"), "minReplicas"),
    "two sink replicas": (
        lambda d: _set("spec.replicas", 2)(objects(d, "Deployment", SINK)[0]), "sink replicas"),
    "rolling sink": (
        lambda d: _set("spec.strategy", {"type": "RollingUpdate"})(
            objects(d, "Deployment", SINK)[0]), "sink strategy"),
    "sink HPA": (
        lambda d: d.append({"kind": "HorizontalPodAutoscaler", "metadata": {
            "name": "s", "namespace": d[0]["metadata"]["namespace"], "labels": dict([PART_OF])},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": SINK}}}), "an HPA"),
    "sink as root": (
        lambda d: _sink_pod(d).pop("securityContext"), "runAsNonRoot"),
    "sink writable root": (
        lambda d: _set("containers.0.securityContext.readOnlyRootFilesystem", False)(
            _sink_pod(d)), "writable root"),
    "sink without the secret": (
        lambda d: _sink_pod(d).__setitem__("volumes", [
            v for v in _sink_pod(d)["volumes"] if "secret" not in v]), "secret"),
    "sink probe elsewhere": (
        lambda d: _set("containers.0.readinessProbe.httpGet.path", "/")(_sink_pod(d)),
        "readinessProbe"),
    "sink service to a wrong port": (
        lambda d: _set("spec.ports.0.targetPort", 9999)(objects(d, "Service", SINK)[0]),
        "does not reach"),
    "predictor store differs": (
        lambda d: _set("spec.predictor.model.storageUri", "gs://other/p/models/m/v1")(_isvc(d)),
        "is not a version folder"),
    "model URI is the store itself": (
        lambda d: _set("spec.predictor.model.storageUri", sink_store(d))(_isvc(d)),
        "is not a version folder"),
    "runtime missing": (
        lambda d: d.remove(_runtime(d)), "names no ServingRuntime"),
    "runtime without the format": (
        lambda d: _set("spec.supportedModelFormats.0.name", "xgboost")(_runtime(d)),
        "model format"),
    "runtime serving another folder": (
        lambda d: _set("spec.containers.0.args.1", "/models")(_runtime(d)), "/mnt/models"),
    "predictor account without the storage key": (
        lambda d: objects(d, "ServiceAccount", "driftloop-predictor")[0].pop("secrets"),
        KSERVE_GCS_SECRET),
    "monitor selecting nothing": (
        lambda d: _set("spec.selector.matchLabels", {"app": "nope"})(
            objects(d, "ServiceMonitor")[0]), "selects no Service"),
    "metrics service off the predictor": (
        lambda d: _set("spec.selector", {"app": "other"})(
            objects(d, "Service", "driftloop-predictor-metrics")[0]),
        "scrapes /metrics on port"),
    "latest image": (
        lambda d: _set("spec.containers.0.image", f"{PREDICTOR_IMAGE}:latest")(_runtime(d)),
        ":latest"),
    "model image override on latest": (
        lambda d: _set("spec.predictor.model.image", f"{PREDICTOR_IMAGE}:latest")(_isvc(d)),
        ":latest"),
    "predictor without limits": (
        lambda d: _isvc(d)["spec"]["predictor"]["model"]["resources"].pop("limits"),
        "no limits"),
    "untagged image": (
        lambda d: _set("containers.0.image", PREDICTOR_IMAGE)(_sink_pod(d)), "no tag"),
    "object in another namespace": (
        lambda d: _set("metadata.namespace", "default")(objects(d, "ConfigMap")[0]),
        "namespace 'default'"),
    "no limits": (
        lambda d: _sink_pod(d)["containers"][0]["resources"].pop("limits"), "no limits"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_checks_catch_a_wrong_manifest(breakage: str) -> None:
    docs = rendered("prod")
    assert all_problems(docs, namespace_of("prod")) == []
    mutate, expected = BREAKAGES[breakage]
    mutate(docs)
    problems = all_problems(docs, namespace_of("prod"))
    assert any(expected in p for p in problems), problems


def test_a_wrong_overlay_renders_and_fails_the_checks(tmp_path: Path) -> None:
    """End to end: an overlay that widens the Role renders fine and is caught."""
    tree = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, tree, ignore=shutil.ignore_patterns("*.md"))
    bad = tree / "overlays" / "bad"
    shutil.copytree(tree / "overlays" / "prod", bad)
    kustomization = yaml.safe_load((bad / "kustomization.yaml").read_text())
    kustomization["namespace"] = "bad"
    kustomization["patches"].append({
        "target": {"kind": "Role"},
        "patch": '[{"op": "replace", "path": "/rules/0/verbs", "value": ["*"]}]',
    })
    (bad / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    docs = render(bad)
    assert check_namespaces(docs, "bad") == []  # the overlay itself is otherwise fine
    problems = all_problems(docs, "bad")
    assert any("Role grants" in p and "'*'" in p for p in problems), problems
