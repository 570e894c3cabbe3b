from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import DynLLM, ModelDir, live_pids_matching, wait_for, write_config


@pytest.fixture
def models(tmp_path: Path) -> ModelDir:
    return ModelDir(tmp_path / "models")


@pytest.fixture
def spec(models: ModelDir) -> Callable[..., dict[str, Any]]:
    """``spec("a", vram_mb=300, load_delay=0.2)``: a model entry plus its fake model file."""

    def make(name: str, vram_mb: int = 100, model_type: str = "llm", **kw: Any) -> dict[str, Any]:
        knob_keys = {
            "load_delay",
            "never_ready",
            "fail_start",
            "exit_during_load",
            "tokens",
            "token_delay",
            "crash_after_tokens",
            "ignore_sigterm",
            "embedding_dim",
        }
        knobs = {k: kw.pop(k) for k in list(kw) if k in knob_keys}
        path = models.model(name, **knobs)
        return {
            "name": name,
            "path": str(path),
            "backend": "llamacpp",
            "model_type": model_type,
            "vram_mb": vram_mb,
            **kw,
        }

    return make


@pytest.fixture
def dynllm(tmp_path: Path) -> Iterator[Callable[..., DynLLM]]:
    """Start DynLLM with a config; at the end stop it and check that no backend survives."""
    started: list[DynLLM] = []

    def start(model_specs: list[dict[str, Any]], **top: Any) -> DynLLM:
        cfg = write_config(tmp_path / "config.yaml", model_specs, **top)
        d = DynLLM(cfg).start()
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            assert d.stop(signal.SIGTERM) == 0, d.log()
    needle = str(tmp_path / "models")
    try:
        wait_for(lambda: not live_pids_matching(needle), timeout=10)
    except AssertionError:
        raise AssertionError(f"backends outlived DynLLM: {live_pids_matching(needle)}") from None
