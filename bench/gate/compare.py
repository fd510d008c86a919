"""Baseline vs candidate: per configuration and metric, is there a real change or only noise?

Shared CPU machines move an absolute time by 10-35% between runs (2x under heavy load, seen here),
so a verdict needs two things at once, as asv does: a Mann-Whitney U test on the raw repetitions
(p < 0.002) AND an effect beyond a threshold (ratio of medians beyond 1.10 by default,
configurable per metric). Per-repetition values are recomputed from the raw timestamps every row
keeps, never from summaries.

Two kinds of metric:
- absolute (TTFT, TPOT, decode tok/s, ...): meaningful against a baseline only when hardware and
  package versions match; across environments they are shown as not compared.
- same-run ratios, taken repetition by repetition between rows measured interleaved in one run
  (rows sharing `group`): encoder-decoder / decoder-only TTFT and decode throughput, and harness /
  bare runtime loop (slmbench.tools.overhead). Machine drift hits both sides of such a ratio alike, so
  these are what a CI gate compares across machines. Their decode side uses each repetition's
  median inter-token latency, which a time slice lost to another job on a shared machine moves
  far less than the mean (TPOT): measured here under load, the decode ratio drifted 25% between
  runs from TPOT and about 10% from the median ITL.

Configurations are matched by `key`; when a side holds several ok rows with one key (or one pair),
their repetitions are pooled: an A/B run (slmbench.gate.ab) measures each side in several processes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmbench.core.metrics import row_repetitions, same_run_pairs
from slmbench.errors import BenchError, InvalidOption
from slmbench.host.environment import fingerprint, machine_identity

ALPHA = 0.002
DEFAULT_THRESHOLD = 1.10
EXACT_MAX_CELLS = 2500  # exact U distribution when there are no ties and n*m is at most this


class EnvMismatch(BenchError):
    """Baseline and candidate were measured on different hardware or package versions."""


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool
    same_run: bool  # a ratio within one run: holds across machines


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("ttft_s", "TTFT", False, False),
    Metric("tpot_s", "TPOT", False, False),
    Metric("decode_tps", "decode tok/s", True, False),
    Metric("e2e_s", "end-to-end", False, False),
    Metric("encoder_s", "encoder", False, False),
    Metric("ed_do_ttft", "TTFT enc-dec/dec-only", False, True),
    Metric("ed_do_decode_tps", "tok/s enc-dec/dec-only", True, True),  # from median ITL
    Metric("overhead_ttft", "TTFT harness/bare", False, True),
    Metric("overhead_step", "decode step harness/bare", False, True),  # median ITL
)}
ABSOLUTE = tuple(m for m in METRICS if not METRICS[m].same_run)
STATUS = "status"  # the pseudo-metric of a configuration that failed in the candidate
GATES = ("all", "same-run")


# --- statistics -------------------------------------------------------------------------------

@dataclass(frozen=True)
class UTest:
    u: float  # U of the first sample (scipy's `statistic`)
    p: float  # two-sided
    method: str  # "exact" or "asymptotic"


def _ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) and the sizes of the groups of tied values."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    sizes = np.diff(np.r_[starts, len(values)])
    average = starts + (sizes + 1) / 2.0  # mean of 1-based ranks start+1 .. start+size
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(average, sizes)
    return ranks, sizes


def _u_counts(n: int, m: int) -> list[int]:
    """How many of the C(n+m, n) arrangements give each U = 0 .. n*m: the coefficients of the
    Gaussian binomial [n+m choose n]_q = prod_{i=1..n} (1 - q^(m+i)) / (1 - q^i), in exact integers."""
    size = n * m + 1
    poly = [1] + [0] * (size - 1)
    for i in range(1, n + 1):
        for j in range(size - 1, m + i - 1, -1):  # multiply by (1 - q^(m+i))
            poly[j] -= poly[j - m - i]
        for j in range(i, size):  # divide by (1 - q^i)
            poly[j] += poly[j - i]
    return poly


def mann_whitney(x: Iterable[float], y: Iterable[float]) -> UTest:
    """Two-sided Mann-Whitney U test. Exact distribution without ties (small samples); otherwise
    the normal approximation with tie and continuity corrections (as scipy.stats.mannwhitneyu)."""
    x, y = np.asarray(list(x), np.float64), np.asarray(list(y), np.float64)
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        raise InvalidOption("the Mann-Whitney test needs at least one value on each side")
    ranks, ties = _ranks(np.concatenate([x, y]))
    u1 = float(ranks[:n].sum() - n * (n + 1) / 2)
    u = max(u1, n * m - u1)
    if not (ties > 1).any() and n * m <= EXACT_MAX_CELLS:
        counts = _u_counts(n, m)
        tail = sum(counts[int(round(u)):])  # P(U >= u), exact
        return UTest(u1, min(1.0, 2 * tail / math.comb(n + m, n)), "exact")
    total = n + m
    tie_term = float((ties.astype(np.float64) ** 3 - ties).sum())
    sigma = math.sqrt(n * m / 12 * ((total + 1) - tie_term / (total * (total - 1))))
    if sigma == 0:  # every value equal: no evidence of any difference
        return UTest(u1, 1.0, "asymptotic")
    z = (u - n * m / 2 - 0.5) / sigma
    return UTest(u1, min(1.0, math.erfc(z / math.sqrt(2))), "asymptotic")


def smallest_p(n: int, m: int) -> float:
    """The smallest two-sided p a rank test can give with n and m values (complete separation):
    with fewer repetitions than this allows, no verdict below ALPHA is possible."""
    return min(1.0, 2 / math.comb(n + m, n))


@dataclass(frozen=True)
class Comparison:
    config: str
    metric: str
    verdict: str  # regression | improvement | no change | too few reps | failed | not compared
    baseline_median: float | None = None
    candidate_median: float | None = None
    ratio: float | None = None  # candidate median / baseline median
    p: float | None = None
    n_baseline: int = 0
    n_candidate: int = 0
    threshold: float = DEFAULT_THRESHOLD
    note: str = ""

    @property
    def same_run(self) -> bool:
        return self.metric in METRICS and METRICS[self.metric].same_run

    @property
    def label(self) -> str:
        return METRICS[self.metric].label if self.metric in METRICS else "run status"


def judge(baseline: list[float], candidate: list[float], metric: str, threshold: float = DEFAULT_THRESHOLD,
          alpha: float = ALPHA, config: str = "") -> Comparison:
    """The verdict for one metric: a change needs p < alpha AND a ratio beyond the threshold in
    the metric's bad (regression) or good (improvement) direction."""
    spec = METRICS[metric]
    base, cand = float(np.median(baseline)), float(np.median(candidate))
    ratio = cand / base if base else math.inf
    test = mann_whitney(baseline, candidate)
    n, m = len(baseline), len(candidate)
    common = dict(config=config, metric=metric, baseline_median=base, candidate_median=cand, ratio=ratio,
                  p=test.p, n_baseline=n, n_candidate=m, threshold=threshold)
    worse = ratio < 1 / threshold if spec.higher_is_better else ratio > threshold
    better = ratio > threshold if spec.higher_is_better else ratio < 1 / threshold
    if smallest_p(n, m) >= alpha:
        return Comparison(verdict="too few reps", note=f"{n} vs {m} repetitions cannot reach p < {alpha:g}; "
                                                       "need at least 7 on each side", **common)
    if test.p < alpha and worse:
        return Comparison(verdict="regression", **common)
    if test.p < alpha and better:
        return Comparison(verdict="improvement", **common)
    note = ""
    if test.p < alpha:
        note = f"significant, within {threshold:g}x"
    elif worse or better:
        note = f"beyond {threshold:g}x, not significant"
    return Comparison(verdict="no change", note=note, **common)


# --- samples from result rows -----------------------------------------------------------------

@dataclass
class Series:
    """Per-repetition values of one metric of one configuration, with where they were measured."""

    values: list[float]
    environment: dict


def _paired_ratios(a: list[dict], b: list[dict], metric: str) -> list[float]:
    """Repetition i of A over repetition i of B: interleaved, so taken moments apart."""
    return [x[metric] / y[metric] for x, y in zip(a, b, strict=False) if x.get(metric) and y.get(metric)]


@dataclass
class Samples:
    series: dict[tuple[str, str], Series] = field(default_factory=dict)  # (config, metric) -> values
    failed: dict[str, str] = field(default_factory=dict)  # config key -> error
    ok_keys: set[str] = field(default_factory=set)

    def add(self, series: tuple[str, str], values: list[float], environment: dict) -> None:
        """Pool repetitions of one configuration and metric (rows of several processes)."""
        if series in self.series:
            self.series[series].values.extend(values)
        else:
            self.series[series] = Series(list(values), environment)


def collect(rows: Iterable[dict]) -> Samples:
    """Every metric series the rows allow: absolute per key, same-run ratios per same-run pair
    (slmbench.core.metrics.same_run_pairs) and per harness/bare overhead group."""
    rows = list(rows)
    out = Samples()
    reps: dict[int, list[dict]] = {}
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        key = row.get("key")
        if not key:
            continue
        if row.get("status") != "ok":
            out.failed[key] = str(row.get("error") or row.get("status"))
            continue
        out.failed.pop(key, None)
        out.ok_keys.add(key)
        reps[id(row)] = row_repetitions(row)
        for metric in ABSOLUTE:
            values = [r[metric] for r in reps[id(row)] if r.get(metric) is not None]
            if values:
                out.add((key, metric), values, row.get("environment") or {})
        if row.get("group") and row.get("loop"):
            groups[row["group"]].append(row)
    for pair in same_run_pairs(rows):
        a, b = reps[id(pair.ed)], reps[id(pair.do)]
        # tok/s enc-dec over dec-only = decoder-only's decode step over encoder-decoder's
        for metric, values in (("ed_do_ttft", _paired_ratios(a, b, "ttft_s")),
                               ("ed_do_decode_tps", _paired_ratios(b, a, "step_s"))):
            if values:
                out.add((pair.label, metric), values, pair.ed.get("environment") or {})
    for group in groups.values():
        harness = {r.get("overhead_of"): r for r in group if r.get("loop") == "harness"}
        for bare in (r for r in group if r.get("loop") == "bare"):
            h = harness.get(bare.get("overhead_of"))
            if h is None:
                continue
            for metric, base in (("overhead_ttft", "ttft_s"), ("overhead_step", "step_s")):
                values = _paired_ratios(reps[id(h)], reps[id(bare)], base)
                if values:
                    out.add((bare["overhead_of"], metric), values, h.get("environment") or {})
    return out


# --- environments -----------------------------------------------------------------------------

def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def env_differences(baseline_env: dict, candidate_env: dict) -> list[str]:
    """What differs in the machines' identities (slmbench.host.environment.fingerprint: host, CPU, cores,
    allowed CPUs, memory, kernel, huge pages, Python, packages), one 'field: baseline vs candidate' each."""
    a = _flat(fingerprint(baseline_env or {}))
    b = _flat(fingerprint(candidate_env or {}))
    show = lambda v: "absent" if v is None else repr(v) if isinstance(v, str) and " " in v else str(v)
    return [f"{k}: {show(a.get(k))} (baseline) vs {show(b.get(k))} (candidate)"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# --- the comparison ---------------------------------------------------------------------------

@dataclass
class Report:
    comparisons: list[Comparison]
    env_differences: list[str]  # empty when every matched configuration had the same environment
    missing: list[str]  # configurations only in the baseline
    added: list[str]  # configurations only in the candidate
    alpha: float = ALPHA

    def gated(self, gate: str = "all") -> list[Comparison]:
        if gate not in GATES:
            raise InvalidOption(f"unknown gate {gate!r}; choose from {', '.join(GATES)}")
        return [c for c in self.comparisons if c.verdict != "not compared"
                and (gate == "all" or c.same_run or c.verdict == "failed")]

    def gate_failures(self, gate: str = "all") -> list[str]:
        """Why a CI gate must fail: regressions, failed configurations, or a gate that saw nothing."""
        gated = self.gated(gate)
        reasons = [f"{c.config} {c.label}: {c.verdict}"
                   + (f" (x{c.ratio:.3f}, p={c.p:.2g})" if c.ratio is not None else f" ({c.note})")
                   for c in gated if c.verdict in ("regression", "failed", "too few reps")]
        if not any(c.verdict in ("regression", "improvement", "no change") for c in gated):
            reasons.append(f"nothing comparable under gate '{gate}': the gate would see no regression at all")
        return reasons


def parse_thresholds(items: Iterable[str] | dict | None) -> dict[str, float]:
    """'metric=ratio' strings (or a dict) -> thresholds; every metric not named keeps the default."""
    thresholds = dict.fromkeys(METRICS, DEFAULT_THRESHOLD)
    pairs = items.items() if isinstance(items, dict) else ((s.partition("=")[0], s.partition("=")[2])
                                                            for s in items or ())
    for name, value in pairs:
        name = name.strip()
        if name not in METRICS:
            raise InvalidOption(f"unknown metric {name!r} in a threshold; choose from {', '.join(METRICS)}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InvalidOption(f"threshold for {name} must be a number like {name}=1.10, got {value!r}") \
                from None
        if not value > 1:
            raise InvalidOption(f"threshold for {name} must be a ratio above 1 (e.g. 1.10), got {value:g}")
        thresholds[name] = value
    return thresholds


def compare_rows(baseline: Iterable[dict], candidate: Iterable[dict], thresholds=None, alpha: float = ALPHA,
                 allow_env_mismatch: bool = False) -> Report:
    """Compare every configuration and metric both sides have. Raises EnvMismatch, naming what
    differs, when hardware or package versions differ, unless allow_env_mismatch: then only the
    same-run ratios are compared and absolute metrics are reported as not compared."""
    if not 0 < alpha < 1:
        raise InvalidOption(f"alpha must be between 0 and 1, got {alpha:g}")
    limits = parse_thresholds(thresholds)
    base, cand = collect(baseline), collect(candidate)
    matched = sorted(set(base.series) & set(cand.series))
    differences: list[str] = []
    differs: dict[tuple, bool] = {}
    for pair in matched:
        a, b = base.series[pair].environment, cand.series[pair].environment
        found = env_differences(a, b)
        differs[pair] = bool(found)
        if found:
            found.insert(0, f"machine: {machine_identity(a)['name']} (baseline) vs "
                            f"{machine_identity(b)['name']} (candidate)")
        differences.extend(d for d in found if d not in differences)
    if differences and not allow_env_mismatch:
        raise EnvMismatch("baseline and candidate were measured on different machines ("
                          + "; ".join(differences) + "); re-record the baseline here, or pass "
                          "--allow-env-mismatch to compare only the same-run ratios")
    comparisons = []
    for config, metric in matched:
        if differs[(config, metric)] and not METRICS[metric].same_run:
            comparisons.append(Comparison(config, metric, "not compared", threshold=limits[metric],
                                          note="another machine: absolute times are not comparable"))
            continue
        comparisons.append(judge(base.series[(config, metric)].values, cand.series[(config, metric)].values,
                                 metric, limits[metric], alpha, config))
    for key in sorted(base.ok_keys & set(cand.failed)):
        note = f"failed in the candidate: {cand.failed[key]}"
        comparisons.append(Comparison(key, STATUS, "failed", note=note))
    base_configs = {c for c, _ in base.series} | set(base.failed)
    cand_configs = {c for c, _ in cand.series} | set(cand.failed)
    return Report(comparisons, differences, sorted(base_configs - cand_configs),
                  sorted(cand_configs - base_configs), alpha)


def compare(baseline: Iterable[Path | str] | Path | str, candidate: Iterable[Path | str] | Path | str,
            **kwargs) -> Report:
    """compare_rows over result files or folders of .jsonl files."""
    from slmbench.results import read_rows

    as_list = lambda p: [p] if isinstance(p, str | Path) else list(p)
    base_rows, cand_rows = read_rows(as_list(baseline)), read_rows(as_list(candidate))
    for side, rows, where in (("baseline", base_rows, baseline), ("candidate", cand_rows, candidate)):
        if not rows:
            raise BenchError(f"the {side} ({where}) holds no result rows; run `slmbench run` or a sweep "
                             "first")
    return compare_rows(base_rows, cand_rows, **kwargs)


# --- the table --------------------------------------------------------------------------------

VERDICT_STYLE = {"regression": "bold red", "failed": "bold red", "improvement": "green", "no change": "",
                 "too few reps": "yellow", "not compared": "dim"}


def _fmt(metric: str, value: float | None) -> str:
    from slmbench.report.terminal import fmt_s

    if value is None:
        return "-"
    if metric.endswith("_s"):
        return fmt_s(value)
    return f"{value:.1f}" if metric == "decode_tps" else f"{value:.3f}x"


def short_configs(configs: Iterable[str]) -> tuple[dict[str, str], str]:
    """Keys without the fields every one of them shares (shown once instead): 'mu-tiny|in32|...'."""
    configs = sorted(set(configs))
    parts = {c: c.split("|") for c in configs}
    width = min((len(p) for p in parts.values()), default=0)
    shared = ([i for i in range(1, width) if len({p[i] for p in parts.values()}) == 1]
              if len(configs) > 1 else [])
    short = {c: "|".join(x for i, x in enumerate(p) if i not in shared) for c, p in parts.items()}
    common = "|".join(parts[configs[0]][i] for i in shared) if shared else ""
    return short, common


def comparison_table(report: Report, gate: str = "all", title: str = "baseline vs candidate",
                     gated_only: bool = False):
    """One line per configuration and metric; same-run ratios first (they hold across machines).
    gated_only leaves out what the gate does not act on (see context_line)."""
    from rich.table import Table

    gated = set(map(id, report.gated(gate)))
    shown = [c for c in report.comparisons if id(c) in gated or not gated_only]
    short, common = short_configs(c.config for c in shown)
    table = Table(title=f"{title}: a change needs p < {report.alpha:g} and a ratio beyond its threshold"
                        + (f"; every configuration is {common}" if common else ""), title_justify="left")
    for col in ("configuration", "metric", "better", "baseline p50", "candidate p50", "ratio", "threshold",
                "p", "reps", "verdict", "note"):
        left = col in ("configuration", "metric", "verdict", "note")
        table.add_column(col, justify="left" if left else "right")
    rank = {name: i for i, name in enumerate(METRICS)}
    for c in sorted(shown, key=lambda c: (not c.same_run, c.config, rank.get(c.metric, -1))):
        spec = METRICS.get(c.metric)
        verdict = c.verdict if id(c) in gated else f"{c.verdict} (not gated)"
        style = VERDICT_STYLE.get(c.verdict, "") if id(c) in gated else "dim"
        table.add_row(
            short[c.config], c.label, "-" if spec is None else "higher" if spec.higher_is_better else "lower",
            _fmt(c.metric, c.baseline_median), _fmt(c.metric, c.candidate_median),
            f"{c.ratio:.3f}" if c.ratio is not None else "-", f"{c.threshold:g}",
            f"{c.p:.2g}" if c.p is not None else "-",
            f"{c.n_baseline}/{c.n_candidate}" if c.n_baseline else "-",
            f"[{style}]{verdict}[/{style}]" if style else verdict, c.note)
    return table


def context_line(report: Report, gate: str) -> str | None:
    """One line on what the gate does not act on (absolute times under gate 'same-run')."""
    gated = set(map(id, report.gated(gate)))
    rest = [c for c in report.comparisons if id(c) not in gated]
    if not rest:
        return None
    counts: dict[str, int] = defaultdict(int)
    for c in rest:
        counts[c.verdict] += 1
    judged = [c for c in rest if c.ratio is not None]
    line = (f"not gated ({len(rest)} absolute comparisons): "
            + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
    if judged:
        worst = max(judged, key=lambda c: abs(math.log(c.ratio)) if c.ratio > 0 else 0)
        line += f"; largest move x{worst.ratio:.3f} ({worst.config} {worst.label}, p={worst.p:.2g})"
    return line
