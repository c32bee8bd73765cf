"""What a cluster refuses, and where: admission (422 or a 403 denial) or reconcile time.

A write to an InferenceService meets three checks on a cluster, in this order:

1. the API server's structural schema of KServe's CRD (:func:`schema_problems`): a 422
   ``Invalid`` naming the field;
2. KServe's validating webhook (:func:`webhook_problems`): HTTP 403 with a ``Status`` whose
   message reads ``admission webhook "inferenceservice.kserve-webhook-server.validator"
   denied the request: ...`` (controller-runtime's ``Denied`` answers 403 Forbidden;
   k8s.io/apiserver's webhook errors/statuserror.go ``ToStatusErr`` adds the prefix);
3. after the object is stored (200), KServe's controller and Knative
   (:func:`controller_problems`): nothing in the answer says so; an event or a status
   condition does, later.

The mutating webhook runs before 1 (the deployment mode rewrite:
:func:`driftloop.rollout.inference_service.mode_annotation_fix`). Its own module because
the local backend and the Kubernetes API stand-in run the same rules, which need only the
API names (:mod:`driftloop.rollout.names`), not the object helpers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from driftloop.rollout.names import API_VERSION, DEPLOYMENT_MODE_ANNOTATION, KIND

#: The schemes KServe's controller accepts in ``storageUri`` besides local paths and Azure
#: blob URLs (KServe v0.20.0 pkg/controller/v1beta1/inferenceservice/utils/utils.go,
#: SupportedStorageURIPrefixList, checked by ValidateStorageURI at reconcile time, not at
#: admission). A ClusterStorageContainer can add more; we do not model those.
SUPPORTED_STORAGE_URI_PREFIXES = ("gs://", "s3://", "pvc://", "file://", "https://", "http://",
                                  "hdfs://", "webhdfs://", "oci://", "hf://")
#: KServe's InferenceService name rule (v0.20.0 inference_service_validation.go, IsvcNameFmt).
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: The validating webhook's name, as the API server quotes it in a denial
#: (v0.20.0 config/webhook/manifests.yaml).
VALIDATING_WEBHOOK = "inferenceservice.kserve-webhook-server.validator"
#: The predictor's implementations, one of which must be set (v0.20.0 predictor.go,
#: PredictorSpec; the webhook's validateExactlyOneImplementation).
PREDICTOR_IMPLEMENTATIONS = ("sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx",
                             "huggingface", "pmml", "lightgbm", "paddle", "model")


def schema_problems(obj: Any) -> list[str]:
    """What the API server's CRD schema refuses (422 Invalid) among the fields we write.

    KServe v0.20.0 config/crd/full/serving.kserve.io_inferenceservices.yaml: ``spec``
    requires ``predictor``, ``modelFormat`` requires ``name``, ``storageUri`` is a string
    and ``canaryTrafficPercent`` an int64 -- with no range: 150 passes admission.

    Returns:
        ``"<field path>: <problem>"`` strings; empty when the object is valid.
    """
    if not isinstance(obj, Mapping):
        return ["<body>: expected an object"]
    errors: list[str] = []
    if obj.get("apiVersion") != API_VERSION:
        errors.append(f"apiVersion: Unsupported value: {obj.get('apiVersion')!r}: "
                      f"supported values: {API_VERSION!r}")
    if obj.get("kind") != KIND:
        errors.append(f"kind: Unsupported value: {obj.get('kind')!r}: supported values: {KIND!r}")
    spec = obj.get("spec")
    predictor = spec.get("predictor") if isinstance(spec, Mapping) else None
    if not isinstance(predictor, Mapping):
        errors.append("spec.predictor: Required value")
        return errors
    model = predictor.get("model")
    if isinstance(model, Mapping):
        fmt = model.get("modelFormat")
        if fmt is not None and (not isinstance(fmt, Mapping) or not fmt.get("name")):
            errors.append("spec.predictor.model.modelFormat.name: Required value")
        uri = model.get("storageUri")
        if uri is not None and not isinstance(uri, str):
            errors.append(f"spec.predictor.model.storageUri: Invalid value: {uri!r}: "
                          "spec.predictor.model.storageUri in body must be of type string")
    value = predictor.get("canaryTrafficPercent")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        errors.append(f"spec.predictor.canaryTrafficPercent: Invalid value: {value!r}: "
                      "spec.predictor.canaryTrafficPercent in body must be of type integer")
    return errors


def webhook_problems(obj: Mapping[str, Any], old: Mapping[str, Any] | None = None, *,
                     checks_mode_change: bool = True) -> list[str]:
    """What KServe's validating webhook refuses (a 403 denial) among the fields we write.

    KServe v0.20.0 pkg/apis/serving/v1beta1/inference_service_validation.go:
    ``validateInferenceServiceName`` (the name regex), ``validateExactlyOneImplementation``
    (the predictor names one implementation) and, on update, ``validateDeploymentMode``
    (the annotation may not differ from the old object's ``status.deploymentMode``; since
    0.17 both sides are read through ParseDeploymentMode -- the mutating webhook has
    rewritten the annotation by then -- in 0.16 literally; 0.15 has no such check:
    ``checks_mode_change``). The messages are the webhook's own.

    Args:
        obj: The object after the mutating webhook.
        old: The stored object on an update; None on a create.
        checks_mode_change: Whether the deployment mode check runs (KServe >= 0.16).
    """
    problems: list[str] = []
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        problems.append(
            f'the InferenceService "{name}" is invalid: a InferenceService name must consist '
            "of lower case alphanumeric characters or '-', and must start with alphabetical "
            '''character. (e.g. "my-name" or "abc-123", regex used for validation is '''
            "'[a-z]([-a-z0-9]*[a-z0-9])?')"
        )
    predictor = (obj.get("spec") or {}).get("predictor") or {}
    chosen = [k for k in PREDICTOR_IMPLEMENTATIONS if predictor.get(k) is not None]
    if len(chosen) + (1 if predictor.get("containers") else 0) != 1:
        problems.append("exactly one of [SKLearn, XGBoost, Tensorflow, PyTorch, Triton, ONNX, "
                        "HuggingFace, PMML, LightGBM, Paddle, Model, ...] must be specified "
                        "in PredictorSpec")
    if old is not None and checks_mode_change:
        old_mode = (old.get("status") or {}).get("deploymentMode")
        annotation = ((obj.get("metadata") or {}).get("annotations") or {}).get(
            DEPLOYMENT_MODE_ANNOTATION)
        if old_mode and annotation is not None and annotation != old_mode:
            problems.append(f"update rejected: deploymentMode cannot be changed from "
                            f"'{old_mode}' to '{annotation}'")
    return problems


def validate_inference_service(obj: Any) -> list[str]:
    """What admission refuses: :func:`schema_problems` plus :func:`webhook_problems` (create).

    Not what KServe's controller refuses later (:func:`controller_problems`): a cluster
    accepts those with 200 and reports them in events or the status.
    """
    problems = schema_problems(obj)
    if not problems:
        problems += webhook_problems(obj)
    return problems


def _storage_uri_error(uri: str) -> str | None:
    """KServe v0.20.0 utils.ValidateStorageURI without storage containers (the default)."""
    if not re.search(r"\w+?://", uri):
        return None  # a local path
    if "blob.core.windows.net" in uri:
        if re.search(r"https://(.+?).blob.core.windows.net/(.+)", uri):
            return None
    elif uri.startswith(SUPPORTED_STORAGE_URI_PREFIXES):
        return None
    return (f"storageUri, must be one of: [{', '.join(SUPPORTED_STORAGE_URI_PREFIXES)}] or "
            "match https://{}.blob.core.windows.net/{}/{} or be an absolute or relative local "
            f"path. StorageUri [{uri}] is not supported")


def controller_problems(obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What a cluster accepts (200) but KServe's controller then fails to reconcile.

    * an unsupported ``storageUri`` scheme: ``Predictor.Reconcile`` stops before touching
      the Knative Service (v0.20.0 components/predictor.go addStorageInitializerAnnotations
      -> utils.ValidateStorageURI); the controller records a Warning event ``InternalError``
      with this message (controller.go) and the status does not change at all;
    * ``canaryTrafficPercent`` outside 0..100: KServe writes it into the Knative Service's
      traffic, Knative's webhook refuses that (knative.dev/serving v0.48.1
      pkg/apis/serving/v1/route_validation.go) and KServe marks ``PredictorReady`` False
      with reason ``ReconcileFailed`` (components/predictor.go).

    Returns:
        ``(kind, message)`` pairs: kind ``storageUri`` or ``traffic``.
    """
    problems: list[tuple[str, str]] = []
    predictor = (obj.get("spec") or {}).get("predictor") or {}
    uri = (predictor.get("model") or {}).get("storageUri")
    if isinstance(uri, str):
        error = _storage_uri_error(uri)
        if error is not None:
            problems.append(("storageUri", f"StorageURI not supported: {error}"))
    percent = predictor.get("canaryTrafficPercent")
    if isinstance(percent, int) and not 0 <= percent <= 100:
        problems.append(("traffic", (
            "fails to reconcile predictor: fails to reconcile knative service: admission "
            'webhook "validation.webhook.serving.knative.dev" denied the request: validation '
            f"failed: expected 0 <= {percent} <= 100: spec.traffic[0].percent")))
    return problems
