"""Append-only result rows (JSON Lines) and loading them into pandas.

Each row is written with one `write` on a file opened for append, under an exclusive lock, then
flushed and fsynced: a crash can tear at most the row being written, never an earlier one, and
two processes writing at once never interleave. A torn last line is skipped with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from slmbench.errors import BenchError

SCHEMA = 1
DEFAULT_RESULTS = Path("results") / "results.jsonl"


class ResultsError(BenchError):
    """A results file that cannot be written or read."""


def check_writable(path: Path | str) -> Path:
    """Fail before measuring, not after, when the results file cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as exc:
        raise ResultsError(f"cannot write results to {path}: {exc.strerror}; choose another --results path") \
            from None
    return path


def append_row(path: Path | str, row: dict) -> None:
    line = (json.dumps(row, sort_keys=True, allow_nan=False) + "\n").encode()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ResultsError(f"cannot write results to {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size:
            # A torn last line (crash mid-write elsewhere) must not swallow this row.
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):
            os.ftruncate(fd, size)
            raise ResultsError(f"short write to {path}; the row was not recorded")
        os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, size)  # never leave half a row behind
        except (OSError, UnboundLocalError):
            pass
        if exc.errno == errno.ENOSPC:
            raise ResultsError(f"disk full while writing {path}; earlier rows are intact, free space and "
                               "resume") from None
        raise ResultsError(f"cannot write results to {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _files(paths: Iterable[Path | str]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.jsonl")))
        elif p.exists():
            files.append(p)
        else:
            raise ResultsError(f"no results at {p}")
    return files


def read_rows(paths: Iterable[Path | str]) -> list[dict]:
    rows = []
    for file in _files(paths):
        with open(file, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    warnings.warn(f"{file}:{number}: skipped an unreadable (torn) row", stacklevel=2)
                    continue
                if isinstance(row, dict):
                    row.setdefault("_source", str(file))
                    rows.append(row)
    return rows


FLAT_METRICS = ("ttft_s", "encoder_s", "prefill_s", "tpot_s", "decode_tps", "e2e_s", "e2e_tps", "itl_s")


def flatten(row: dict) -> dict:
    """One DataFrame row: identity columns plus `<metric>_<stat>` columns."""
    flat = {k: row.get(k) for k in ("run_id", "group", "key", "status", "error", "timestamp", "model", "family",
                                    "parameters", "device", "runtime", "precision", "batch", "input_len",
                                    "output_len", "threads", "device_executed", "cold_ttft_s", "load_s",
                                    "compile_s", "peak_rss_bytes", "load_rss_bytes", "tokens_generated",
                                    "mode")}
    env = row.get("environment") or {}
    flat["host"] = env.get("host")
    flat["cpu"] = env.get("cpu")
    flat["artifact"] = (row.get("artifact") or {}).get("key")
    flat["warnings"] = "; ".join(row.get("warnings") or [])
    for name in FLAT_METRICS:
        stats = (row.get("metrics") or {}).get(name) or {}
        for stat in ("median", "p90", "p99", "mean", "stdev", "min", "max", "count", "ci95_low", "ci95_high"):
            flat[f"{name}_{stat}"] = stats.get(stat)
    return flat


def load_results(*paths: Path | str):
    """Result rows from files or folders of .jsonl as a pandas DataFrame (one row per configuration)."""
    import pandas as pd

    return pd.DataFrame([flatten(r) for r in read_rows(paths)])
