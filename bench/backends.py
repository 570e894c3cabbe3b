"""What the OVMS and transformers paths cost: uploads and a real transformers stream.

    uv run python bench/backends.py [--size-mb 100] [--reps 3] [--no-transformers]

1. Audio upload: a multipart body of ``--size-mb`` MB (``model`` field after the
   file, the worst case for finding it) sent to the fake ``ovms`` in task mode,
   once directly and once through DynLLM.  Reported: seconds per upload (median)
   and DynLLM's peak RSS growth (``VmHWM``) over the whole run.
2. transformers: the real ``transformers serve`` with the tiny Hugging Face
   model, a 200-token greedy stream directly and through DynLLM (which rewrites
   the model name both ways), tokens/s as the median of ``--reps`` runs.

Prints a table and saves JSON in bench/results/.  Every process started here is
stopped at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.harness import (  # noqa: E402
    FAKE_OVMS,
    DynLLM,
    OvmsModelDir,
    live_pids_matching,
    vm_peak_kib,
    wait_for,
    write_config,
)

RESULTS = Path(__file__).resolve().parent / "results"
BOUNDARY = "dynllm-bench-boundary"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_upload(path: Path, size: int) -> str:
    """Write a multipart body (file first, then ``model``); return the file's sha256."""
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with path.open("wb") as out:
        out.write(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n".encode()
        )
        left = size
        while left:
            piece = block[: min(left, len(block))]
            out.write(piece)
            h.update(piece)
            left -= len(piece)
        out.write(
            f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nw\r\n'
            f"--{BOUNDARY}--\r\n".encode()
        )
    return h.hexdigest()


def post_upload(url: str, body: Path, digest: str) -> float:
    t = time.perf_counter()
    with body.open("rb") as fh:
        r = requests.post(
            url,
            data=fh,
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            timeout=300,
        )
    took = time.perf_counter() - t
    r.raise_for_status()
    assert digest in r.json()["text"], r.text
    return took


def bench_upload(tmp: Path, size_mb: int, reps: int) -> dict[str, Any]:
    dirs = OvmsModelDir(tmp / "ovms")
    mdir = dirs.model("w", ovms_version="2026.2", record_requests=False)
    body = tmp / "upload.bin"
    digest = make_upload(body, size_mb * 1000 * 1000)

    port = free_port()
    direct = subprocess.Popen(
        [str(FAKE_OVMS), "--model_path", str(mdir), "--model_name", "w", "--task",
         "speech2text", "--port", "0", "--rest_port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: _ok(f"http://127.0.0.1:{port}/v2/health/ready"), 30)
        direct_s = [post_upload(f"http://127.0.0.1:{port}/v3/audio/transcriptions", body, digest)
                    for _ in range(reps)]  # fmt: skip
    finally:
        os.killpg(direct.pid, signal.SIGKILL)
        direct.wait()

    cfg = write_config(
        tmp / "config.yaml",
        [{"name": "w", "path": str(mdir), "backend": "openvino",
          "model_type": "transcription", "vram_mb": 1}],
        server={"max_body_mb": size_mb * 2},
        backend={"port_range_start": 19300, "port_range_end": 19399},
    )  # fmt: skip
    d = DynLLM(cfg).start()
    try:
        d.post("/admin/models/load", json={"model": "w"}).raise_for_status()
        before = vm_peak_kib(d.pid)
        rss_before = vm_peak_kib(d.pid, "VmRSS")
        via_s = [post_upload(d.url + "/v1/audio/transcriptions", body, digest) for _ in range(reps)]
        grown = (vm_peak_kib(d.pid) - before) / 1024
    finally:
        d.stop()
    return {
        "size_mb": size_mb,
        "direct_s": direct_s,
        "dynllm_s": via_s,
        "dynllm_rss_before_mib": rss_before / 1024,
        "dynllm_peak_rss_growth_mib": grown,
    }


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def stream_tokens(url: str, model: str, n: int) -> tuple[float, int]:
    body = {"model": model, "stream": True, "max_tokens": n,
            "messages": [{"role": "user", "content": "Hello there"}]}  # fmt: skip
    first = None
    tokens = 0
    with requests.post(url, json=body, stream=True, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            doc = json.loads(line[6:])
            if doc.get("choices") and doc["choices"][0].get("delta", {}).get("content"):
                tokens += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None and tokens > 1
    return (tokens - 1) / (end - first), tokens


def bench_transformers(tmp: Path, reps: int) -> dict[str, Any]:
    from tests.support.transformers_bin import ensure_transformers

    cli = ensure_transformers()
    out = subprocess.run(
        [str(cli.parent / "python"), str(Path(__file__).resolve().parents[1] / "tests" /
         "support" / "tiny_hf.py"), str(tmp / "hf")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    llama = next(
        Path(p) for n, p in (x.split("\t") for x in out.stdout.splitlines()) if n == "tiny-llama"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    port = free_port()
    direct = subprocess.Popen(
        [str(cli), "serve", str(llama), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env,
    )  # fmt: skip
    os.environ["HF_HUB_OFFLINE"] = "1"
    cfg = write_config(
        tmp / "config-tf.yaml",
        [{"name": "tiny", "path": str(llama), "backend": "transformers", "vram_mb": 1}],
        enabled_backends=["transformers"],
        backend={"transformers_binary": str(cli), "port_range_start": 19300,
                 "port_range_end": 19399, "load_timeout_seconds": 120},
        db_path=str(tmp / "tf-state.db"),
    )  # fmt: skip
    d = DynLLM(cfg).start()
    try:
        wait_for(lambda: _ok(f"http://127.0.0.1:{port}/health"), 120)
        t = time.perf_counter()
        d.post("/admin/models/load", json={"model": "tiny"}, timeout=120).raise_for_status()
        load_s = time.perf_counter() - t
        direct_url = f"http://127.0.0.1:{port}/v1/chat/completions"
        via_url = d.url + "/v1/chat/completions"
        stream_tokens(direct_url, str(llama), 20)  # warm both
        stream_tokens(via_url, "tiny", 20)
        direct_tps, via_tps = [], []
        for _ in range(reps):  # interleaved, so drift hits both alike
            direct_tps.append(stream_tokens(direct_url, str(llama), 200)[0])
            via_tps.append(stream_tokens(via_url, "tiny", 200)[0])
    finally:
        d.stop()
        os.killpg(direct.pid, signal.SIGTERM)
        direct.wait(30)
    return {"direct_tok_s": direct_tps, "dynllm_tok_s": via_tps, "dynllm_load_s": load_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dynllm-bench-") as tmp_s:
        tmp = Path(tmp_s)
        res: dict[str, Any] = {"upload": bench_upload(tmp, args.size_mb, args.reps)}
        if not args.no_transformers:
            res["transformers"] = bench_transformers(tmp, args.reps)
        left = live_pids_matching(tmp_s)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    up = res["upload"]
    med = statistics.median
    lines = [
        f"upload {up['size_mb']} MB (model field last), median of {args.reps}:",
        f"  direct to fake ovms   {med(up['direct_s']):7.2f} s",
        f"  through DynLLM        {med(up['dynllm_s']):7.2f} s",
        f"  DynLLM RSS before     {up['dynllm_rss_before_mib']:7.1f} MiB;"
        f" peak growth during uploads {up['dynllm_peak_rss_growth_mib']:.1f} MiB",
    ]
    if "transformers" in res:
        tf = res["transformers"]
        d, v = med(tf["direct_tok_s"]), med(tf["dynllm_tok_s"])
        lines += [
            f"transformers serve, tiny llama, 200-token stream, median of {args.reps}:",
            f"  direct                {d:7.1f} tokens/s",
            f"  through DynLLM        {v:7.1f} tokens/s ({100 * v / d:.1f}% of direct)",
            f"  DynLLM load (spawn to ready) {tf['dynllm_load_s']:.1f} s",
        ]
    if left:
        lines.append(f"FAIL: processes left behind and killed: {left}")
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"backends-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({**res, "table": lines}, indent=2))
    print(f"saved {out}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
