"""Results files: append-only JSON Lines of result rows (slmbench.rows), and loading them into pandas.

The rows of one run are appended together in one write on a file opened for append, under an
exclusive lock, then fsynced: all of them land or none does (a full disk truncates back to the old
end), a crash can tear at most that last write, never an earlier row, and two processes writing at
once never interleave. A torn last line is skipped with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

from slmbench.core.metrics import ROW_METRICS
from slmbench.errors import BenchError
from slmbench.host.environment import machine_of
from slmbench.rows import from_json, to_json

DEFAULT_RESULTS = Path("results") / "results.jsonl"


class ResultsError(BenchError):
    """A results file that cannot be written or read."""


def check_writable(path: Path | str) -> Path:
    """Fail before measuring, not after, when the results file could not be written; creates
    nothing (a run refused later leaves no empty file behind)."""
    path = Path(path)
    if path.exists():
        ok, why = (os.access(path, os.W_OK) and path.is_file()), "not a writable file"
        if ok and path.stat().st_size and not _looks_like_rows(path):
            raise ResultsError(f"{path} is not a results file (JSON Lines of result rows); appending to it would "
                               "mix rows into another file: choose another --results path")
    else:  # a file made and removed at once in the nearest existing folder (root ignores permissions)
        parent = next((p for p in path.parents if p.exists()), Path("."))
        try:
            with tempfile.TemporaryFile(dir=parent):
                ok, why = True, ""
        except OSError as exc:
            ok, why = False, f"{parent}: {exc.strerror}"
    if not ok:
        raise ResultsError(f"cannot write results to {path}: {why}; choose another --results path")
    return path


def _looks_like_rows(path: Path) -> bool:
    """Whether the file's first line is a JSON object (a row), read without loading the file."""
    with open(path, "rb") as f:
        first = f.readline(1 << 20)
    try:
        return from_json(first) is not None
    except ValueError:
        return False


def append_rows(path: Path | str, rows: list[dict]) -> None:
    """Append rows in one write: all of them, or (disk full, I/O error) none."""
    if not rows:
        return
    data = "".join(to_json(r) + "\n" for r in rows).encode()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ResultsError(f"cannot write results to {path}: {exc.strerror}") from None
    size = None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size:
            # A torn last line (crash mid-write elsewhere) must not swallow these rows.
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        view = memoryview(data)
        while view:  # a short write (nearly full disk) continues; the next write says why it stopped
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        if size is not None:
            try:
                os.ftruncate(fd, size)  # never leave part of the run behind
            except OSError:
                pass
        what = f"{len(rows)} row{'s' if len(rows) > 1 else ''} of this run"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResultsError(f"disk full while writing {path}: none of the {what} was recorded, earlier rows "
                               "are intact; free space and run again") from None
        raise ResultsError(f"cannot write results to {path} ({exc.strerror}): none of the {what} was "
                           "recorded") from None
    finally:
        os.close(fd)


def append_row(path: Path | str, row: dict) -> None:
    append_rows(path, [row])


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
                    row = from_json(raw)
                except ValueError:  # JSON and Unicode decoding errors are ValueErrors
                    warnings.warn(f"{file}:{number}: skipped an unreadable (torn) row", stacklevel=2)
                    continue
                if row is None and raw.lstrip().startswith(b"["):
                    raise ResultsError(f"{file}:{number} is a JSON array; results are JSON Lines, one row (a JSON "
                                       "object) per line")
                if row is not None:
                    row.setdefault("_source", str(file))
                    rows.append(row)
    return rows


FLAT_METRICS = (*ROW_METRICS, "itl_s")


def flatten(row: dict) -> dict:
    """One DataFrame row: identity columns plus `<metric>_<stat>` columns."""
    flat = {k: row.get(k) for k in ("run_id", "group", "key", "status", "error", "timestamp", "model", "family",
                                    "parameters", "device", "runtime", "precision", "batch", "input_len",
                                    "output_len", "threads", "mode", "device_executed", "cold_ttft_s", "load_s",
                                    "compile_s", "peak_rss_bytes", "load_peak_rss_bytes", "load_rss_delta_bytes",
                                    "tokens_generated", "loop")}
    env = row.get("environment") or {}
    machine = machine_of(row)
    flat["machine"] = machine["name"]
    flat["machine_id"] = machine["id"]
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
    """Result rows from files or folders of .jsonl as a pandas DataFrame: one line per row measured
    (a configuration measured twice, or on two machines, appears twice; `machine` and `key` tell)."""
    import pandas as pd

    return pd.DataFrame([flatten(r) for r in read_rows(paths)])
