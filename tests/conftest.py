"""Shared fixtures: one artifact cache per test session, so tiny models export once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(autouse=True)
def _isolated_cache(cache_dir, monkeypatch):
    """Nothing in the tests may write to the user's ~/.cache."""
    monkeypatch.setenv("SLMBENCH_CACHE_DIR", str(cache_dir))


@pytest.fixture(scope="session")
def tiny_onnx(cache_dir):
    from slmbench.exporters.onnx import onnx_artifact
    from slmbench.models import resolve_model

    return {name: onnx_artifact(resolve_model(name), cache_dir=cache_dir)[0] for name in ("mu-tiny", "deconly-tiny")}


@pytest.fixture
def quick_settings():
    from slmbench.config import RunSettings

    return RunSettings(input_len=16, output_len=6, warmup=1, min_reps=3, min_time_s=0.0)
