"""The InferenceService's API coordinates and the annotation that names its deployment mode.

Its own module because both the object helpers (:mod:`driftloop.rollout.inference_service`)
and the admission rules (:mod:`driftloop.rollout.admission`) need them, and the helpers
use the rules (``validate_inference_service``): the names sit below both.
"""

from __future__ import annotations

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
PLURAL = "inferenceservices"

#: The annotation KServe reads the deployment mode from (KServe v0.20.0 pkg/constants/
#: constants.go, ``DeploymentMode``).
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
