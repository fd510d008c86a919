"""Running a sweep: every configuration in its own process, with a timeout and a memory limit.

What can go wrong, and what happens:
- the process crashes (abort, segfault), hangs past the timeout, or runs out of memory: one
  failed row per model with the cause, and the sweep goes on;
- Ctrl-C or SIGTERM: the configuration in progress is killed and nothing of it is written;
  every completed row is already on disk (`SweepInterrupted` says how many); rerunning resumes;
- a device or runtime that is absent: reported once, its configurations skipped, no rows.
Only this process appends to the results file, a configuration's rows together with signals
held off, so an interrupt never splits a pair.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from slmbench.host.environment import machine_of, this_machine
from slmbench.results import append_rows, check_writable, read_rows
from slmbench.rows import failed_row
from slmbench.sweep.files import Configuration, Sweep
from slmbench.sweep.worker import OOM_WORDS

KILL_WAIT_S = 5.0  # how long an interrupted sweep waits for its killed worker


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a sweep; completed rows are kept."""

    def __init__(self, kept: int, written: int, results: Path):
        super().__init__(
            f"interrupted: {written} rows written by this run, {kept} completed rows in {results} "
            "kept; the configuration in progress was discarded; run the same command again to "
            "resume"
        )
        self.kept, self.written = kept, written


@dataclass
class SweepOutcome:
    results: Path
    planned: int = 0
    done_before: int = 0
    measured: int = 0
    failed: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per absent device/runtime
    notes: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # the rows this run appended


class SweepProgress:
    """Callbacks for a progress display; this base class shows nothing."""

    def start(self, total_cost: float, count: int) -> None: ...

    def begin(self, config: Configuration) -> None: ...

    def update(self, text: str) -> None: ...

    def end(self, config: Configuration, cost: float, ok: bool, error: str | None) -> None: ...

    def log(self, message: str) -> None: ...


def measured_keys(results: Path) -> dict[str, set[str]]:
    """Keys that already have an ok row, per machine id: what each machine has measured. Failed
    rows are tried again on resume; a row counts only for the machine that measured it."""
    if not results.exists():
        return {}
    by_machine: dict[str, set[str]] = {}
    for r in read_rows([results]):
        if r.get("status") == "ok" and r.get("key"):
            by_machine.setdefault(machine_of(r)["id"], set()).add(r["key"])
    return by_machine


def completed_keys(results: Path) -> set[str]:
    """Keys measured on this machine (another machine's rows, committed or copied in, are never
    this machine's result)."""
    return measured_keys(results).get(this_machine()["id"], set())


def is_measured(config: Configuration, keys: set[str]) -> bool:
    """Whether every run of the configuration has an ok row among `keys` (one machine's)."""
    return all(key in keys for key in config.keys.values())


def sweep_configurations(sweep: Sweep, memory_limit_gb: float | None, notes: list[str],
                         progress: SweepProgress) -> list[Configuration]:
    """The sweep's configurations (a --memory-limit replacing the file's); its notes logged and kept."""
    configs, found = sweep.configurations()
    if memory_limit_gb is not None:
        configs = [replace(c, memory_limit_gb=memory_limit_gb) for c in configs]
    notes.extend(found)
    for note in found:
        progress.log(note)
    return configs


def skip_absent(configs: list[Configuration], absent: dict[tuple[str, str], str], outcome: SweepOutcome,
                progress: SweepProgress) -> list[Configuration]:
    """The configurations whose device and runtime are present; one line per absent pair."""
    for (device, runtime), reason in absent.items():
        n = sum(1 for c in configs if (c.device, c.runtime) == (device, runtime))
        line = f"skipping {n} configurations of {runtime} on {device}: {reason}"
        outcome.skipped.append(line)
        progress.log(line)
    return [c for c in configs if (c.device, c.runtime) not in absent]


def availability(configs: list[Configuration]) -> dict[tuple[str, str], str]:
    """Why each (device, runtime) of the sweep cannot run here; absent from the dict when it can."""
    from slmbench.errors import BenchError
    from slmbench.runners import RUNNERS, select_runner

    why = {}
    for device, runtime in dict.fromkeys((c.device, c.runtime) for c in configs):
        if runtime not in RUNNERS:
            why[device, runtime] = f"runtime {runtime} has no runner in this installation"
            continue
        try:
            select_runner(device, runtime)
        except BenchError as exc:
            why[device, runtime] = str(exc)
    return why


def failed_rows(config: Configuration, error: str, failure: dict, env: dict | None = None) -> list[dict]:
    """What a failed configuration leaves behind: its identity, its settings and the cause (`env`: the
    machine it failed on, when that is not this one)."""
    from slmbench.models import resolve_model

    group = uuid.uuid4().hex[:12]
    rows = []
    for run in config.runs:
        spec = resolve_model(run.model)
        rows.append(failed_row(run, group, error, failure, spec.family.value, spec.parameters, env=env,
                               compared_with=[m for m in config.models if m != run.model], sweep=config.sweep))
    return rows


class _Child:
    """The worker process and a thread that reads its output (progress lines and a log tail)."""

    def __init__(self, job_path: Path, env: dict, on_progress):
        self.tail = collections.deque(maxlen=40)  # everything it printed, last lines
        self.foreign = collections.deque(maxlen=5)  # what it printed that is not its own log (runtime errors)
        self.peak_vm_bytes: int | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slmbench.sweep.worker", str(job_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            text=True,
            errors="replace",
        )
        self.reader = threading.Thread(target=self._read, args=(on_progress,), daemon=True)
        self.reader.start()

    def _read(self, on_progress) -> None:
        for line in self.proc.stdout:
            line = line.rstrip()
            if line.startswith("@progress "):
                on_progress(line[len("@progress ") :])
            elif line.startswith("@log "):
                self.tail.append(line[len("@log ") :])
            elif line:
                self.tail.append(line)
                self.foreign.append(line)

    def kill(self) -> None:
        """SIGKILL its process group, and wait for it a bounded time: a process stuck in the kernel
        (a device driver, a page fault under memory pressure) dies when it leaves it, and the
        sweep's own exit must not wait on that."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
        self.reader.join(timeout=KILL_WAIT_S)

    def wait(self, timeout_s: float) -> bool:
        """True when it exited, False when the timeout passed (it is then killed)."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                return False
            self.peak_vm_bytes = _vm_peak(self.proc.pid) or self.peak_vm_bytes
            time.sleep(0.05)
        self.reader.join(timeout=5)
        return True


def _vm_peak(pid: int) -> int | None:
    """The kernel's address-space high-water mark of a process (Linux), in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmPeak:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"




def _memory_exhausted(config: Configuration, child: _Child) -> str:
    """Why this looks like running out of memory, or empty: the runtime said so, or the process had
    reached 90% of its address-space limit when it died."""
    said = next((t for t in child.foreign if any(w in t.lower() for w in OOM_WORDS)), "")
    if said:
        return f"the runtime said: {said[:200]}"
    limit = config.memory_limit_gb
    if limit and child.peak_vm_bytes and child.peak_vm_bytes >= 0.9 * limit * 2**30:
        return f"it had reached {child.peak_vm_bytes / 2**30:.2f} GiB of its {limit:g} GiB limit"
    return ""


def _diagnose(
    config: Configuration, child: _Child, finished: bool, timeout_s: float, outcome: dict | None
) -> tuple[str, dict]:
    code = child.proc.returncode
    failure = {
        "exit_code": code,
        "log_tail": list(child.tail)[-12:],
        "peak_vm_bytes": child.peak_vm_bytes,
        "memory_limit_gb": config.memory_limit_gb,
    }
    if not finished:
        return f"timed out after {timeout_s:g}s (hung or too slow; raise --timeout)", {
            **failure,
            "kind": "timeout",
        }
    name = _signal_name(code) if code is not None and code < 0 else None
    if name:
        failure["signal"] = name
    memory = _memory_exhausted(config, child)
    if outcome and outcome.get("status") == "failed":
        if memory and outcome.get("kind") != "oom":
            return (
                f"out of memory (likely: {memory}; raise --memory-limit if the machine has room): "
                f"{outcome['error']}",
                {**failure, "kind": "oom"},
            )
        return outcome["error"], {**failure, "kind": outcome.get("kind", "error")}
    how = f"was killed by {name}" if name else f"exited with code {code} without a result"
    if memory:
        return (
            f"out of memory: the process {how} ({memory}; raise --memory-limit if the machine has room)",
            {**failure, "kind": "oom"},
        )
    if name == "SIGKILL":
        return (
            "killed by SIGKILL (the kernel's out-of-memory killer, or another process)",
            {**failure, "kind": "killed"},
        )
    last = child.foreign[-1] if child.foreign else ""
    return (
        f"crashed: the process {how}" + (f" (last output: {last[:200]})" if last else ""),
        {**failure, "kind": "crash"},
    )


def _read_outcome(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def append_together(results: Path, rows: list[dict], written: list[dict]) -> None:
    """Append a configuration's rows with SIGINT/SIGTERM held off, so a pair is never split."""
    held = {signal.SIGINT, signal.SIGTERM}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        append_rows(results, rows)
        written.extend(rows)
    finally:
        if in_main:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def run_configuration(
    config: Configuration,
    workdir: Path,
    index: int,
    timeout_s: float,
    cache_dir=None,
    on_progress=lambda text: None,
) -> tuple[list[dict], str | None]:
    """Measure one configuration in a child process. Returns (rows, None) or (failed rows, error)."""
    out = workdir / f"config-{index}.out.json"
    job_path = workdir / f"config-{index}.job.json"
    job = {**config.to_job(), "out": str(out), "cache_dir": str(cache_dir) if cache_dir else None,
           "parent": os.getpid()}
    job_path.write_text(json.dumps(job))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = _Child(job_path, env, on_progress)
    try:
        finished = child.wait(timeout_s)
    except BaseException:
        child.kill()  # Ctrl-C / SIGTERM: the partial configuration dies with nothing written
        raise
    outcome = _read_outcome(out) if finished else None
    if finished and child.proc.returncode == 0 and outcome and outcome.get("status") == "ok":
        rows = outcome["rows"]
        expected = config.keys
        if sorted(r.get("model") for r in rows) == sorted(expected):
            for row in rows:
                row["sweep"] = config.sweep
            return rows, None
        outcome = {
            "status": "failed",
            "kind": "error",
            "error": f"the worker returned rows for {[r.get('model') for r in rows]}, "
            f"expected {list(expected)}",
        }
    error, failure = _diagnose(config, child, finished, timeout_s, outcome)
    return failed_rows(config, error, failure), error


def count_rows(results: Path) -> int:
    """Rows in the results file, counted without parsing them: the interrupt path must stay short
    on a loaded machine and a results file of thousands of rows."""
    try:
        with open(results, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def terminate_as_interrupt(signum, frame):
    """SIGTERM does what SIGINT does here (whatever handler the caller installed for it)."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signum, frame)
    raise KeyboardInterrupt


def run_sweep(
    sweep: Sweep,
    results: Path | str,
    force: bool = False,
    timeout_s: float | None = None,
    memory_limit_gb: float | None = None,
    cache_dir=None,
    progress: SweepProgress | None = None,
) -> SweepOutcome:
    """Run every configuration not yet measured; see the module docstring for what can go wrong."""
    progress = progress or SweepProgress()
    results = Path(results)
    timeout_s = timeout_s or sweep.limits.timeout_s
    outcome = SweepOutcome(results=results)
    configs = sweep_configurations(sweep, memory_limit_gb, outcome.notes, progress)
    outcome.planned = len(configs)
    present = skip_absent(configs, availability(configs), outcome, progress)
    done = set() if force else completed_keys(results)
    todo = [c for c in present if not is_measured(c, done)]
    outcome.done_before = len(present) - len(todo)
    if outcome.done_before:
        progress.log(
            f"{outcome.done_before} configurations already measured on this machine "
            f"({this_machine()['name']}) in {results} (skipped; --force measures them again)"
        )
    if todo:
        check_writable(results)  # fail before measuring, and leave no empty file when nothing runs
    costs = [c.cost() for c in todo]
    progress.start(sum(costs), len(todo))
    previous = signal.getsignal(signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, terminate_as_interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="slmbench-sweep-") as workdir:
            for index, (config, cost) in enumerate(zip(todo, costs, strict=True)):
                progress.begin(config)
                rows, error = run_configuration(
                    config, Path(workdir), index, timeout_s, cache_dir, progress.update
                )
                append_together(results, rows, outcome.rows)
                if error:
                    outcome.failed += 1
                else:
                    outcome.measured += 1
                progress.end(config, cost, error is None, error)
    except KeyboardInterrupt:
        kept = count_rows(results)
        raise SweepInterrupted(kept, len(outcome.rows), results) from None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return outcome


class RichSweepProgress(SweepProgress):
    """A rich progress bar over configurations, weighted by their rough cost, with an ETA."""

    def __init__(self, console):
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[done]}/{task.fields[count]} configurations"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[now]}"),
            console=console,
            transient=False,
        )
        self.task = None
        self.done = 0

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def start(self, total_cost, count):
        self.task = self.bar.add_task(
            "sweep",
            total=total_cost or 1,
            completed=0 if count else 1,
            done=0,
            count=count,
            now="" if count else "· nothing left to measure",
        )

    def begin(self, config):
        self.current = config.label
        self.started = time.monotonic()
        self.bar.update(self.task, now=f"· {config.label}")
        if not self.console.is_terminal:  # a log file gets a line where a terminal gets the bar
            self.console.print(f"{time.strftime('%H:%M:%S')} measuring {config.label}")

    def update(self, text):
        model, _, reps = text.rpartition(" ")
        self.bar.update(self.task, now=f"· {self.current} · {model} rep {reps}")

    def end(self, config, cost, ok, error):
        self.done += 1
        self.bar.update(self.task, advance=cost, done=self.done, now="")
        took = time.monotonic() - self.started
        if ok:
            self.console.print(
                f"[green]done[/green] {config.label} in {took:.0f}s "
                f"({self.done}/{self.bar.tasks[0].fields['count']})"
            )
        else:
            self.console.print(f"[red]failed[/red] {config.label} after {took:.0f}s: {error}")

    def log(self, message):
        self.console.print(message)
