"""Same-job A/B: a base revision measured beside the working tree, on one machine, in one job.

Same-run ratios (encoder-decoder / decoder-only, harness / bare) do not hold across CPUs: the
same code moved the tiny pair's TTFT ratio at input 512 from 0.348x (an Intel Xeon VM) to 0.452x
(an AMD EPYC VM), a "regression" at p = 2e-16 with nothing changed. So the gate measures the base
revision here and now, as `asv continuous` does: the base is checked out with `git worktree`,
both trees run from source in the one installed environment (slmbench.tools.gpu_check.source_layout
mirrors the installed package layout with symlinks), and the two sides alternate, process by
process, for several rounds (base first in odd rounds, the candidate first in even ones), so
drift and the slow first process of a job hit both alike. Each side's rows are pooled per
configuration and judged by slmbench.gate.compare.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from slmbench.errors import BenchError, InvalidOption

REPO = Path(__file__).resolve().parents[2]


class RevisionError(InvalidOption):
    """A base revision that cannot be measured (unknown, or without slmbench)."""


@dataclass(frozen=True)
class Side:
    name: str  # "base" or "candidate"
    tree: Path  # the source tree it runs from
    label: str  # what the verdict calls it: the revision and its commit


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120)


def resolve_revision(rev: str, repo: Path = REPO) -> str:
    """The commit a revision names, or a one-line error (a shallow clone lacks the parent)."""
    if not rev or rev.startswith("-"):
        raise RevisionError(f"not a revision: {rev!r}")
    found = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if found.returncode != 0:
        shallow = _git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"
        raise RevisionError(f"unknown revision {rev!r} in {repo}" + (" (a shallow clone: fetch more history)"
                                                                     if shallow else ""))
    return found.stdout.strip()


def describe_tree(repo: Path = REPO) -> str:
    """The working tree as a verdict names it: its commit, and whether it has changes on top."""
    head = _git(repo, "rev-parse", "--short", "HEAD").stdout.strip() or "no commit"
    dirty = _git(repo, "status", "--porcelain", "--untracked-files=no").stdout.strip()
    return f"working tree ({head}{' + uncommitted changes' if dirty else ''})"


@contextlib.contextmanager
def checkout(commit: str, repo: Path = REPO) -> Iterator[Path]:
    """The commit as a detached worktree in a temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="slmbench-base-"))
    tree = folder / "tree"
    made = _git(repo, "worktree", "add", "--detach", "--force", str(tree), commit)
    if made.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RevisionError(f"cannot check out {commit[:12]}: {made.stderr.strip().splitlines()[-1:]}")
    try:
        if not (tree / "bench" / "cli.py").is_file():
            raise RevisionError(f"revision {commit[:12]} has no slmbench (no bench/cli.py): choose a later base")
        yield tree
    finally:
        _git(repo, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(folder, ignore_errors=True)
        _git(repo, "worktree", "prune")


def measure_side(tree: Path, out: Path, commands: list[list[str]], cache_dir: Path | None) -> None:
    """Run the measurement commands (slmbench CLI arguments) from `tree`'s source, rows to `out`."""
    from slmbench.tools.gpu_check import source_layout

    layout = source_layout(tree)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(layout), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep), PYTHONUNBUFFERED="1")
    if cache_dir:
        env["SLMBENCH_CACHE_DIR"] = str(cache_dir)
    try:
        for args in commands:
            done = subprocess.run([sys.executable, "-m", "slmbench.cli", *args, "--results", str(out)], env=env,
                                  cwd=tree, capture_output=True, text=True)
            if done.returncode != 0:
                tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
                raise BenchError(f"measuring {tree} failed (`slmbench {' '.join(args)}` exit {done.returncode}): "
                                 f"{tail[:400]}")
    finally:
        shutil.rmtree(layout, ignore_errors=True)


def run_ab(base_rev: str, commands: list[list[str]], rounds: int = 3, repo: Path = REPO,
           cache_dir: Path | None = None, log: Callable[[str], None] = print) -> tuple[list[dict], list[dict], dict]:
    """Measure `commands` on the base revision and the working tree, alternating for `rounds`
    rounds; returns (base rows, candidate rows, what was compared)."""
    from slmbench.host.environment import this_machine
    from slmbench.results import read_rows

    if not isinstance(rounds, int) or not 1 <= rounds <= 50:
        raise InvalidOption(f"--rounds must be an integer from 1 to 50, got {rounds!r}")
    commit = resolve_revision(base_rev, repo)
    info = {"base": f"{base_rev} ({commit[:12]})", "candidate": describe_tree(repo), "rounds": rounds,
            "machine": this_machine()["name"]}
    with checkout(commit, repo) as base_tree, tempfile.TemporaryDirectory(prefix="slmbench-ab-") as work:
        work = Path(work)
        cache = cache_dir or work / "artifacts"  # one cache: an unchanged model exports once for both sides
        sides = [Side("base", base_tree, info["base"]), Side("candidate", repo, info["candidate"])]
        for i in range(rounds):
            for side in sides if i % 2 == 0 else sides[::-1]:
                log(f"round {i + 1}/{rounds}: {side.name} {side.label}")
                measure_side(side.tree, work / f"{side.name}.jsonl", commands, cache)
        base, candidate = (read_rows([work / f"{s.name}.jsonl"]) for s in sides)
    return base, candidate, info


def gate_commands(sweep_file: Path | str) -> list[list[str]]:
    """What the CI gate measures (slmbench CLI arguments, rows appended to one file): the sweep
    file's grid (results/baselines/regress.toml) and the harness overhead of the tiny pair."""
    return [["sweep", str(sweep_file), "--force"],
            ["overhead", "-m", "mu-tiny", "-m", "deconly-tiny", "--threads", "1", "--input-len", "64",
             "--output-len", "16", "--min-reps", "20", "--min-time", "1"]]


def machine_baseline(folder: Path) -> Path:
    """This machine's stored baseline: `<folder>/<machine name>.jsonl` (never another machine's)."""
    from slmbench.host.environment import this_machine

    return Path(folder) / f"{this_machine()['name']}.jsonl"


def is_shallow(repo: Path = REPO) -> bool:
    return _git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"


def record_baseline(path: Path, commands: list[list[str]], cache_dir: Path | None = None) -> Path:
    """Measure the working tree into `path` (replacing it only once the measurement is complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".new")
    scratch.unlink(missing_ok=True)
    measure_side(REPO, scratch, commands, cache_dir)
    os.replace(scratch, path)
    return path


class NothingGated(BenchError):
    """Neither the base revision nor a stored baseline of this machine is there to compare with."""


def gate_rows(base_rev: str, commands: list[list[str]], rounds: int, stored: Path, cache_dir: Path | None = None,
              log: Callable[[str], None] = print, repo: Path = REPO) -> tuple[list[dict], list[dict], dict]:
    """The A/B of `run_ab`; where the base revision is missing from a shallow clone, the working tree
    against this machine's stored baseline instead; with neither, NothingGated says why."""
    from slmbench.results import read_rows

    try:
        return run_ab(base_rev, commands, rounds, repo, cache_dir, log)
    except RevisionError:
        if not is_shallow(repo):
            raise
    if not stored.is_file():
        raise NothingGated(f"{base_rev} is not in this shallow clone and this machine has no stored baseline "
                           f"({stored}); fetch the history, or record one with `make regress-baseline`")
    log(f"{base_rev} is not in this shallow clone: comparing with this machine's stored baseline {stored}")
    with tempfile.TemporaryDirectory(prefix="slmbench-gate-") as folder:
        rows = Path(folder) / "rows.jsonl"
        measure_side(repo, rows, commands, cache_dir)
        candidate = read_rows([rows])
    return read_rows([stored]), candidate, {"base": str(stored), "candidate": describe_tree(repo), "rounds": 1}


def noise_file(folder: Path) -> Path:
    """This machine's A/A noise band: `<folder>/<machine name>.noise.json`."""
    return machine_baseline(folder).with_suffix(".noise.json")


def noise_band(reports) -> dict[str, float]:
    """Per same-run metric, the widest A/A move: max over runs and configurations of
    max(ratio, 1/ratio). A threshold at or below it would call noise a change."""
    band: dict[str, float] = {}
    for report in reports:
        for c in report.comparisons:
            if c.same_run and c.ratio and c.ratio > 0:
                band[c.metric] = max(band.get(c.metric, 1.0), c.ratio, 1 / c.ratio)
    return band


def record_noise(path: Path, band: dict[str, float], runs: int, rounds: int, commit: str) -> dict:
    from slmbench.host.environment import this_machine

    study = {"machine": this_machine(), "runs": runs, "rounds": rounds, "commit": commit,
             "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "band": band,
             "what": "A/A: the same commit on both sides of `slmbench compare --base-rev`; per same-run metric "
                     "the widest ratio seen (max of ratio and 1/ratio)"}
    path.write_text(json.dumps(study, indent=2, sort_keys=True) + "\n")
    return study


def noise_study(base_rev: str, commands: list[list[str]], runs: int, rounds: int, path: Path,
                cache_dir: Path | None = None, log: Callable[[str], None] = print) -> dict[str, float]:
    """`runs` A/A comparisons of a commit with itself; records and returns the noise band."""
    from slmbench.gate.compare import compare_rows

    if not isinstance(runs, int) or not 2 <= runs <= 20:
        raise InvalidOption(f"--noise-study must be from 2 to 20 runs, got {runs!r}")
    if "uncommitted" in describe_tree() or resolve_revision(base_rev) != resolve_revision("HEAD"):
        raise InvalidOption("--noise-study compares a commit with itself: use --base-rev HEAD (the default) on a "
                            "tree without uncommitted changes")
    reports = []
    for i in range(runs):
        log(f"A/A run {i + 1}/{runs}")
        base, candidate, _ = run_ab(base_rev, commands, rounds, cache_dir=cache_dir, log=log)
        reports.append(compare_rows(base, candidate))
    band = noise_band(reports)
    record_noise(path, band, runs, rounds, resolve_revision(base_rev))
    return band


def check_thresholds(thresholds: dict[str, float], path: Path) -> dict[str, float]:
    """Refuse a threshold inside this machine's recorded A/A noise band; returns the band ({} when
    this machine has none recorded)."""
    if not path.is_file():
        return {}
    band = json.loads(path.read_text()).get("band") or {}
    inside = [f"{m}={thresholds[m]:g} (A/A moved up to x{b:.3f})" for m, b in sorted(band.items())
              if m in thresholds and thresholds[m] <= b]
    if inside:
        raise InvalidOption(f"thresholds inside this machine's noise band ({path}): {', '.join(inside)}; "
                            "raise them, or the gate calls noise a regression")
    return band
