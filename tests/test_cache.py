"""The artifact cache's housekeeping: exports in a fresh process before a measurement, and prune."""

import json
import os
import time
import warnings

import pytest
from click.testing import CliRunner

from slmbench.cli import cli
from slmbench.config import RunConfig
from slmbench.core import benchmark
from slmbench.core.child import ChildDied, in_fresh_process
from slmbench.exporters.artifact import ArtifactError, NotCached, cached_only, prune_cache
from slmbench.exporters.onnx import onnx_artifact
from slmbench.models import resolve_model


def _raise_artifact_error(text):
    raise ArtifactError(text)


def _warn_and_return(value):
    warnings.warn("from the child", UserWarning, stacklevel=1)
    return value * 2


def test_a_fresh_process_returns_results_exceptions_and_warnings_and_names_a_death():
    with pytest.warns(UserWarning, match="from the child"):
        assert in_fresh_process(_warn_and_return, 21) == 42
    with pytest.raises(ArtifactError, match="the same error"):
        in_fresh_process(_raise_artifact_error, "the same error")
    with pytest.raises(ChildDied, match="abort died without a result"):
        in_fresh_process(os.abort)


def test_cached_only_refuses_to_export_here(tmp_path):
    spec = resolve_model("mu-tiny")
    with cached_only(), pytest.raises(NotCached):
        onnx_artifact(spec, cache_dir=tmp_path)
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_a_measurement_exports_in_a_fresh_process_and_reuses_the_cache_after(tmp_path, monkeypatch):
    calls = []

    def spy(fn, *args):
        calls.append(fn.__name__)
        return in_fresh_process(fn, *args)
    monkeypatch.setattr(benchmark, "in_fresh_process", spy)
    config = RunConfig.create("deconly-tiny", "cpu", "onnxruntime", threads=1)
    spec = resolve_model("deconly-tiny")
    first = benchmark.prepare_and_load(config, spec, tmp_path, log=lambda m: None)
    assert calls == ["_export"] and not first.reused and first.artifact.path.parent == tmp_path
    again = benchmark.prepare_and_load(config, spec, tmp_path, log=lambda m: None)
    assert calls == ["_export"] and again.reused and again.artifact.path == first.artifact.path


def _fake_artifact(cache, name, model="mu-tiny", fmt="onnx", variant=None, age_s=0.0):
    path = cache / name
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({
        "schema": 1, "files": {}, "graphs": {}, "model": model, "format": fmt,
        "variant": variant or {"precision": "fp32"}}))
    (path / "graph.onnx").write_bytes(b"x" * 1000)
    made = time.time() - age_s
    os.utime(path / "manifest.json", (made, made))
    os.utime(path, (made, made))
    return path


def test_prune_keeps_the_newest_of_each_model_format_and_variant(tmp_path):
    old = _fake_artifact(tmp_path, "mu-tiny-onnx-old", age_s=7200)
    new = _fake_artifact(tmp_path, "mu-tiny-onnx-new", age_s=10)
    oldest = _fake_artifact(tmp_path, "mu-tiny-onnx-oldest", age_s=9000)
    other = _fake_artifact(tmp_path, "mu-tiny-onnx-int8", variant={"precision": "int8"}, age_s=9000)
    stateful = _fake_artifact(tmp_path, "mu-tiny-ov-a", fmt="openvino",
                              variant={"precision": "fp32", "mode": "stateful"})
    static = _fake_artifact(tmp_path, "mu-tiny-ov-b", fmt="openvino", variant={"precision": "fp32", "mode": "static"},
                            age_s=7200)
    broken = tmp_path / "not-an-artifact"
    broken.mkdir()
    killed = _fake_artifact(tmp_path, ".deconly-tiny-onnx-x.abc", age_s=2 * 3600)
    running = _fake_artifact(tmp_path, ".deconly-tiny-onnx-y.def", age_s=60)  # an export in progress

    planned = prune_cache(tmp_path, dry_run=True)
    assert all(p.exists() for p in (old, oldest, broken, killed))
    done = prune_cache(tmp_path)
    assert {e["path"] for e in planned["removed"]} == {e["path"] for e in done["removed"]}
    assert {os.path.basename(e["path"]) for e in done["removed"]} == {old.name, oldest.name, broken.name, killed.name}
    assert {os.path.basename(e["path"]) for e in done["kept"]} == {new.name, other.name, stateful.name, static.name}
    assert all(p.exists() for p in (new, other, stateful, static, running))
    assert not any(p.exists() for p in (old, oldest, broken, killed)) and done["freed_bytes"] >= 3000


def test_cache_prune_on_the_command_line(tmp_path):
    _fake_artifact(tmp_path, "a-old", age_s=100)
    _fake_artifact(tmp_path, "a-new")
    result = CliRunner().invoke(cli, ["cache", "prune", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0 and "removed 1 folders" in result.output and "kept 1 artifacts" in result.output
    assert not (tmp_path / "a-old").exists() and (tmp_path / "a-new").exists()
    file = tmp_path / "a-file"
    file.write_text("")
    bad = CliRunner().invoke(cli, ["cache", "prune", "--cache-dir", str(file)])
    assert bad.exit_code == 2 and bad.output.strip().startswith("error:") and len(bad.output.strip().splitlines()) == 1
