"""The local gateway's sticky A/B split: the running test, its routes, and a request's key.

A running test (:class:`~driftloop.decide.ab_assign.ABTest`) is written by
:meth:`~driftloop.rollout.local.LocalRolloutBackend.start_ab` to
``<state>/ab/<namespace>/<name>.json`` beside the InferenceService's YAML, together with
the route of each variant (:class:`ABRoutes`): a variant whose target is the alias
``champion`` is served by the InferenceService's own traffic split (so it follows the
promotions and canaries of the continuous-training loop), any other variant by the
predictor of a fixed ``storageUri`` (a registry version folder). The gateway re-reads the
file when its bytes change, as it does the InferenceService.

Per inference request the gateway takes the key from the test's header first, then from
the request body's field (:func:`body_key`: the V1 instances' field, which must be the same
for every instance of the request because one request is served by one variant; a V2
request's ``parameters``), and assigns the variant with
:func:`~driftloop.decide.ab_assign.assign` (requests without a key: a random split,
``keyed=False``). What reaches the records is in :func:`log_annotations`.

On a cluster the same split is done by KServe's own objects (:mod:`driftloop.rollout.ab_graph`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from driftloop.decide.ab_assign import ABTest, Assignment, request_key
from driftloop.errors import DriftloopError
from driftloop.serde import JsonResult, loads

#: The alias a variant follows through the InferenceService's own split (retrained arm).
SERVICE_ALIAS = "champion"
#: Annotation keys the payload logger carries for an A/B request (``Ce-Annotations``):
#: the same keys the cluster's variant InferenceServices carry (rollout/ab_graph.py), read
#: back into record columns by the sink (serving/sink_events.py).
TEST_ANNOTATION = "driftloop.io/ab-test"
VARIANT_ANNOTATION = "driftloop.io/ab-variant"
KEYED_ANNOTATION = "driftloop.io/ab-keyed"
KEY_ANNOTATION = "driftloop.io/ab-key"
KEY_FIELD_ANNOTATION = "driftloop.io/ab-key-field"


class ABRequestError(DriftloopError):
    """A request the split cannot assign (the message names the field and the rule)."""


@dataclass(frozen=True)
class ABRoutes(JsonResult):
    """A running test and where each variant is served (the local state file).

    Attributes:
        test: The test.
        routes: Variant name -> ``storageUri`` of its predictor; ``""`` for a variant served
            by the InferenceService's own traffic split.
    """

    test: ABTest
    routes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Every variant has a route and no route names an unknown variant."""
        names = {v.name for v in self.test.variants}
        if set(self.routes) != names:
            raise DriftloopError(f"ab routes of {self.test.test_id}: variants {sorted(names)} "
                                 f"but routes for {sorted(self.routes)}")


def sibling_uri(service_uri: str, version: str) -> str:
    """The ``storageUri`` of ``version`` next to the service's: ``<models/<model>>/<version>``.

    Registry versions sit side by side (``rollout.base.version_storage_uri``:
    ``<store>/models/<model>/<version>``), locally and in ``gs://``.
    """
    parent = service_uri.rstrip("/").rsplit("/", 1)[0]
    return f"{parent}/{version}"


def resolve_routes(test: ABTest, service_uri: str,
                   storage_uris: Mapping[str, str] | None = None) -> ABRoutes:
    """Route each variant: the service's split for ``champion``, else a version folder.

    Args:
        test: The test.
        service_uri: The service's rolled-out ``storageUri`` (its version folder).
        storage_uris: Explicit ``storageUri`` per variant name (wins).

    Raises:
        DriftloopError: A variant targets an alias other than ``champion`` without an
            explicit ``storageUri`` (the backend cannot read the registry's aliases).
    """
    given = dict(storage_uris or {})
    routes: dict[str, str] = {}
    for v in test.variants:
        if v.name in given:
            routes[v.name] = given[v.name]
        elif v.target == SERVICE_ALIAS:
            routes[v.name] = ""
        elif v.target in ("canary", "previous"):
            raise DriftloopError(f"ab.variants[{v.name}].target: alias {v.target!r} needs an "
                                 "explicit storageUri (only 'champion' follows the service)")
        else:
            routes[v.name] = sibling_uri(service_uri, v.target)
    return ABRoutes(test, routes)


def read_routes(data: bytes, where: str) -> ABRoutes:
    """Parse a state file (one-line error naming the file)."""
    try:
        return loads(ABRoutes, data.decode("utf-8"))
    except (ValueError, TypeError, KeyError) as exc:
        raise DriftloopError(f"{where}: not a valid A/B state ({exc})") from None


def body_key(test: ABTest, body: bytes) -> tuple[str | None, str | None]:
    """The key field of a JSON inference body: ``(key, None)`` or ``(None, problem)``.

    V1 ``{"instances": [{...}, ...]}``: every instance that carries the field must carry the
    same value (one request goes to one variant); V2 ``{"parameters": {...}}``. A body that
    is not JSON (a V2 binary body) has no field: the header is its only key.
    """
    try:
        doc = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    instances = doc.get("instances")
    if isinstance(instances, list):
        keys = {request_key(test, {}, inst) for inst in instances} - {None}
        if len(keys) > 1:
            return None, (f"instances[*].{test.key_field}: one request is served by one A/B "
                          f"variant, so its instances must carry one key (got {len(keys)})")
        return (keys.pop() if keys else None), None
    return request_key(test, {}, doc.get("parameters")), None


def request_assignment_key(test: ABTest, headers: Mapping[str, str], body: bytes) -> str | None:
    """The request's key: the header first, then the body's field.

    Raises:
        ABRequestError: The instances carry different keys.
    """
    key = request_key(test, headers, None)
    if key is not None:
        return key
    key, problem = body_key(test, body)
    if problem is not None:
        raise ABRequestError(problem)
    return key


def log_annotations(test: ABTest, assignment: Assignment, key: str | None) -> dict[str, str]:
    """What the payload logger's ``Ce-Annotations`` carries for one A/B request.

    On a cluster each variant is its own InferenceService whose logger copies the
    annotations named in ``logger.metadataAnnotations`` (test, variant, key field) into
    every event; the local gateway plays that logger and adds what only it knows per
    request (keyed, and the key when it came in a header).
    """
    out = {TEST_ANNOTATION: test.test_id, VARIANT_ANNOTATION: assignment.variant,
           KEYED_ANNOTATION: "true" if assignment.keyed else "false",
           KEY_FIELD_ANNOTATION: test.key_field}
    if key is not None:
        out[KEY_ANNOTATION] = key
    return out


def served_by(routes: ABRoutes, variant: str) -> str:
    """The ``storageUri`` serving ``variant`` (``""``: the service's split)."""
    return routes.routes[variant]


def describe(routes: ABRoutes) -> dict[str, Any]:
    """A short summary for logs."""
    return {"test": routes.test.test_id,
            "variants": {v.name: (routes.routes[v.name] or "service split", v.weight)
                         for v in routes.test.variants}}


__all__ = [
    "KEYED_ANNOTATION",
    "KEY_ANNOTATION",
    "KEY_FIELD_ANNOTATION",
    "SERVICE_ALIAS",
    "TEST_ANNOTATION",
    "VARIANT_ANNOTATION",
    "ABRequestError",
    "ABRoutes",
    "body_key",
    "log_annotations",
    "read_routes",
    "request_assignment_key",
    "resolve_routes",
    "served_by",
    "sibling_uri",
]
