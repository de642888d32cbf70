"""Every reported accuracy carries its 95% interval, and two models on the same images are compared
by a paired test: the numbers match a computation by hand."""

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from transferlab.inference.intervals import (balanced_accuracy_interval, mcnemar, paired_over_runs,
                                             wilson_interval)
from transferlab.inference.metrics import compute_metrics, format_metrics, prediction_record

Z = NormalDist().inv_cdf(0.975)  # 1.959963984...


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z ** 2 / (2 * n)) / (1 + Z ** 2 / n)
    half = Z / (1 + Z ** 2 / n) * math.sqrt(p * (1 - p) / n + Z ** 2 / (4 * n ** 2))
    return centre - half, centre + half


def test_wilson_interval_of_93_of_100_matches_the_hand_computation():
    low, high = wilson_interval(93, 100)
    assert (low, high) == pytest.approx(wilson_by_hand(93, 100), abs=1e-9)
    assert (low, high) == pytest.approx((0.862505, 0.965681), abs=1e-6)  # the textbook figures


@pytest.mark.parametrize("k, n", [(0, 20), (20, 20), (1, 1), (7, 9)])
def test_wilson_interval_at_the_edges(k, n):
    low, high = wilson_interval(k, n)
    hand_low, hand_high = wilson_by_hand(k, n)
    assert low == pytest.approx(max(0.0, hand_low), abs=1e-9) and high == pytest.approx(min(1.0, hand_high), abs=1e-9)
    assert 0.0 <= low <= k / n <= high <= 1.0
    if k == 0:
        assert low == 0.0 and high == pytest.approx(Z ** 2 / (n + Z ** 2), abs=1e-12)
    if k == n:
        assert high == 1.0 and low == pytest.approx(n / (n + Z ** 2), abs=1e-12)


def test_no_images_no_interval():
    assert wilson_interval(0, 0) is None
    assert balanced_accuracy_interval([], []) is None


def test_mcnemar_matches_the_exact_binomial_by_hand():
    # 10 images only A got right, 2 only B, 30 both, 8 neither
    a = np.array([1] * 10 + [0] * 2 + [1] * 30 + [0] * 8)
    b = np.array([0] * 10 + [1] * 2 + [1] * 30 + [0] * 8)
    result = mcnemar(a, b)
    by_hand = 2 * sum(math.comb(12, k) for k in range(3)) / 2 ** 12  # 2 * 79 / 4096
    assert (result.a_only, result.b_only) == (10, 2)
    assert result.p_value == pytest.approx(by_hand, abs=1e-12) and by_hand == pytest.approx(0.0386, abs=1e-4)
    assert result.verdict == "better"
    assert mcnemar(b, a).verdict == "worse" and mcnemar(b, a).p_value == pytest.approx(by_hand)


def test_mcnemar_without_disagreements_finds_no_difference():
    same = mcnemar([1, 0, 1], [1, 0, 1])
    assert (same.a_only, same.b_only, same.p_value, same.verdict) == (0, 0, 1.0, "not different")
    close = mcnemar([1, 1, 0, 1], [0, 1, 1, 0])  # 2 against 1: p = 1
    assert close.verdict == "not different" and close.p_value == pytest.approx(1.0)


def test_runs_on_the_same_images_vote_once_per_image():
    # Three seeds on one test/ folder: image 0 favours A in every seed, image 1 in one seed of three.
    seeds = [("same", np.array([1, 1, 1]), np.array([0, 0, 1])),
             ("same", np.array([1, 0, 1]), np.array([0, 1, 1])),
             ("same", np.array([1, 0, 1]), np.array([0, 1, 1]))]
    result = paired_over_runs(seeds)
    assert (result.a_only, result.b_only) == (1, 1)  # image 0 for A, image 1 (1 seed against 2) for B
    # On different images the pairs join side by side: 3 + 2 images only A got right, 1 only B.
    apart = paired_over_runs([("split0", [1, 1, 1, 0], [0, 0, 0, 1]), ("split1", [1, 1], [0, 0])])
    assert (apart.a_only, apart.b_only) == (5, 1)
    assert apart.p_value == pytest.approx(2 * (1 + 6) / 2 ** 6)


def test_bootstrap_interval_of_balanced_accuracy_holds_the_estimate_and_repeats():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], [50, 20, 10])
    pred = np.where(rng.random(len(y)) < 0.8, y, (y + 1) % 3)
    estimate = np.mean([(pred[y == c] == c).mean() for c in range(3)])
    low, high = balanced_accuracy_interval(y, pred, seed=7)
    assert low < estimate < high and high - low < 0.3
    assert balanced_accuracy_interval(y, pred, seed=7) == (low, high)
    assert balanced_accuracy_interval(y, pred, seed=8) != (low, high)
    assert balanced_accuracy_interval(y, y) == (1.0, 1.0)  # every resample is perfect


def test_compute_metrics_carries_both_intervals_as_json():
    y = np.array([0] * 60 + [1] * 40)
    proba = np.full((100, 2), 0.1)
    proba[np.arange(100), y] = 0.9
    proba[:7] = proba[:7, ::-1]  # 7 of the 60 class-0 images wrong: 93 of 100 right
    m = compute_metrics(y, proba, ["cat", "dog"])
    assert m["accuracy"] == 0.93
    assert m["accuracy_ci"] == pytest.approx(list(wilson_by_hand(93, 100)), abs=1e-9)
    low, high = m["balanced_accuracy_ci"]
    assert low < m["balanced_accuracy"] < high
    assert json.loads(json.dumps(m)) == m
    assert "accuracy 0.9300 (95% CI 0.863-0.966)" in format_metrics(m, "test")
    record = prediction_record("test", [f"{i}.png" for i in range(100)], y, proba)
    assert record["correct"] == "0" * 7 + "1" * 93 and len(record["images"]) == 40
