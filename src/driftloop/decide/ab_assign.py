"""Sticky A/B assignment: which variant a request's user sees, the same on every machine.

A test (:class:`ABTest`) splits keyed traffic between variants by a salted hash of the
request key (a user or session id), so one user sees one variant for the whole test and
two tests with different salts split the same users independently. Requests without a
key fall back to a random split and are flagged ``keyed=False`` so the analysis counts them
apart (a user without a key may see both variants, which breaks the per-user comparison).

The hash is SHA-256 of ``salt + "<NUL>" + key`` (the NUL keeps ``("ab", "c")`` and
``("a", "bc")`` apart); its first 8 bytes as an unsigned integer over ``2**64`` give a
bucket in ``[0, 1)``. Python's ``hash()`` is salted per process (PYTHONHASHSEED), so it
would move users between variants on every restart and differ between gateway replicas.

Shared interface between the request path (rollout/gateway.py) and the analysis
(decide/ab.py): state lives at ``ab/<model_name>/<test_id>.json`` in the store
(:func:`state_key`), decisions per run under ``runs/<run-id>/ab.json``; every logged
prediction carries the response header :data:`VARIANT_HEADER` / :data:`KEYED_HEADER` and
the record columns :data:`VARIANT_COLUMN` / :data:`KEYED_COLUMN` (optionally
:data:`TEST_COLUMN`, the test id, and :data:`KEY_COLUMN`, a header key).

Stdlib only (the request path imports it per request).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

from driftloop.errors import DriftloopError
from driftloop.serde import JsonResult

STATES = ("running", "stopped", "decided")
VARIANT_HEADER = "x-driftloop-variant"
KEYED_HEADER = "x-driftloop-keyed"
VARIANT_COLUMN = "ab_variant"
KEYED_COLUMN = "ab_keyed"
TEST_COLUMN = "ab_test"
#: Record column of the user key when it came from the header (a key in the request field
#: ``ABTest.key_field`` is a record column by itself); the analysis clusters on it.
KEY_COLUMN = "ab_key"
WEIGHT_TOLERANCE = 1e-6
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ABTestError(DriftloopError, ValueError):
    """An A/B test definition that breaks a rule (the message names the field)."""


@dataclass(frozen=True)
class Variant:
    """One arm of a test.

    Attributes:
        name: Short name shown in records and reports, e.g. ``"static"``, ``"retrained"``.
        target: A registry version (``"v2026..."``) or an alias (``"champion"``) that
            follows promotions.
        weight: Share of keyed traffic; the weights of a test sum to 1.
    """

    name: str
    target: str
    weight: float


@dataclass(frozen=True)
class Assignment:
    """The variant one request is served by.

    Attributes:
        variant: The :attr:`Variant.name`.
        keyed: False when the request carried no key (random split, counted apart).
    """

    variant: str
    keyed: bool


@dataclass(frozen=True)
class ABTest(JsonResult):
    """An A/B test: variants, split, where the key is read from, and its state.

    Attributes:
        test_id: Identifier, unique per model; also the default salt.
        model_name: The registry model the variants belong to.
        variants: Two or more arms; names unique, weights positive and summing to 1.
        key_field: Request field holding the user/session key (a V1 instance dict key or
            a V2 ``parameters`` key).
        key_header: HTTP header holding the key; checked before :attr:`key_field`.
        salt: Hash salt; empty means :attr:`test_id`, so two tests split independently.
        started_at: ISO-8601 UTC start time.
        state: ``running`` | ``stopped`` | ``decided``.
    """

    test_id: str
    model_name: str
    variants: tuple[Variant, ...]
    key_field: str = "user_id"
    key_header: str = "x-user-id"
    salt: str = ""
    started_at: str = ""
    state: str = "running"

    def __post_init__(self) -> None:
        """Validate the definition (one-line errors naming the field and the rule)."""
        _require(bool(_NAME.match(self.test_id)), "test_id",
                 "must be 1-63 letters, digits, '_', '.', '-' starting with a letter/digit")
        _require(bool(self.model_name), "model_name", "must not be empty")
        _require(len(self.variants) >= 2, "variants", "needs at least two variants")
        names = [v.name for v in self.variants]
        _require(len(set(names)) == len(names), "variants", f"names must be unique, got {names}")
        for v in self.variants:
            _require(bool(_NAME.match(v.name)), f"variants[{v.name}].name",
                     "must be 1-63 letters, digits, '_', '.', '-'")
            _require(bool(v.target), f"variants[{v.name}].target", "must not be empty")
            _require(math.isfinite(v.weight) and 0 < v.weight <= 1,
                     f"variants[{v.name}].weight", f"must be in (0, 1], got {v.weight}")
        total = sum(v.weight for v in self.variants)
        _require(abs(total - 1.0) <= WEIGHT_TOLERANCE, "variants",
                 f"weights must sum to 1, got {total:.6g}")
        _require(bool(self.key_field), "key_field", "must not be empty")
        _require(bool(self.key_header), "key_header", "must not be empty")
        _require(self.state in STATES, "state", f"must be one of {', '.join(STATES)}")

    @property
    def effective_salt(self) -> str:
        """The salt actually hashed: :attr:`salt`, else :attr:`test_id`."""
        return self.salt or self.test_id

    def variant(self, name: str) -> Variant:
        """The variant called ``name`` (KeyError naming it otherwise)."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"ab test {self.test_id}: no variant {name!r}")


def _require(cond: bool, field: str, rule: str) -> None:
    if not cond:
        raise ABTestError(f"ab.{field}: {rule}")


def state_key(model_name: str, test_id: str) -> str:
    """Store key of a test's state: ``ab/<model_name>/<test_id>.json``."""
    return f"ab/{model_name}/{test_id}.json"


def bucket(salt: str, key: str) -> float:
    """Map ``key`` to ``[0, 1)`` by SHA-256 of ``salt + "<NUL>" + key``.

    Stable across processes, machines and Python versions (unlike ``hash()``), and close to
    uniform: the first 64 bits of the digest over ``2**64``.
    """
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _pick(variants: tuple[Variant, ...], u: float) -> str:
    # Cumulative weights; the last variant takes any rounding remainder so u < 1 always
    # lands somewhere.
    edge = 0.0
    for v in variants[:-1]:
        edge += v.weight
        if u < edge:
            return v.name
    return variants[-1].name


def assign(test: ABTest, key: str | None, rng: random.Random) -> Assignment:
    """The variant for a request with ``key`` (``None``/empty: random split, unkeyed).

    Args:
        test: The running test.
        key: The user/session key, or ``None`` when the request had none.
        rng: Source of the fallback split for unkeyed requests (seed it in tests).

    Returns:
        The :class:`Assignment`; ``keyed`` tells the analysis whether it is sticky.
    """
    if key is None or key == "":
        return Assignment(_pick(test.variants, rng.random()), keyed=False)
    return Assignment(_pick(test.variants, bucket(test.effective_salt, key)), keyed=True)


def request_key(test: ABTest, headers: Mapping[str, str], instance: object) -> str | None:
    """The key of a request: header :attr:`ABTest.key_header` first, then the field.

    Args:
        test: The test (names the header and the field).
        headers: The request's HTTP headers (matched case-insensitively).
        instance: A V1 instance (a dict holds the field) or a V2 ``parameters`` dict;
            anything else has no field.

    Returns:
        The key as a string, or ``None`` when neither holds a non-empty value.
    """
    wanted = test.key_header.lower()
    for name, value in headers.items():
        if name.lower() == wanted and str(value).strip():
            return str(value).strip()
    if isinstance(instance, Mapping):
        field = instance.get(test.key_field)
        if field is not None and str(field) != "":
            return str(field)
    return None
