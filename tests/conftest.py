"""Fixtures shared by the integration and e2e layers."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import DynLLM, live_pids_matching, wait_for, write_config


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
