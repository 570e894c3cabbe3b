"""Reproduce a waitress 3.0.2 deadlock that stops DynLLM (and the minimal relay) for good.

    uv run python bench/stall_repro.py [--target dynllm|minimal] [--rounds 20]

Each round opens ``--clients`` connections, asks each for a fast 2000-token stream, reads
nothing for ``--hold`` seconds (receive buffers of 4 KiB), then resets them all.  After a
round one ordinary request must be answered within 5 s; when it is not, the server is
stuck: the script prints where its threads are (if py-spy is on PATH or at --py-spy)
and whether SIGTERM still stops it.  See bench/README.md ("Client aborts").
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402


def thread_summary(pid: int, py_spy: str | None) -> str:
    if not py_spy:
        return "(py-spy not found: no thread dump)"
    out = subprocess.run([py_spy, "dump", "-p", str(pid)], capture_output=True, text=True).stdout
    tops: Counter[str] = Counter()
    for block in out.split("Thread ")[1:]:
        frames = [ln.strip() for ln in block.splitlines()[1:] if ln.strip()]
        if frames:
            tops[" <- ".join(frames[:2])] += 1
    return "\n".join(f"  {n:4} thread(s) in {where}" for where, n in tops.most_common(8))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=["dynllm", "minimal"], default="dynllm")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=120)
    ap.add_argument("--hold", type=float, default=2.0)
    ap.add_argument("--py-spy", default=shutil.which("py-spy"))
    args = ap.parse_args()
    b = bench.Bench(quick=True)
    code = 0
    try:
        if args.target == "dynllm":
            proc, port = b.start_dynllm("dynllm", b.tmp / "dynllm", 19460)
        else:
            _, backend_port = b.start_fake("backend", "fast")
            proc, port = b.start_minimal("minimal", backend_port)
        if not bench.answers(port, 60):
            raise RuntimeError("target does not answer at all")
        backends = []
        if args.target == "dynllm":
            models = bench.http_json(port, "GET", "/admin/models")["models"]
            backends = [m["pid"] for m in models if m["pid"]]
            print(f"DynLLM pid {proc.pid}, its backend(s): {backends}")
        for rnd in range(1, args.rounds + 1):
            bench.slow_reader_storm(port, args.clients, args.hold)
            time.sleep(0.5)
            if bench.answers(port):
                print(f"round {rnd}: still answering", flush=True)
                continue
            code = 1
            print(f"round {rnd}: STUCK (no answer within 5 s)")
            print(thread_summary(proc.pid, args.py_spy))
            t0 = time.monotonic()
            os.kill(proc.pid, 15)
            try:
                proc.popen.wait(15)
                took = time.monotonic() - t0
                print(f"SIGTERM: exited with {proc.popen.returncode} after {took:.1f} s")
                if backends:
                    alive = [p for p in backends if bench.pid_alive(p)]
                    print(f"its backends still running after it exited: {alive or 'none'}")
            except subprocess.TimeoutExpired:
                print("SIGTERM: still running after 15 s (only SIGKILL stops it)")
            break
        else:
            print(f"no stall in {args.rounds} rounds (the race is timing-dependent)")
    finally:
        left = b.stop_all()
        if left:
            print(f"processes left behind and killed: {left}")
        shutil.rmtree(b.tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
