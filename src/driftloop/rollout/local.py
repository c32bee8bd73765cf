"""The local rollout backend: an InferenceService as YAML in a folder, plus a traffic-split gateway.

Three parts, together a laptop/CI stand-in for KServe Serverless on a cluster:

* :func:`~driftloop.rollout.reconciler.reconcile` -- a stand-in for KServe's
  InferenceService controller and Knative Serving: it creates a revision when the
  predictor's template changes and computes ``status.components.predictor`` (traffic,
  latest created/ready/rolled-out revisions, previous rolled-out revision) with KServe's
  canary rules. The test stand-in of the Kubernetes API imports it too, so both simulate
  the controller identically.
* :class:`LocalRolloutBackend` (this module) -- the
  :class:`~driftloop.rollout.base.RolloutBackend` over
  ``<state>/inferenceservices/<namespace>/<name>.yaml`` (the same object a cluster holds;
  atomic writes, a lock file, resourceVersion/generation bookkeeping and KServe's
  validation). The revisions live in ``<state>/revisions/<namespace>/<name>.yaml``.
* :class:`~driftloop.rollout.gateway.LocalGateway` -- a stand-in for Knative's traffic
  split: an HTTP server on 127.0.0.1 that serves ``/v1/models/<name>:predict`` and
  ``/v2/models/<name>/infer`` by forwarding each request to a
  :class:`~driftloop.serving.predictor.DriftloopModel` server of one revision, chosen by
  ``status.components.predictor.traffic``; the model servers themselves are started by
  :class:`~driftloop.rollout.predictors.PredictorServers`.

This module holds the backend's state file: reading, locking, patching and writing the
YAML, with the Kubernetes API's answers (404, 409, 422, a webhook's denial) and KServe's
status after every write. What KServe semantics are simulated, and what not, is listed in
:mod:`driftloop.rollout.reconciler`. Its controller answers in the write itself, so a step
judges the status once (``ready_timeout`` 0): what a cluster would never bring into effect
(e.g. an unsupported ``storageUri`` scheme, accepted and then refused by KServe's
controller) fails the step at once instead of after a timeout.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from driftloop.data.storage import LocalStore
from driftloop.decide.ab_assign import ABTest
from driftloop.errors import DriftloopError, StoreError
from driftloop.rollout.ab_split import ABRoutes, read_routes, resolve_routes
from driftloop.rollout.admission import (
    VALIDATING_WEBHOOK,
    controller_problems,
    schema_problems,
    webhook_problems,
)
from driftloop.rollout.base import RolloutBackend
from driftloop.rollout.errors import (
    AdmissionDenied,
    AlreadyExistsError,
    ConflictError,
    InferenceServiceNotFound,
    RolloutRejected,
)

# kept importable for demo/live.py and tests/e2e/test_canary_flow.py, which import it from here
from driftloop.rollout.gateway import LocalGateway  # noqa: F401
from driftloop.rollout.inference_service import ServiceState, merge_patch
from driftloop.rollout.reconciler import Failing, now_rfc3339, reconcile

ISVC_DIR = "inferenceservices"
REVISIONS_DIR = "revisions"
#: Where a running A/B test and its routes live: ``<state>/ab/<namespace>/<name>.json``.
AB_DIR = "ab"
_MANAGED_METADATA = ("name", "namespace", "uid", "creationTimestamp", "generation",
                     "resourceVersion", "managedFields")


def _dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def _strip_volatile(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(obj))
    out.pop("status", None)
    (out.get("metadata") or {}).pop("resourceVersion", None)
    return out


class LocalRolloutBackend(RolloutBackend):
    """The rollout interface over an InferenceService stored as YAML in a local folder.

    Behaves like the Kubernetes API plus KServe for what a rollout needs: merge patches,
    the resourceVersion precondition (409), ``metadata.generation``, KServe's admission
    (the CRD schema: :class:`~driftloop.rollout.errors.RolloutRejected`; the validating
    webhook: :class:`~driftloop.rollout.errors.AdmissionDenied`) and the controller's status
    (:func:`reconcile`). A lock file serialises writers of the same service.

    Args:
        state_dir: The state folder (created when missing).
        name: The InferenceService's name.
        namespace: Its namespace (a sub-folder).
        template: The template :meth:`ensure` creates from.
        max_conflict_retries: How many times a step is recomputed after a conflict.
        ready_timeout: Seconds a step waits for its write to take effect (default 0: the
            status is written with the spec, so one read tells).
        failing: Simulates models that never load (a storageUri -> the model server's
            error, :data:`driftloop.rollout.reconciler.Failing`), e.g. to rehearse a canary
            that fails; default: every model loads.
    """

    def __init__(self, state_dir: str | Path, name: str, namespace: str = "default", *,
                 template: Any = None, max_conflict_retries: int = 5,
                 ready_timeout: float = 0.0, failing: Failing | None = None) -> None:
        super().__init__(name, namespace, template=template,
                         max_conflict_retries=max_conflict_retries, ready_timeout=ready_timeout)
        self.failing = failing
        self.store = LocalStore(state_dir, create=True)
        self.key = f"{ISVC_DIR}/{namespace}/{name}.yaml"
        self.revisions_key = f"{REVISIONS_DIR}/{namespace}/{name}.yaml"
        self.ab_key = f"{AB_DIR}/{namespace}/{name}.json"

    @property
    def path(self) -> Path:
        """The InferenceService's YAML file."""
        return self.store.path(self.key)

    @property
    def ab_path(self) -> Path:
        """The running A/B test's state file, read by the gateway (absent: no test)."""
        return self.store.path(self.ab_key)

    def start_ab(self, test: ABTest, storage_uris: Mapping[str, str] | None = None) -> ABRoutes:
        """Make the gateway split by ``test`` from its next request on.

        A ``champion`` variant is served by this InferenceService's own split (it follows
        the loop's promotions and canaries); any other variant by the predictor of its
        version folder, next to the service's rolled-out ``storageUri``
        (:func:`~driftloop.rollout.ab_split.resolve_routes`), or ``storage_uris[name]``.

        Raises:
            InferenceServiceNotFound: There is no service to split in front of.
            DriftloopError: A variant's folder does not exist, or another test runs.
        """
        with self._locked():
            service_uri = ServiceState.from_object(self._read_file()).storage_uri or ""
            routes = resolve_routes(test, service_uri, storage_uris)
            for name, uri in routes.routes.items():
                if uri and "://" not in uri and not Path(uri).is_dir():
                    raise DriftloopError(f"ab.variants[{name}].target: {uri} is not a model "
                                         "folder")
            if self.store.exists(self.ab_key):
                current = read_routes(self.store.read_bytes(self.ab_key), str(self.ab_path))
                if current.test.test_id != test.test_id:
                    raise DriftloopError(f"{self.ab_path}: A/B test {current.test.test_id} "
                                         "is running; stop it first (one split per service)")
            self.store.write_text(self.ab_key, routes.to_json() + "\n")
            return routes

    def stop_ab(self, test: ABTest) -> None:
        """Remove ``test``'s split (nothing when it is not the one running)."""
        with self._locked():
            if self.store.exists(self.ab_key):
                current = read_routes(self.store.read_bytes(self.ab_key), str(self.ab_path))
                if current.test.test_id == test.test_id:
                    self.store.delete(self.ab_key)

    @property
    def where(self) -> str:  # noqa: D102
        return f"InferenceService {self.namespace}/{self.name} ({self.path})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_dir = self.store.root / ".locks"
        lock_dir.mkdir(exist_ok=True)
        with (lock_dir / f"{self.namespace}.{self.name}.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load(self, key: str) -> Any:
        if not self.store.exists(key):
            return None
        text = self.store.read_text(key)
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise StoreError(f"{self.store.path(key)}: not valid YAML ({exc})") from exc

    def _read_object(self) -> dict[str, Any]:
        return self._read_file()

    def _read_file(self) -> dict[str, Any]:
        obj = self._load(self.key)
        if obj is None:
            raise InferenceServiceNotFound(
                f"InferenceService {self.namespace}/{self.name} not found: {self.path} does not "
                "exist (create it with ensure(storage_uri))"
            )
        if not isinstance(obj, dict):
            raise StoreError(f"{self.path}: expected an InferenceService object")
        return obj

    def revisions(self) -> list[dict[str, Any]]:
        """Return the predictor's revisions, oldest first (``name``, ``storageUri``, ...)."""
        revs = self._load(self.revisions_key)
        if revs is None:
            return []
        if not isinstance(revs, list):
            raise StoreError(f"{self.store.path(self.revisions_key)}: expected a list")
        return revs

    def _write(self, obj: dict[str, Any], revisions: list[dict[str, Any]]) -> None:
        # Revisions first: they only grow, so a reader of the object always finds its
        # revisions; the object's rename is the commit point.
        self.store.write_text(self.revisions_key, _dump(revisions))
        self.store.write_text(self.key, _dump(obj))

    def _diagnosis(self) -> str:
        """What the controller stand-in refused (a cluster's controller says so in events)."""
        try:
            problems = controller_problems(self._read_file())
        except (InferenceServiceNotFound, StoreError):
            return ""
        return "; ".join(f"the controller refused it: {message}" for _, message in problems)

    def _admit(self, new: dict[str, Any], old: dict[str, Any] | None) -> None:
        """KServe's admission: the CRD schema (422), then the validating webhook (403)."""
        errors = schema_problems(new)
        if errors:
            raise RolloutRejected(
                f"InferenceService.serving.kserve.io {self.name!r} is invalid ({self.path}): "
                + "; ".join(errors))
        denials = webhook_problems(new, old)
        if denials:
            raise AdmissionDenied(
                f"admission webhook {VALIDATING_WEBHOOK!r} denied the request ({self.path}): "
                + "; ".join(denials), webhook=VALIDATING_WEBHOOK, reason="; ".join(denials))

    def _patch_object(self, patch: dict[str, Any]) -> dict[str, Any]:
        with self._locked():
            current = self._read_file()
            meta = current.get("metadata") or {}
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and str(wanted) != str(meta.get("resourceVersion")):
                raise ConflictError(
                    f"Operation cannot be fulfilled on inferenceservices.serving.kserve.io "
                    f"{self.name!r}: the object has been modified; please apply your changes "
                    "to the latest version and try again"
                )
            clean = copy.deepcopy(patch)
            clean.pop("status", None)
            for key in _MANAGED_METADATA:
                (clean.get("metadata") or {}).pop(key, None)
            new = merge_patch(current, clean)
            self._admit(new, current)
            if _strip_volatile(new) == _strip_volatile(current):
                return current  # a no-op write changes nothing, not even the resourceVersion
            new_meta = new["metadata"]
            if new.get("spec") != current.get("spec"):
                new_meta["generation"] = int(meta.get("generation") or 0) + 1
            new_meta["resourceVersion"] = str(int(meta.get("resourceVersion") or 0) + 1)
            new, revisions = reconcile(new, self.revisions(), failing=self.failing)
            self._write(new, revisions)
            return new

    def _create_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self._locked():
            if self.store.exists(self.key):
                raise AlreadyExistsError(
                    f"inferenceservices.serving.kserve.io {self.name!r} already exists "
                    f"({self.path})"
                )
            new = copy.deepcopy(obj)
            new.pop("status", None)
            self._admit(new, None)
            meta = new.setdefault("metadata", {})
            meta.update(name=self.name, namespace=self.namespace, generation=1,
                        resourceVersion="1", creationTimestamp=now_rfc3339(),
                        uid=str(uuid.uuid4()))
            new, revisions = reconcile(new, [], failing=self.failing)
            self._write(new, revisions)
            return new

    def delete(self) -> None:
        """Delete the InferenceService and its revisions (no error when missing)."""
        with self._locked():
            self.store.delete(self.key)
            self.store.delete(self.revisions_key)


__all__ = [
    "LocalRolloutBackend",
]
