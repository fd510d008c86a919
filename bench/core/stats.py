"""Statistics over repetitions (README, "What is measured"): median, p90, p99, mean, stdev, min,
max, count and a bootstrap 95% confidence interval of the median; and the one bootstrap that
both a median's CI and a ratio of medians' CI are drawn from."""

from __future__ import annotations

import numpy as np

NOISY_CV = 0.10  # warn when stdev exceeds 10% of the mean
BOOTSTRAP_RESAMPLES = 2000


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    return x[np.isfinite(x)]


def resampled_medians(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Medians of BOOTSTRAP_RESAMPLES resamples (with replacement) of x."""
    return np.median(x[rng.integers(0, x.size, (BOOTSTRAP_RESAMPLES, x.size))], axis=1)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))


def bootstrap_median_ci(values, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    x = _finite(values)
    if x.size < 2:
        return float(x[0]), float(x[0])
    return _interval(resampled_medians(x, np.random.default_rng(seed)), level)


def ratio_ci(a, b, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """median(a) / median(b) and a bootstrap CI, resampling each side's repetitions independently
    (conservative: interleaving makes the two sides positively correlated)."""
    a, b = _finite(a), _finite(b)
    if not a.size or not b.size:
        return np.nan, np.nan, np.nan
    point = float(np.median(a) / np.median(b))
    if a.size < 2 or b.size < 2:
        return point, np.nan, np.nan
    rng = np.random.default_rng(seed)
    return (point, *_interval(resampled_medians(a, rng) / resampled_medians(b, rng), level))


def median_ci(values, level: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free CI of the median from order statistics: [x_(j), x_(n+1-j)] with the
    largest j whose binomial coverage 1 - 2 P(Bin(n, 1/2) <= j - 1) is at least `level`. None where
    no such interval exists: below 6 values at 95%, even [min, max] covers only 1 - 2/2^n."""
    from scipy.stats import binom

    x = np.sort(_finite(values))
    j = np.arange(1, x.size // 2 + 1)
    covered = j[1 - 2 * binom.cdf(j - 1, x.size, 0.5) >= level]
    if not covered.size:
        return None
    best = int(covered.max())
    return float(x[best - 1]), float(x[x.size - best])


def summarize(values) -> dict | None:
    """Summary of one metric's samples; None when there are none (never a fake zero)."""
    x = _finite(values)
    if x.size == 0:
        return None
    lo, hi = bootstrap_median_ci(x)
    return {
        "median": float(np.median(x)), "p90": float(np.quantile(x, 0.90)), "p99": float(np.quantile(x, 0.99)),
        "mean": float(x.mean()), "stdev": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min": float(x.min()), "max": float(x.max()), "count": int(x.size), "ci95_low": lo, "ci95_high": hi,
    }


def is_noisy(summary: dict | None) -> bool:
    return bool(summary and summary["count"] > 1 and summary["mean"] > 0
                and summary["stdev"] > NOISY_CV * summary["mean"])
