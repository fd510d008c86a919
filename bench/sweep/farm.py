"""A sweep across a farm of hosts on Ray: `slmbench sweep FILE --ray ADDRESS`.

Each host joins the Ray cluster advertising custom resources (`node_resources`): one `slmbench-slot`,
so two measurements never share a host, and one resource per device and per device and runtime it
has (`slmbench-cpu`, `slmbench-cpu-onnxruntime`, ...). Each configuration becomes one Ray task that
needs a slot and its device and runtime; on the node it runs exactly as a local sweep runs it
(slmbench.sweep.run.run_configuration: its own process, timeout, memory limit), with the node's own
thread count and memory where the sweep leaves them to the machine. Rows come back to this driver,
which alone appends them (slmbench.results, the local sweep's lock and durability); each row carries
the machine identity of the node that measured it, and resume skips what a farm machine measured.

Faults: a node lost mid-configuration leaves failed rows (kind `node_lost`, the node's machine) and is
tried once more where another node has the device; a device and runtime no node has is reported once
and skipped (also when its last node is lost); Ctrl-C keeps every returned row and cancels the rest.
Ray is imported here only, and only when a farm sweep runs.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from slmbench.errors import BenchError, InvalidOption
from slmbench.host.environment import machine_identity
from slmbench.results import check_writable
from slmbench.sweep.files import Configuration, Sweep
from slmbench.sweep.run import (
    SweepInterrupted,
    SweepOutcome,
    SweepProgress,
    append_together,
    count_rows,
    failed_rows,
    is_measured,
    measured_keys,
    run_configuration,
    skip_absent,
    sweep_configurations,
    terminate_as_interrupt,
)

INSTALL = "pip install 'slmbench[farm]'"
SLOT = "slmbench-slot"
POLL_S = 0.5  # how often the driver looks at the farm (progress, lost nodes)
PROBE_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 5.0
# Ray's errors that mean the process running a configuration is gone (not that the configuration failed).
LOST = ("NodeDiedError", "LocalRayletDiedError", "WorkerCrashedError", "ObjectLostError", "OwnerDiedError",
        "ObjectReconstructionFailedError")


class FarmError(BenchError):
    """A farm that cannot run the sweep: unreachable, or with no slmbench nodes."""


def require_ray():
    """The ray module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InvalidOption(f"--ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


def device_resource(device: str, runtime: str | None = None) -> str:
    return f"slmbench-{device}" + (f"-{runtime}" if runtime else "")


def node_resources() -> dict[str, float]:
    """What this host advertises when it joins a farm: a slot, and each available device (and
    device-runtime pair) as `slmbench devices` finds them."""
    from slmbench.runners import device_table

    found = {SLOT: 1.0}
    for r in device_table():
        if r["available"]:
            found[device_resource(r["device"])] = 1.0
            found[device_resource(r["device"], r["runtime"])] = 1.0
    return dict(sorted(found.items()))


def join_command(address: str | None) -> list[str]:
    """`ray start` for this host: joining ADDRESS, or as the head when None. num-cpus 0 keeps
    other Ray work off a host that measures; the slot keeps a second measurement off it."""
    where = ["--head"] if address is None else ["--address", address]
    return ["ray", "start", *where, "--num-cpus", "0", "--resources", json.dumps(node_resources())]


# ---------------------------------------------------------------- on a node


def _probe() -> dict:
    """Runs on each node: what it is, and what a configuration left to the machine gets there."""
    from slmbench.host.cpus import default_threads
    from slmbench.host.environment import environment
    from slmbench.sweep.files import default_memory_limit

    return {"environment": environment(), "threads": default_threads(), "cpu_memory_gb": default_memory_limit("cpu")}


def _measure(config: Configuration, index: int, token: str, timeout_s: float, cache_dir, board, follow_threads: bool,
             follow_memory: bool) -> tuple:
    """Runs on a node: the configuration as a local sweep runs it, its progress told to the board."""
    import ray

    here = _probe()
    ray.get(board.begin.remote(token, ray.get_runtime_context().get_node_id()))
    config = config.on_host(here["threads"] if follow_threads else None,
                            here["cpu_memory_gb"] if follow_memory and config.device == "cpu" else None)
    with tempfile.TemporaryDirectory(prefix="slmbench-farm-") as workdir:
        return run_configuration(config, Path(workdir), index, timeout_s, cache_dir,
                                 lambda text: board.update.remote(token, text))


class _Board:
    """A Ray actor on the driver's node: which node runs each task, and its last progress line."""

    def __init__(self):
        self.state: dict[str, dict] = {}

    def begin(self, token: str, node_id: str) -> None:
        self.state[token] = {"node": node_id, "now": ""}

    def update(self, token: str, text: str) -> None:
        self.state.setdefault(token, {"node": None})["now"] = text

    def read(self) -> dict:
        return self.state


# ---------------------------------------------------------------- the driver


@dataclass(frozen=True)
class Node:
    node_id: str
    resources: dict
    environment: dict
    threads: int
    cpu_memory_gb: float | None

    @property
    def machine(self) -> dict:
        return machine_identity(self.environment)

    def has(self, config: Configuration) -> bool:
        return self.resources.get(device_resource(config.device, config.runtime), 0) >= 1


@dataclass
class _Task:
    config: Configuration
    index: int
    cost: float
    attempt: int = 0
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


class FarmProgress(SweepProgress):
    """Progress across the farm; by default each node's start and end go to the one-stream callbacks."""

    def running(self, machine: str, config: Configuration, text: str) -> None:
        """What a node measures now (`text`: the model and repetitions done, or empty at its start)."""

    def finished(self, machine: str, config: Configuration, cost: float, ok: bool, error: str | None) -> None:
        self.end(config, cost, ok, error)


def _alive(ray) -> dict[str, dict]:
    """The farm's measuring nodes Ray reports alive (those with a slot), by node id."""
    return {n["NodeID"]: n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(SLOT)}


def discover(ray, log=lambda message: None) -> list[Node]:
    """The farm's measuring nodes, each probed for its machine identity. A node that leaves the
    cluster while it is probed (Ray lists a removed node as alive for a moment; its probe is then
    unschedulable) is left out and logged; one that stays but cannot be reached fails the farm in
    one line."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    alive = list(_alive(ray).values())
    if not alive:
        raise FarmError("no node of the Ray cluster advertises slmbench resources; join each host with "
                        "`slmbench farm join ADDRESS` (README, section 'A device farm')")
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in alive]
    ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    nodes = []
    for n, ref in zip(alive, refs, strict=True):
        try:
            found = ray.get(ref, timeout=0)
        except Exception as exc:  # noqa: BLE001 - any Ray failure here is the farm's, said in one line
            gone = (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError)  # its node no longer exists
            if isinstance(exc, gone) or n["NodeID"] not in _alive(ray):
                log(f"node {n['NodeID'][:12]} left the farm while it was probed: left out")
                continue
            raise FarmError(f"could not reach every farm node within {PROBE_TIMEOUT_S:g}s: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:300]}") from None
        nodes.append(Node(n["NodeID"], dict(n["Resources"]), found["environment"], found["threads"],
                          found["cpu_memory_gb"]))
    if not nodes:
        raise FarmError("every farm node left the cluster while it was probed")
    return nodes


def as_on(config: Configuration, node: Node, follow_threads: bool) -> Configuration:
    """The configuration as `node` runs it (what its rows' keys are there): with the node's thread
    count when the sweep leaves threads to the machine."""
    return config.on_host(node.threads if follow_threads else None, None)


def _reachable(address: str) -> str:
    """Why HOST:PORT cannot be reached, or empty: ray.init retries an unreachable head for minutes
    (docs/environment.md)."""
    import socket

    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not host or not port.isdigit():
        return ""  # auto finds the local cluster (or fails at once); ray:// is Ray Client's
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return ""


def _connect(ray, address: str) -> bool:
    """Connect this driver to the farm (quietly); False when it already was (the caller keeps it)."""
    if ray.is_initialized():
        return False
    fix = "start one with `slmbench farm join --head` (README, section 'A device farm')"
    if why := _reachable(address):
        raise FarmError(f"cannot reach the Ray cluster at {address!r}: {why}; {fix}")
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise FarmError(f"cannot connect to the Ray cluster at {address!r}: {' '.join(str(exc).split())[:300]}; "
                        f"{fix}") from None
    return True


def run_farm_sweep(
    sweep: Sweep,
    results: Path | str,
    address: str = "auto",
    force: bool = False,
    timeout_s: float | None = None,
    memory_limit_gb: float | None = None,
    cache_dir=None,
    progress: FarmProgress | None = None,
) -> SweepOutcome:
    """Run the sweep's configurations not yet measured by a farm machine, across the farm."""
    import signal
    import threading

    ray = require_ray()
    progress = progress or FarmProgress()
    results = Path(results)
    timeout_s = timeout_s or sweep.limits.timeout_s
    outcome = SweepOutcome(results=results)
    follow = (sweep.grid.threads is None, memory_limit_gb is None and sweep.limits.memory_limit_gb is None)
    configs = sweep_configurations(sweep, memory_limit_gb, outcome.notes, progress)
    outcome.planned = len(configs)
    connected = _connect(ray, address)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    if in_main:
        signal.signal(signal.SIGTERM, terminate_as_interrupt)
    try:
        nodes = discover(ray, progress.log)
        names = ", ".join(n.machine["name"] for n in nodes)
        absent = {(c.device, c.runtime): f"no node of the farm has it ({len(nodes)} nodes: {names})"
                  for c in configs if not any(n.has(c) for n in nodes)}
        present = skip_absent(configs, absent, outcome, progress)
        done = {} if force else measured_keys(results)
        todo = [c for c in present if not any(
            n.has(c) and is_measured(as_on(c, n, follow[0]), done.get(n.machine["id"], set())) for n in nodes)]
        outcome.done_before = len(present) - len(todo)
        if outcome.done_before:
            progress.log(f"{outcome.done_before} configurations already measured by machines of this farm in "
                         f"{results} (skipped; --force measures them again)")
        if todo:
            check_writable(results)
        tasks = [_Task(c, i, c.cost()) for i, c in enumerate(todo)]
        progress.start(sum(t.cost for t in tasks), len(tasks))
        if tasks:
            _Farm(ray, nodes, results, timeout_s, cache_dir, progress, outcome, follow).run(tasks)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        if connected:
            ray.shutdown()
    return outcome


class _Farm:
    """The driver's loop: submit, watch, append what returns, handle lost nodes, Ctrl-C."""

    def __init__(self, ray, nodes, results, timeout_s, cache_dir, progress, outcome, follow):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray, self.results, self.timeout_s, self.cache_dir = ray, results, timeout_s, cache_dir
        self.progress, self.outcome, self.follow = progress, outcome, follow
        self.nodes = {n.node_id: n for n in nodes}
        self.lost: set[str] = set()
        self.stranded: set[tuple[str, str]] = set()
        here = ray.get_runtime_context().get_node_id()
        self.board = ray.remote(num_cpus=0, max_restarts=0)(_Board).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
        self.measure = ray.remote(num_cpus=0, max_retries=0, retry_exceptions=False)(_measure)
        self.pending: dict = {}
        self.shown: dict[str, tuple] = {}

    def submit(self, task: _Task) -> None:
        needs = {SLOT: 1, device_resource(task.config.device, task.config.runtime): 1}
        ref = self.measure.options(resources=needs).remote(task.config, task.index, task.token, self.timeout_s,
                                                           self.cache_dir, self.board, *self.follow)
        self.pending[ref] = task

    def run(self, tasks: list[_Task]) -> None:
        for task in tasks:
            self.submit(task)
        board: dict = {}
        try:
            while self.pending:
                ready, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=POLL_S)
                try:
                    board = self.ray.get(self.board.read.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - the board only shows progress; the last view serves
                    pass
                self.show(board)
                for ref in ready:
                    self.collect(ref, board)
                self.check_stranded()
        except KeyboardInterrupt:
            self.interrupt()

    def there(self, task: _Task, node: Node | None) -> Configuration:
        """The task's configuration as its node ran it (its keys there)."""
        return as_on(task.config, node, self.follow[0]) if node else task.config

    def node_of(self, task: _Task, board: dict) -> Node | None:
        node_id = (board.get(task.token) or {}).get("node")
        if node_id and node_id not in self.nodes:  # a host that joined during the sweep: probe the farm again
            self.nodes.update({n.node_id: n for n in discover(self.ray)})
        return self.nodes.get(node_id)

    def show(self, board: dict) -> None:
        for task in self.pending.values():
            node = self.node_of(task, board)
            if node is not None:
                now = (node.node_id, board[task.token].get("now", ""))
                if self.shown.get(task.token) != now:
                    self.shown[task.token] = now
                    self.progress.running(node.machine["name"], task.config, now[1])

    def collect(self, ref, board: dict) -> None:
        task = self.pending.pop(ref)
        node = self.node_of(task, board)
        try:
            rows, error = self.ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - Ray's errors are sorted by name: lost, or failed
            if type(exc).__name__ in LOST:
                self.lost_task(task, node, exc)
                return
            error = f"the farm task failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
            rows = failed_rows(self.there(task, node), error, {"kind": "error"}, env=node.environment if node else None)
        self.append(task, node, rows, error)

    def append(self, task: _Task, node: Node | None, rows: list[dict], error: str | None) -> None:
        append_together(self.results, rows, self.outcome.rows)
        if error:
            self.outcome.failed += 1
        else:
            self.outcome.measured += 1
        self.progress.finished(node.machine["name"] if node else "?", task.config, task.cost, error is None, error)

    def lost_task(self, task: _Task, node: Node | None, exc: Exception) -> None:
        """A node (or the Ray worker on it) died under a configuration: failed rows on that node's
        machine, then one retry wherever another node has the device."""
        kind = "worker_lost" if type(exc).__name__ == "WorkerCrashedError" else "node_lost"
        if kind == "node_lost" and node is not None:
            self.lost.add(node.node_id)
        where = node.machine["name"] if node else "a node that had not started it"
        what = "node" if kind == "node_lost" else "Ray worker"
        error = f"{what} lost while measuring on {where} ({type(exc).__name__})"
        others = [n for n in self.nodes.values() if n.node_id not in self.lost and n.has(task.config)]
        again = task.attempt == 0 and bool(others)
        if node is not None:  # it had begun: the attempt is recorded, on the machine it was on
            failure = {"kind": kind, "node": node.node_id, "ray_error": type(exc).__name__, "retried": again}
            self.append(task, node, failed_rows(self.there(task, node), error, failure, env=node.environment), error)
        if again:
            self.progress.log(f"{error}: measuring {task.config.label} again elsewhere")
            self.submit(_Task(task.config, task.index, task.cost, task.attempt + 1))
        elif task.attempt:
            self.progress.log(f"{error}: {task.config.label} was already retried once; not again")
        else:
            self.progress.log(f"{error}: no other node has {task.config.runtime} on {task.config.device}")

    def check_stranded(self) -> None:
        """Cancel configurations no live node can run any more (their last node was lost), once each pair."""
        alive = {n["NodeID"] for n in self.ray.nodes() if n.get("Alive")} - self.lost
        for ref, task in list(self.pending.items()):
            pair = (task.config.device, task.config.runtime)
            if any(n.node_id in alive and n.has(task.config) for n in self.nodes.values()):
                continue
            self.ray.cancel(ref, force=True)
            del self.pending[ref]
            if pair not in self.stranded:
                self.stranded.add(pair)
                n = 1 + sum(1 for t in self.pending.values() if (t.config.device, t.config.runtime) == pair)
                line = f"skipping {n} configurations of {pair[1]} on {pair[0]}: no live node of the farm has it now"
                self.outcome.skipped.append(line)
                self.progress.log(line)

    def interrupt(self) -> None:
        """Ctrl-C: keep whatever already returned, cancel the rest (their processes die with them)."""
        try:
            refs = list(self.pending)
            ready = self.ray.wait(refs, num_returns=len(refs), timeout=0)[0] if refs else []
            for ref in ready:
                self.pending.pop(ref)
                try:
                    rows, error = self.ray.get(ref, timeout=5)
                except Exception:  # noqa: BLE001 - lost or failed at the last moment: not measured
                    continue
                append_together(self.results, rows, self.outcome.rows)
        finally:
            for ref in self.pending:
                self.ray.cancel(ref, force=True)
            self.pending.clear()
        raise SweepInterrupted(count_rows(self.results), len(self.outcome.rows), self.results) from None


class RichFarmProgress(FarmProgress):
    """The sweep's bar (cost-weighted ETA over the whole farm) and one line per node: what it
    measures now and how many configurations it finished."""

    def __init__(self, console):
        from slmbench.sweep.run import RichSweepProgress

        self.sweep = RichSweepProgress(console)
        self.console, self.bar = console, self.sweep.bar
        self.nodes: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.began: dict[str, float] = {}

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def start(self, total_cost, count):
        self.sweep.start(total_cost, count)
        self.count = count

    def _line(self, machine: str) -> int:
        if machine not in self.nodes:
            self.nodes[machine] = self.bar.add_task(f"  {machine}", total=None, done=0, count=self.count, now="")
            self.done[machine] = 0
        return self.nodes[machine]

    def running(self, machine, config, text):
        if config.label not in self.began:
            self.began[config.label] = time.monotonic()
            if not self.console.is_terminal:
                self.console.print(f"{time.strftime('%H:%M:%S')} measuring {config.label} on {machine}")
        self.bar.update(self._line(machine), now=f"· {config.label}" + (f" · {text}" if text else ""))

    def finished(self, machine, config, cost, ok, error):
        self.sweep.done += 1
        self.bar.update(self.sweep.task, advance=cost, done=self.sweep.done)
        if machine != "?":  # a node seen (a task that never began has none)
            self.done[machine] = self.done.get(machine, 0) + 1
            self.bar.update(self._line(machine), done=self.done[machine], now="")
        took = time.monotonic() - self.began.pop(config.label, time.monotonic())
        if ok:
            self.console.print(f"[green]done[/green] {config.label} on {machine} in {took:.0f}s "
                               f"({self.sweep.done}/{self.count})")
        else:
            self.console.print(f"[red]failed[/red] {config.label} on {machine} after {took:.0f}s: {error}")

    def log(self, message):
        self.console.print(message)
