"""Sticky A/B assignment: stable across processes, independent per salt, split by weight."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest

from driftloop.decide.ab_assign import (
    ABTest,
    ABTestError,
    Variant,
    assign,
    bucket,
    request_key,
    state_key,
)


def _test(test_id: str = "t1", salt: str = "", weights: tuple[float, float] = (0.5, 0.5)) -> ABTest:
    return ABTest(
        test_id=test_id,
        model_name="tweets",
        variants=(Variant("static", "v1", weights[0]),
                  Variant("retrained", "champion", weights[1])),
        salt=salt,
    )


KEYS = [f"user-{i}" for i in range(20_000)]


def test_bucket_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "import json,sys; from driftloop.decide.ab_assign import bucket; "
        "print(json.dumps([bucket('s', k) for k in sys.argv[1:]]))"
    )
    keys = KEYS[:50]
    here = [bucket("s", k) for k in keys]
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code, *keys], env=env, check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == here
    assert all(0.0 <= u < 1.0 for u in here)
    assert len(set(here)) == len(here)


def test_a_user_stays_in_one_variant_whatever_the_rng() -> None:
    test = _test()
    for key in KEYS[:200]:
        seen = {assign(test, key, random.Random(seed)).variant for seed in range(5)}
        assert len(seen) == 1
        assert assign(test, key, random.Random(0)).keyed


def test_split_follows_the_weights_within_binomial_tolerance() -> None:
    for w in (0.5, 0.1, 0.8):
        test = _test(weights=(w, 1 - w))
        n_static = sum(assign(test, k, random.Random(0)).variant == "static" for k in KEYS)
        sd = math.sqrt(len(KEYS) * w * (1 - w))
        assert abs(n_static - len(KEYS) * w) < 4 * sd, (w, n_static)


def test_two_salts_split_the_same_users_independently() -> None:
    a, b = _test("a"), _test("b")
    table = {(x, y): 0 for x in ("static", "retrained") for y in ("static", "retrained")}
    for k in KEYS:
        table[(assign(a, k, random.Random(0)).variant, assign(b, k, random.Random(0)).variant)] += 1
    n = len(KEYS)
    chi2 = sum((c - n / 4) ** 2 / (n / 4) for c in table.values())
    # 3 degrees of freedom under full independence and a 50/50 split; 16.3 is the 0.1 % point.
    assert chi2 < 16.3, table
    # The same salt (explicit) reproduces the same split: the salt, not the id, decides.
    c = _test("c", salt="a")
    assert all(assign(a, k, random.Random(0)) == assign(c, k, random.Random(0)) for k in KEYS[:500])


def test_requests_without_a_key_are_split_at_random_and_flagged() -> None:
    test = _test(weights=(0.3, 0.7))
    rng = random.Random(7)
    picks = [assign(test, None, rng) for _ in range(4000)]
    picks += [assign(test, "", rng) for _ in range(1000)]
    assert not any(p.keyed for p in picks)
    share = sum(p.variant == "static" for p in picks) / len(picks)
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(picks))


def test_request_key_prefers_the_header_then_the_field() -> None:
    test = _test()
    assert request_key(test, {"X-User-Id": " u1 "}, {"user_id": "u2"}) == "u1"
    assert request_key(test, {}, {"user_id": 42}) == "42"
    assert request_key(test, {"x-user-id": ""}, {"text": "hi"}) is None
    assert request_key(test, {}, ["not", "a", "dict"]) is None


def test_definition_round_trips_and_bad_ones_name_the_field() -> None:
    test = _test()
    assert ABTest.from_json(test.to_json()) == test
    assert state_key("tweets", "t1") == "ab/tweets/t1.json"
    with pytest.raises(ABTestError, match=r"ab\.variants: weights must sum to 1"):
        _test(weights=(0.5, 0.6))
    with pytest.raises(ABTestError, match=r"ab\.variants: names must be unique"):
        ABTest("t", "m", (Variant("a", "v1", 0.5), Variant("a", "v2", 0.5)))
    with pytest.raises(ABTestError, match=r"ab\.state"):
        ABTest("t", "m", (Variant("a", "v1", 0.5), Variant("b", "v2", 0.5)), state="paused")
    with pytest.raises(ABTestError, match=r"ab\.variants: needs at least two"):
        ABTest("t", "m", (Variant("a", "v1", 1.0),))
