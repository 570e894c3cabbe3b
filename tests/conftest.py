"""Fixtures shared by the integration and e2e layers."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import (
    DynLLM,
    ModelDir,
    OvmsModelDir,
    live_pids_matching,
    wait_for,
    write_config,
)


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
    needle = str(tmp_path)  # backends name a model or config file under it
    try:
        wait_for(lambda: not live_pids_matching(needle), timeout=10)
    except AssertionError:
        leftover = live_pids_matching(needle)
        for pid in leftover:  # do not leak them into later tests
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"backends outlived DynLLM: {leftover}") from None


@pytest.fixture
def models(tmp_path: Path) -> ModelDir:
    return ModelDir(tmp_path / "models")


LLAMA_KNOBS = {
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
OVMS_KNOBS = {
    "servable",
    "load_delay",
    "never_ready",
    "fail_start",
    "exit_during_load",
    "tokens",
    "token_delay",
    "ignore_sigterm",
    "embedding_dim",
    "ovms_version",
}


def _entry(
    make_file: Callable[..., Path],
    backend: str,
    knob_keys: set[str],
    defaults: dict[str, Any],
    name: str,
    vram_mb: int,
    model_type: str,
    kw: dict[str, Any],
) -> dict[str, Any]:
    """A model config entry whose file (or folder) holds the fake backend's knobs."""
    knobs = {**defaults, **{k: kw.pop(k) for k in list(kw) if k in knob_keys}}
    path = make_file(name, **knobs)
    return {
        "name": name,
        "path": str(path),
        "backend": backend,
        "model_type": model_type,
        "vram_mb": vram_mb,
        **kw,
    }


@pytest.fixture
def spec(models: ModelDir) -> Callable[..., dict[str, Any]]:
    """``spec("a", vram_mb=300, load_delay=0.2)``: a model entry plus its fake model file."""

    def make(name: str, vram_mb: int = 100, model_type: str = "llm", **kw: Any) -> dict[str, Any]:
        return _entry(models.model, "llamacpp", LLAMA_KNOBS, {}, name, vram_mb, model_type, kw)

    return make


@pytest.fixture
def ovms_models(tmp_path: Path) -> OvmsModelDir:
    return OvmsModelDir(tmp_path / "ovms")


@pytest.fixture
def ov_spec(ovms_models: OvmsModelDir) -> Callable[..., dict[str, Any]]:
    """``ov_spec("phi", model_type="llm", load_delay=0.2)``: an OVMS model entry plus its dir."""

    def make(name: str, vram_mb: int = 100, model_type: str = "llm", **kw: Any) -> dict[str, Any]:
        # DynLLM's task-mode command line is the one OVMS accepts from 2026.2 on.
        defaults = {"ovms_version": "2026.2"}
        return _entry(
            ovms_models.model, "openvino", OVMS_KNOBS, defaults, name, vram_mb, model_type, kw
        )

    return make
