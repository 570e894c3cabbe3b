"""A real headless Chromium for browser tests: Debian's ``chromium`` and
``chromium-driver`` packages, driven by selenium.

Selenium is given the driver and browser paths, so selenium-manager never runs
and nothing is downloaded.  :func:`headless_chromium` yields a driver and, on
the way out, quits it, waits until chromedriver and every Chromium process it
started have exited (killing stragglers, and then failing), and removes the
throwaway profile.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from dynllm.process import process_table

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DEBIAN_PACKAGES = "chromium chromium-driver"

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


def _children() -> dict[int, list[int]]:
    """Parent PID -> child PIDs, for every live process."""
    tree: dict[int, list[int]] = {}
    for p in process_table():
        if p.state != "Z":
            tree.setdefault(p.ppid, []).append(p.pid)
    return tree


def _descendants(pid: int) -> set[int]:
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _mentioning(needle: str) -> set[int]:
    """Live processes whose command line contains ``needle`` (the profile folder)."""
    out = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and needle.encode() in raw:
            out.add(int(entry.name))
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def require_chromium() -> None:
    """Fail (never skip) with the packages to install when the browser is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        raise RuntimeError(
            f"browser tests need {' and '.join(missing)}: install the Debian packages "
            f"{DEBIAN_PACKAGES!r} (apt-get install -y {DEBIAN_PACKAGES})"
        )


@contextlib.contextmanager
def headless_chromium(timeout: float = 15.0) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile; every process of it is gone afterwards."""
    require_chromium()
    profile = tempfile.mkdtemp(prefix="dynllm-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    service = Service(str(CHROMEDRIVER))
    ours: set[int] = set()
    try:
        driver = webdriver.Chrome(service=service, options=options)
        try:
            driver.set_page_load_timeout(timeout)
            driver.set_script_timeout(timeout)
            yield driver
        finally:
            assert service.process is not None
            ours = {service.process.pid} | _descendants(service.process.pid)
            driver.quit()
    finally:
        ours |= _mentioning(profile)
        deadline = time.monotonic() + 10
        while _alive(ours) and time.monotonic() < deadline:
            time.sleep(0.05)
        leftover = _alive(ours)
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(profile, ignore_errors=True)
        if leftover:
            raise AssertionError(f"chromium processes outlived the driver: {sorted(leftover)}")
