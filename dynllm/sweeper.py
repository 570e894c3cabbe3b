"""The daemon thread that unloads idle models."""

from __future__ import annotations

import logging
import threading

from .registry import ModelRegistry

log = logging.getLogger("dynllm.sweeper")

#: Seconds between idle sweeps.
SWEEP_INTERVAL = 30.0


class Sweeper:
    def __init__(self, registry: ModelRegistry, interval: float = SWEEP_INTERVAL) -> None:
        self._registry = registry
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                unloaded = self._registry.sweep()
                if unloaded:
                    log.debug("idle sweep unloaded %s", unloaded)
            except Exception:  # keep sweeping; one bad pass must not end the loop
                log.exception("idle sweep failed")
