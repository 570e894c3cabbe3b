"""``dynllm``: load the config, heal state, preload, serve with waitress, stop cleanly."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sqlite3
import sys
import threading
from pathlib import Path
from types import FrameType

from . import __version__, auth, torchinfo
from .config import (
    Config,
    ConfigError,
    default_config,
    load_config,
    max_concurrent_models,
    warnings_for,
)
from .errors import DynLLMError
from .notify import notify

log = logging.getLogger("dynllm")

DEFAULT_CONFIG = Path("config.yaml")


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dynllm",
        description="OpenAI-compatible proxy that starts local inference backends on demand.",
    )
    p.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        help="YAML config file (default: ./config.yaml if present, else a built-in empty config)",
    )
    p.add_argument("--host", help="bind address (overrides server.host)")
    p.add_argument("--port", type=_port, help="listen port (overrides server.port; 0 = any free)")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="overrides log_level",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config, print a summary and exit (0 valid, 1 invalid)",
    )
    p.add_argument("--version", action="version", version=f"dynllm {__version__}")
    return p


def resolve_config(path: str | None) -> tuple[Config, str]:
    """The config to use and a description of where it came from."""
    if path:
        return load_config(path), str(Path(path).resolve())
    if DEFAULT_CONFIG.is_file():
        return load_config(DEFAULT_CONFIG), str(DEFAULT_CONFIG.resolve())
    return default_config(), "built-in default (no models)"


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _fmt_timeout(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds:g}s"


def summary(cfg: Config, source: str, warnings: list[str]) -> str:
    """What ``--check`` prints."""
    lines = [
        f"config: {source}",
        f"listen: {cfg.server.host}:{cfg.server.port} ({cfg.server.threads} threads)",
        f"state db: {cfg.db_path}",
        f"backend logs: {cfg.log_dir()}",
        f"enabled backends: {', '.join(cfg.enabled_backends)}",
        f"VRAM budget: {cfg.total_vram_mb} MB; up to "
        f"{max_concurrent_models(cfg.models, cfg.total_vram_mb)} model(s) resident at once",
        f"ports: {cfg.backend.port_range_start}-{cfg.backend.port_range_end}",
        f"models ({len(cfg.models)}):",
    ]
    for m in cfg.models:
        lines.append(
            f"  {m.name}: {m.backend}/{m.model_type}, {m.vram_mb} MB, "
            f"idle unload {_fmt_timeout(cfg.idle_timeout_for(m))}, {m.path}"
        )
    if cfg.preload_models:
        lines.append(f"preload: {', '.join(cfg.preload_models)}")
    if warnings:
        lines.append(f"warnings ({len(warnings)}):")
        lines.extend(f"  - {w}" for w in warnings)
    lines.append("config OK")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, source = resolve_config(args.config)
    except ConfigError as exc:
        print(f"dynllm: {exc}", file=sys.stderr)
        return 1
    if args.host:
        cfg.server.host = args.host
    if args.port is not None:
        cfg.server.port = args.port
    if args.log_level:
        cfg.log_level = args.log_level
    warnings = warnings_for(cfg)
    if args.check:
        print(summary(cfg, source, warnings))
        return 0
    setup_logging(cfg.log_level)
    log.info("dynllm %s, config: %s", __version__, source)
    for w in warnings:
        log.warning("config: %s", w)
    auth.warn_if_open(cfg)
    if not cfg.models:
        log.info(
            "no models configured: copy config.example.yaml to config.yaml, add models "
            "and restart (or pass --config PATH)"
        )
    torch_check = torchinfo.report_in_background(cfg)
    try:
        return serve(cfg)
    finally:
        torch_check.stop()  # its child must not outlive DynLLM


class _Phases:
    """Lets a signal interrupt startup and serving, but not the shutdown itself."""

    def __init__(self) -> None:
        self.interruptible = True
        self.signalled = threading.Event()

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signalled.is_set() or not self.interruptible:
            log.info("%s received again; already stopping", name)
            return
        self.signalled.set()
        log.info("%s received: stopping", name)
        raise SystemExit(0)


def _listen_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, or ``None`` if it can (checked by binding)."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
            s.bind(addr)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def serve(cfg: Config) -> int:
    """Run until SIGTERM/SIGINT; every backend is stopped before returning."""
    from .app import create_app
    from .registry import ModelRegistry
    from .server import make_server
    from .store import Store
    from .sweeper import Sweeper

    phases = _Phases()
    signal.signal(signal.SIGTERM, phases.handler)
    signal.signal(signal.SIGINT, phases.handler)

    problem = _listen_problem(cfg.server.host, cfg.server.port)
    if problem:  # say so now, not after a long preload
        log.error("cannot listen on %s:%s: %s", cfg.server.host, cfg.server.port, problem)
        return 1
    try:
        store = Store(cfg.db_path)
    except (OSError, sqlite3.Error) as exc:
        log.error(
            "cannot open the state database %s: %s (db_path must be in a writable folder; "
            "under systemd a relative db_path goes to $STATE_DIRECTORY)",
            cfg.db_path,
            exc,
        )
        return 1
    registry = ModelRegistry(cfg, store)
    sweeper = Sweeper(registry, cfg.server.sweep_interval_seconds)
    server = None
    try:
        registry.heal()
        for name in cfg.preload_models:
            model = cfg.model(name)
            assert model is not None  # the config checked preload names
            # A long preload must not trip systemd's start timeout.
            budget = cfg.load_timeout_for(model) + cfg.backend.stop_timeout_seconds + 30
            notify(f"STATUS=preloading {name}", f"EXTEND_TIMEOUT_USEC={int(budget * 1e6)}")
            try:
                registry.load(name)
                log.info("preloaded %s", name)
            except DynLLMError as exc:
                log.error("preload of %s failed: %s", name, exc.message)
        app = create_app(cfg, registry)
        try:
            server = make_server(app, cfg)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", cfg.server.host, cfg.server.port, exc.strerror)
            return 1
        sweeper.start()
        log.info(
            "listening on http://%s:%s",
            server.effective_host,
            server.effective_port,  # type: ignore[union-attr]
        )
        # The socket is bound and listening: connections queue until run() accepts them.
        notify(
            "READY=1",
            f"STATUS=serving {len(cfg.models)} model(s) on port {server.effective_port}",  # type: ignore[union-attr]
            f"MAINPID={os.getpid()}",
        )
        server.run()
    except SystemExit:
        pass
    finally:
        phases.interruptible = False
        log.info("shutting down: stopping backends")
        notify("STOPPING=1", "STATUS=stopping backends")
        sweeper.stop()
        if server is not None:
            server.close()
        registry.shutdown(cfg.server.shutdown_grace_seconds)
        store.close()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
