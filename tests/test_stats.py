import numpy as np
import pytest

from slmbench.stats import bootstrap_median_ci, is_noisy, summarize


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
