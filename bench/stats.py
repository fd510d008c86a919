"""Statistics over repetitions (DESIGN.md section 3): median, p90, p99, mean, stdev, min, max,
count and a bootstrap 95% confidence interval of the median."""

from __future__ import annotations

import numpy as np

NOISY_CV = 0.10  # warn when stdev exceeds 10% of the mean
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_median_ci(values: np.ndarray, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    if len(values) < 2:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    samples = rng.choice(values, size=(BOOTSTRAP_RESAMPLES, len(values)), replace=True)
    medians = np.median(samples, axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(medians, alpha)), float(np.quantile(medians, 1 - alpha))


def summarize(values) -> dict | None:
    """Summary of one metric's samples; None when there are none (never a fake zero)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
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
