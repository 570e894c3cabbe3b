"""DynLLM behind a real nginx running the shipped ``deploy/nginx/dynllm.conf``.

nginx is required, not optional: without it every test here fails with a message
naming the Debian package (``.ci/run`` installs it).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import random
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

# The fake-backend model fixtures (``spec``, ``ov_spec``) of the integration layer;
# imported fixtures are used as test arguments, hence the file-wide F811 exemption.
from tests.support.harness import DynLLM, wait_for
from tests.support.nginx import SITE, Nginx, NginxMissing, find_nginx, render_site

PROXY = {"trusted_proxy": "127.0.0.1"}
NO_BUFFERING_WARNINGS = ("buffered to a temporary file",)


@pytest.fixture
def nginx(dynllm, tmp_path: Path) -> Iterator[Callable[[DynLLM], Nginx]]:  # noqa: ANN001
    """``nginx(d)``: a real nginx in front of DynLLM ``d``; stopped (and checked
    gone) before DynLLM is."""
    started: list[Nginx] = []

    def start(d: DynLLM) -> Nginx:
        n = Nginx(tmp_path / f"nginx{len(started)}", d.url)
        started.append(n)
        return n.start()

    yield start
    for n in started:
        n.stop()
        assert not n.pids()


def big_wav(size: int, seed: int = 7) -> bytes:
    """A valid mono 16-bit WAV of about ``size`` bytes (noise: nothing compresses it)."""
    frames = random.Random(seed).randbytes(size // 2 * 2)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(frames)
    return buf.getvalue()


def no_buffering_warnings(n: Nginx) -> None:
    log = n.log()
    for needle in NO_BUFFERING_WARNINGS:
        assert needle not in log, log


def dynllm_error(r: requests.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert err["code"] == code, err
    assert {"message", "type", "param", "code"} <= set(err), err
    return err


def test_nginx_missing_is_an_error_naming_the_package(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(NginxMissing, match=r"Debian package 'nginx'.*apt-get install -y nginx"):
        find_nginx(candidates=("/nonexistent/nginx",))


def test_rendered_site_is_the_shipped_file_but_for_address_and_port() -> None:
    shipped = SITE.read_text().splitlines()
    rendered = render_site("127.0.0.1:12345", 23456).splitlines()
    assert len(rendered) == len(shipped)
    changed = [(a.strip(), b.strip()) for a, b in zip(shipped, rendered, strict=True) if a != b]
    assert changed == [
        ("server 127.0.0.1:8000;", "server 127.0.0.1:12345;"),
        ("listen 80;", "listen 127.0.0.1:23456;"),
        ("listen [::]:80;", ""),
    ]


def test_stream_goes_through_token_by_token(dynllm, spec, nginx) -> None:
    d = dynllm([spec("slow", token_delay=0.2, tokens=10)], server=PROXY)
    n = nginx(d)
    # Load first, so that the timing below is the stream's alone.
    r = requests.post(n.url + "/admin/models/load", json={"model": "slow"}, timeout=30)
    assert r.status_code == 200, r.text

    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    t0 = time.monotonic()
    resp = requests.post(n.url + "/v1/chat/completions", json=body, stream=True, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    arrivals: list[tuple[float, str]] = []
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            arrivals.append((time.monotonic() - t0, line[6:].decode()))
    total = time.monotonic() - t0

    assert arrivals[-1][1] == "[DONE]"
    tokens = [
        (t, json.loads(p)["choices"][0]["delta"].get("content"))
        for t, p in arrivals[:-1]
        if json.loads(p)["choices"][0]["delta"].get("content")
    ]
    assert [c for _, c in tokens] == [f"tok{i} " for i in range(10)]
    times = [t for t, _ in tokens]
    # Produced every 0.2 s for about 2 s: buffered, they would all arrive at the end.
    assert total >= 1.8, total
    assert times[0] < 0.4 * total, (times, total)
    assert times[-1] - times[0] >= 1.4, times
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert sum(g >= 0.1 for g in gaps) >= 7, gaps  # spread out, not in bursts
    no_buffering_warnings(n)


def test_large_upload_arrives_intact(dynllm, ov_spec, nginx) -> None:
    d = dynllm([ov_spec("whisper", model_type="transcription")], server=PROXY)
    n = nginx(d)
    audio = big_wav(12 * 1024 * 1024)
    digest = hashlib.sha256(audio).hexdigest()
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
        r = requests.post(
            n.url + path,
            data={"model": "whisper"},
            files={"file": ("speech.wav", audio, "audio/wav")},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        text = r.json()["text"]
        assert f"bytes={len(audio)}" in text and f"sha256={digest}" in text, text
    # proxy_request_buffering off: nginx never wrote the body to a file of its own.
    no_buffering_warnings(n)
    assert not any((n.root / "temp" / "client_body").iterdir())


def test_errors_keep_dynllm_json_and_status(dynllm, spec, nginx) -> None:
    d = dynllm([spec("a")], server=PROXY)
    n = nginx(d)
    s = requests.Session()
    chat = {"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}
    err = dynllm_error(s.post(n.url + "/v1/chat/completions", json=chat), 404, "model_not_found")
    assert err["source"] == "dynllm"
    dynllm_error(s.get(n.url + "/v1/models/ghost"), 404, "model_not_found")
    bad = s.post(
        n.url + "/v1/chat/completions",
        data=b'{"model": "a", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    assert dynllm_error(bad, 400, "invalid_json")["source"] == "dynllm"
    dynllm_error(s.post(n.url + "/v1/embeddings", json={"model": "a"}), 400, "model_type_mismatch")
    r = s.post(n.url + "/admin/models/unload", json={"model": "ghost"})
    dynllm_error(r, 404, "model_not_found")


def test_errors_nginx_makes_itself_are_openai_shaped(dynllm, spec, nginx) -> None:
    d = dynllm([spec("a")], server=PROXY)
    n = nginx(d)
    # Over client_max_body_size (200m): refused by nginx from the Content-Length,
    # before any of the body is read or DynLLM is asked.
    conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=30)
    conn.putrequest("POST", "/v1/audio/transcriptions")
    conn.putheader("Content-Type", "multipart/form-data; boundary=xyz")
    conn.putheader("Content-Length", str(300 * 1024 * 1024))
    conn.endheaders()
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    assert resp.status == 413, raw
    assert resp.getheader("Content-Type") == "application/json"
    err = json.loads(raw)["error"]
    assert err["code"] == "request_too_large" and err["source"] == "nginx"

    # /admin and /metrics only from this host: 127.0.0.2 is loopback too, but
    # not in the allow list.
    for path, status in (("/admin/models", 403), ("/metrics", 403), ("/v1/models", 200)):
        c = http.client.HTTPConnection(
            "127.0.0.1", n.port, timeout=30, source_address=("127.0.0.2", 0)
        )
        c.request("GET", path)
        resp = c.getresponse()
        raw = resp.read()
        c.close()
        assert resp.status == status, (path, raw)
        if status == 403:
            assert resp.getheader("Content-Type") == "application/json"
            assert json.loads(raw)["error"]["code"] == "forbidden"
    assert requests.get(n.url + "/admin/models", timeout=30).status_code == 200

    # DynLLM gone: nginx's 502 is JSON too.
    assert d.stop() == 0
    r = requests.post(n.url + "/v1/chat/completions", json={"model": "a"}, timeout=30)
    assert dynllm_error(r, 502, "upstream_unavailable")["source"] == "nginx"


def test_upstream_connection_is_kept_alive(dynllm, spec, ov_spec, nginx) -> None:
    d = dynllm([spec("a", tokens=3), ov_spec("whisper", model_type="transcription")], server=PROXY)
    n = nginx(d)
    s = requests.Session()
    chat = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
    audio = big_wav(64 * 1024)
    requests_in_turn: list[Callable[[], requests.Response]] = [
        lambda: s.get(n.url + "/health"),
        lambda: s.post(n.url + "/admin/models/load", json={"model": "a"}),
        lambda: s.post(n.url + "/v1/chat/completions", json=chat),
        lambda: s.post(n.url + "/v1/chat/completions", json={**chat, "stream": True}),
        lambda: s.get(n.url + "/v1/models"),
        lambda: s.post(n.url + "/v1/chat/completions", json={**chat, "model": "ghost"}),
        lambda: s.post(n.url + "/v1/completions", data=b"{", headers={"Content-Type": "x"}),
        lambda: s.post(
            n.url + "/v1/audio/transcriptions",
            data={"model": "whisper"},
            files={"file": ("a.wav", audio, "audio/wav")},
        ),
        lambda: s.post(n.url + "/v1/chat/completions", json={**chat, "stream": True}),
    ]
    seen: list[set[int]] = []
    for send in requests_in_turn:
        r = send()
        assert r.status_code in (200, 400, 404), r.text
        _ = r.content  # the whole answer, streams included
        # The connection goes back to nginx's keep-alive cache, still open.
        seen.append(wait_for(n.upstream_connections, timeout=5))
    # One worker, requests one after the other: one upstream connection for all.
    assert len(set().union(*seen)) == 1, seen
    assert all(len(x) == 1 for x in seen), seen
