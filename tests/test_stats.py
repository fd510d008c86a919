import numpy as np
import pytest

from slmbench.core.stats import bootstrap_median_ci, is_noisy, summarize


def test_summary_of_known_values():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 100.0 and s["count"] == 5
    assert s["mean"] == pytest.approx(22.0) and s["stdev"] == pytest.approx(np.std([1, 2, 3, 4, 100], ddof=1))
    assert s["p90"] == pytest.approx(np.quantile([1, 2, 3, 4, 100], 0.9))
    assert s["ci95_low"] <= s["median"] <= s["ci95_high"]


def test_no_samples_is_none_not_zero():
    assert summarize([]) is None and summarize([float("nan")]) is None


def test_bootstrap_ci_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    small = bootstrap_median_ci(rng.normal(1, 0.1, 10))
    large = bootstrap_median_ci(rng.normal(1, 0.1, 1000))
    assert (large[1] - large[0]) < (small[1] - small[0]) and 0.95 < large[0] < large[1] < 1.05


def test_noise_flag():
    assert is_noisy(summarize([1.0, 1.5, 0.5, 1.2]))
    assert not is_noisy(summarize([1.0, 1.01, 0.99, 1.0]))


def test_median_ci_exists_from_six_values_and_covers_the_median():
    from slmbench.core.stats import median_ci

    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # [min, max] of 5 covers only 93.75%
    assert median_ci([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == (1.0, 6.0)
    rng = np.random.default_rng(1)
    true_median = np.log(2)  # exponential(1): skewed, so a symmetric interval would not do
    for n in (6, 9, 20, 61):
        hits = [lo <= true_median <= hi for lo, hi in (median_ci(rng.exponential(1, n)) for _ in range(3000))]
        assert 0.95 <= np.mean(hits) <= 0.995, n


def test_default_threads_stay_within_the_affinity_mask():
    import os

    from slmbench.host.cpus import default_threads

    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})  # what `taskset -c 0` does
        assert default_threads() == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert default_threads() == min(len(allowed), default_threads())
