import numpy as np

from driftloop.decide.changepoint import error_change_point


def test_finds_an_abrupt_step_up_in_the_error_rate_near_where_it_happened():
    rng = np.random.default_rng(0)
    errors = np.concatenate([rng.random(600) < 0.1, rng.random(300) < 0.4])
    cp = error_change_point(errors, alpha=0.01)
    assert cp is not None and abs(cp.index - 600) <= 30
    assert cp.error_before < 0.15 < 0.3 < cp.error_after and cp.n_after == 900 - cp.index


def test_no_change_is_detected_in_at_most_alpha_of_stationary_streams():
    rng = np.random.default_rng(1)
    found = sum(error_change_point(rng.random(500) < 0.2, alpha=0.05) is not None
                for _ in range(400))
    assert found / 400 <= 0.05


def test_an_improvement_or_a_short_stream_is_not_a_change():
    rng = np.random.default_rng(2)
    better = np.concatenate([rng.random(500) < 0.4, rng.random(500) < 0.1])
    assert error_change_point(better) is None
    assert error_change_point(np.ones(40)) is None
