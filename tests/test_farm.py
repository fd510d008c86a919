"""Sweeps across a farm on Ray (slmbench.sweep.farm), on a local two-node Ray cluster.

Both nodes are this one VM, so each is given its own SLMBENCH_MACHINE_LABEL (the node-level override
slmbench.host.environment documents for exactly this): their rows carry two machine identities,
and each row's identity is checked against the label of the node that measured it. The nodes
differ in their resources too: only node "a" advertises OpenVINO, and neither has CUDA.
"""

import subprocess
import sys
import time
import tomllib
from types import SimpleNamespace

import psutil
import pytest
from click.testing import CliRunner

from slmbench.cli import cli
from slmbench.host.environment import machine_identity
from slmbench.report.frames import build
from slmbench.results import read_rows
from slmbench.sweep.files import parse_sweep
from slmbench.sweep.run import SweepInterrupted, run_sweep

SLOW = {"warmup": 0, "min_reps": 40, "min_time_s": 3.0, "max_reps": 400}  # long enough to be killed mid-way


TOML = """
name = "farm"
[grid]
models = ["mu-tiny", "deconly-tiny"]
input_lens = [16, 32]
output_lens = [6]
devices = ["cpu", "cuda"]
runtimes = ["onnxruntime"]
[repetitions]
warmup = 0
min_reps = 2
min_time_s = 0.0
max_reps = 5
[limits]
timeout_s = 120
memory_limit_gb = 8
"""


def ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def farm_sweep(tmp_path, grid=None, **repetitions):
    """The tiny pair at two input lengths on CPU and CUDA (which no node has), quick repetitions."""
    data = tomllib.loads(TOML)
    return parse_sweep({**data, "grid": {**data["grid"], **(grid or {})},
                        "repetitions": {**data["repetitions"], **repetitions}}, str(tmp_path / "farm.toml"))


def node_resources(openvino: bool) -> dict:
    res = {"slmbench-slot": 1, "slmbench-cpu": 1, "slmbench-cpu-onnxruntime": 1}
    return {**res, "slmbench-cpu-openvino": 1} if openvino else res


def alive(processes) -> list[str]:
    out = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{proc.pid} {proc.name()}")
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def farm(cache_dir):
    """A head ("a") and a worker ("b"), the driver connected; every Ray process ends with the module."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'slmbench[farm]')")
    from ray.cluster_utils import Cluster

    env = {"SLMBENCH_CACHE_DIR": str(cache_dir)}
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. an earlier test's resource tracker
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "resources": node_resources(openvino=True),
        "env_vars": {**env, "SLMBENCH_MACHINE_LABEL": "node-a"}})
    nodes = {"a": cluster.head_node}
    nodes["b"] = cluster.add_node(num_cpus=0, resources=node_resources(openvino=False),
                                  env_vars={**env, "SLMBENCH_MACHINE_LABEL": "node-b"})
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    try:
        yield cluster, nodes
    finally:
        # the cluster's processes, workers included: this process's children it did not have before
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert any("raylet" in p.name() for p in started)
        ray.shutdown()
        cluster.shutdown()
        deadline = time.monotonic() + 15
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(started), f"Ray processes survived the farm: {alive(started)}"


def label(row) -> str:
    return row["environment"].get("machine_label")


def ok_keys(rows) -> list[tuple[str, str]]:
    return sorted((r["key"], label(r)) for r in rows if r["status"] == "ok")


class Recorder:
    """A FarmProgress that records what the farm tells it and can act on it."""

    def __init__(self, on_running=None, on_finished=None):
        from slmbench.sweep.farm import FarmProgress

        class _P(FarmProgress):
            def running(p, machine, config, text):
                self.running.append((machine, config.label, text))
                if on_running:
                    on_running(machine, config, text)

            def finished(p, machine, config, cost, ok, error):
                self.finished.append((machine, config.label, ok))
                if on_finished:
                    on_finished(machine, config, ok)

            def log(p, message):
                self.logs.append(message)

        self.running, self.finished, self.logs = [], [], []
        self.progress = _P()


def test_the_grid_splits_across_both_nodes_and_equals_a_local_sweep(farm, tmp_path, cache_dir):
    from slmbench.sweep.farm import run_farm_sweep

    local = run_sweep(farm_sweep(tmp_path), tmp_path / "local.jsonl", cache_dir=cache_dir)
    seen = Recorder()
    out = run_farm_sweep(farm_sweep(tmp_path), tmp_path / "farm.jsonl", cache_dir=cache_dir, progress=seen.progress)
    local_rows, farm_rows = read_rows([tmp_path / "local.jsonl"]), read_rows([tmp_path / "farm.jsonl"])
    assert local.measured == out.measured == 2 and out.failed == 0
    assert sorted(r["key"] for r in farm_rows) == sorted(r["key"] for r in local_rows)  # identity and count
    assert len(farm_rows) == 4 and all(r["status"] == "ok" for r in farm_rows)
    assert {label(r) for r in farm_rows} == {"node-a", "node-b"}  # split across both nodes
    for row in farm_rows:  # the identity each row carries is its node's, computed from its own environment
        assert row["machine"] == machine_identity(row["environment"])
        assert label(row) in row["machine"]["name"]
    assert len({r["machine"]["id"] for r in farm_rows}) == 2
    assert sum(1 for r in farm_rows if label(r) == "node-a") == 2  # each node measured one pair
    assert {m for m, _, _ in seen.finished} == {r["machine"]["name"] for r in farm_rows}
    # CUDA: no node has it, said once, nothing submitted; the local sweep says the same of this host.
    assert len(out.skipped) == 1 and "onnxruntime on cuda" in out.skipped[0] and "no node of the farm" in out.skipped[0]
    assert len(local.skipped) == 1 and "cuda" in local.skipped[0]
    # The report over the farm's rows: the machines side by side, a panel per device and machine.
    data = build(farm_rows)
    assert len(data.machines) == 2 and set(data.configs["platform"]) == {f"cpu @ {m}" for m in data.machines["machine"]}
    # Resume, through the CLI: the farm skips what its machines measured (each machine's rows are its own).
    sweep_file = tmp_path / "farm.toml"
    sweep_file.write_text(TOML)
    out = CliRunner().invoke(cli, ["sweep", str(sweep_file), "--results", str(tmp_path / "farm.jsonl"),
                                   "--cache-dir", str(cache_dir), "--ray", ray_address()])
    assert out.exit_code == 0, out.output
    assert "2 already done" in out.output and len(read_rows([tmp_path / "farm.jsonl"])) == 4


def test_ctrl_c_keeps_returned_rows_cancels_the_rest_and_resume_finishes(farm, tmp_path, cache_dir):
    """Three pairs on two nodes, Ctrl-C when the first returns: the third cannot have finished."""
    from slmbench.sweep.farm import run_farm_sweep

    results = tmp_path / "r.jsonl"
    three = {"input_lens": [16, 32, 64]}

    def interrupt(machine, config, ok):
        raise KeyboardInterrupt

    seen = Recorder(on_finished=interrupt)
    with pytest.raises(SweepInterrupted):
        run_farm_sweep(farm_sweep(tmp_path, three, min_reps=3), results, cache_dir=cache_dir, progress=seen.progress)
    kept = read_rows([results])
    assert len(kept) in (2, 4) and all(r["status"] == "ok" for r in kept)  # the first pair (and the second's, if it
    assert len({r["key"] for r in kept}) == len(kept)                      # returned in the same instant)
    rest = run_farm_sweep(farm_sweep(tmp_path, three, min_reps=3), results, cache_dir=cache_dir)
    rows = read_rows([results])
    assert rest.done_before == len(kept) // 2 and rest.measured == 3 - len(kept) // 2
    assert len(rows) == 6 and len({r["key"] for r in rows}) == 6  # nothing lost, nothing twice


def test_a_node_lost_mid_configuration_gives_a_failed_row_and_one_retry_elsewhere(farm, tmp_path, cache_dir):
    """Last in this file: it kills node b."""
    from slmbench.sweep.farm import run_farm_sweep

    cluster, nodes = farm
    b_name = []

    def kill_b(machine, config, text):
        if "node-b" in machine and text and not b_name:  # a repetition done on b: mid-measurement
            b_name.append(machine)
            cluster.remove_node(nodes["b"], allow_graceful=False)

    seen = Recorder(on_running=kill_b)
    results = tmp_path / "r.jsonl"
    out = run_farm_sweep(farm_sweep(tmp_path, **SLOW), results, cache_dir=cache_dir, progress=seen.progress)
    rows = read_rows([results])
    failed = [r for r in rows if r["status"] == "failed"]
    assert b_name and len(failed) == 2, [r.get("error") for r in failed]  # the pair b was measuring
    assert {r["failure"]["kind"] for r in failed} == {"node_lost"} and {label(r) for r in failed} == {"node-b"}
    assert all(r["failure"]["retried"] and r["machine"]["name"] == b_name[0] for r in failed)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4 and len({r["key"] for r in ok}) == 4  # nothing lost, nothing duplicated
    assert {label(r) for r in ok} == {"node-a"}  # the retry ran elsewhere: on a, the only node left
    assert {r["key"] for r in failed} <= {r["key"] for r in ok}
    assert out.measured == 2 and out.failed == 1
    assert any("again elsewhere" in line for line in seen.logs)


def test_the_last_node_with_a_device_lost_fails_its_configuration_and_skips_the_rest(farm, tmp_path, cache_dir):
    """After the test above: node c alone has PyTorch; lost mid-configuration, nothing waits forever."""
    from slmbench.sweep.farm import run_farm_sweep

    cluster, nodes = farm
    torch_only = {"slmbench-slot": 1, "slmbench-cpu": 1, "slmbench-cpu-torch": 1}
    nodes["c"] = cluster.add_node(num_cpus=0, resources=torch_only,
                                  env_vars={"SLMBENCH_CACHE_DIR": str(cache_dir), "SLMBENCH_MACHINE_LABEL": "node-c"})
    killed = []

    def kill_c(machine, config, text):
        if "node-c" in machine and text and not killed:
            killed.append(machine)
            cluster.remove_node(nodes["c"], allow_graceful=False)

    seen = Recorder(on_running=kill_c)
    out = run_farm_sweep(farm_sweep(tmp_path, {"runtimes": ["torch"], "devices": ["cpu"]}, **SLOW),
                         tmp_path / "r.jsonl", cache_dir=cache_dir, progress=seen.progress)
    rows = read_rows([tmp_path / "r.jsonl"])
    assert killed and len(rows) == 2 and all(r["status"] == "failed" for r in rows)  # the pair c was measuring
    assert all(r["failure"]["kind"] == "node_lost" and not r["failure"]["retried"] for r in rows)
    assert {label(r) for r in rows} == {"node-c"} and out.failed == 1 and out.measured == 0
    assert any("no other node has torch on cpu" in line for line in seen.logs)
    assert len(out.skipped) == 1 and "1 configurations of torch on cpu" in out.skipped[0]


def test_a_node_leaving_while_it_is_probed_is_left_out(farm, cache_dir):
    """Ray lists a removed node as alive for a moment, and its probe is then unschedulable: discovery
    leaves it out (in one log line when it saw it) instead of failing the whole farm."""
    import ray

    from slmbench.sweep.farm import discover

    cluster, nodes = farm
    leaving = cluster.add_node(num_cpus=0, resources=node_resources(openvino=False),
                               env_vars={"SLMBENCH_CACHE_DIR": str(cache_dir), "SLMBENCH_MACHINE_LABEL": "node-d"})
    cluster.remove_node(leaving, allow_graceful=False)
    logs = []
    found = discover(ray, logs.append)
    assert found and leaving.node_id not in {n.node_id for n in found}
    assert all("left the farm while it was probed" in line for line in logs)


class ListedRay:
    """Ray's API as discover() uses it, with each node's probe outcome chosen: the race above happens
    only when Ray still lists the removed node, so its branch is checked here every time."""

    def __init__(self, ray, outcomes: dict):
        from slmbench.sweep.farm import SLOT

        self.exceptions, self.outcomes = ray.exceptions, outcomes
        self.listed = [{"NodeID": node, "Alive": True, "Resources": {SLOT: 1.0}} for node in outcomes]

    def nodes(self):
        return self.listed

    def remote(self, **_):
        """A probe whose ref is the id of the node it was pinned to."""
        pinned = lambda scheduling_strategy: SimpleNamespace(remote=lambda: scheduling_strategy.node_id)  # noqa: E731
        return lambda _fn: SimpleNamespace(options=pinned)

    def wait(self, refs, num_returns, timeout):
        return refs, []

    def get(self, node, timeout):
        outcome = self.outcomes[node]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def test_discovery_leaves_out_a_listed_node_whose_probe_cannot_be_scheduled_and_fails_on_an_unreachable_one():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'slmbench[farm]')")
    from slmbench.sweep.farm import FarmError, discover

    probed = {"environment": {"machine": {"name": "node-a"}}, "threads": 2, "cpu_memory_gb": 8.0}
    gone = ray.exceptions.TaskUnschedulableError("node is dead")
    logs = []
    found = discover(ListedRay(ray, {"a" * 56: probed, "d" * 56: gone}), logs.append)
    assert [n.node_id for n in found] == ["a" * 56]
    assert logs == [f"node {'d' * 12} left the farm while it was probed: left out"]
    with pytest.raises(FarmError, match="could not reach every farm node"):
        discover(ListedRay(ray, {"a" * 56: probed, "b" * 56: ray.exceptions.GetTimeoutError("slow")}))
    with pytest.raises(FarmError, match="every farm node left"):
        discover(ListedRay(ray, {"d" * 56: gone}))


def test_sweep_ray_without_ray_says_how_to_install_it(tmp_path):
    """Ray hidden from a fresh interpreter: one line, exit 2, no traceback."""
    code = ("import sys; sys.modules['ray'] = None\n"
            "from slmbench.cli import main; sys.argv = ['slmbench', 'sweep', 'quick', '--ray']; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'slmbench[farm]'" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_farm_join_prints_the_ray_start_line_from_this_hosts_devices():
    import json

    from slmbench.runners import device_table

    out = CliRunner().invoke(cli, ["farm", "join", "head:6379", "--print"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("ray start --address head:6379 --num-cpus 0 --resources ")
    resources = json.loads(out.output.split("--resources ", 1)[1].strip().strip("'"))
    expected = {f"slmbench-{r['device']}-{r['runtime']}" for r in device_table() if r["available"]}
    assert resources["slmbench-slot"] == 1 and expected <= set(resources) and "slmbench-cpu" in resources
    bad = CliRunner().invoke(cli, ["farm", "join"])
    assert bad.exit_code == 2 and "--head" in bad.output


def test_a_machine_label_joins_the_identity_only_when_set(monkeypatch):
    from slmbench.host import environment as env_module

    env = {k: v for k, v in env_module.environment().items() if k != "machine_label"}
    assert "machine_label" not in env_module.fingerprint(env)  # unlabelled identities are what they were
    labelled = machine_identity({**env, "machine_label": "node-x"})
    assert labelled["id"] != machine_identity(env)["id"] and ".node-x" in labelled["name"]
    monkeypatch.setenv(env_module.LABEL_ENV, "node-x")
    env_module.environment.cache_clear()
    try:
        assert env_module.this_machine() == labelled
        assert env_module.environment()["machine_label"] == "node-x"
    finally:
        monkeypatch.delenv(env_module.LABEL_ENV)
        env_module.environment.cache_clear()
