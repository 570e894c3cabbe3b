"""Eviction under load, streaming, disconnects and crashes mid-stream."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading

from tests.support.harness import sse_events, wait_for


def _load(d, *names: str) -> None:
    for n in names:
        assert d.chat(n, max_tokens=1).status_code == 200


def test_lifo_eviction_order(dynllm, spec) -> None:
    d = dynllm([spec("a", 400), spec("b", 400), spec("c", 400), spec("d", 400)])
    _load(d, "a", "b")
    _load(d, "c")  # b was loaded most recently: it goes
    assert {n: m["state"] for n, m in d.admin().items()} == {
        "a": "loaded",
        "b": "unloaded",
        "c": "loaded",
        "d": "unloaded",
    }
    _load(d, "d")  # now c is the most recent
    states = {n: m["state"] for n, m in d.admin().items()}
    assert states == {"a": "loaded", "b": "unloaded", "c": "unloaded", "d": "loaded"}
    assert "model=c loaded -> unloading reason=evicted for d" in d.log()


def test_busy_model_survives_eviction_through_a_long_stream(dynllm, spec, models) -> None:
    d = dynllm([spec("a", 400, token_delay=0.1, tokens=20), spec("b", 400), spec("c", 400)])
    _load(d, "b")
    resp = d.chat("a", stream=True, max_tokens=20)  # a is now the most recent AND busy
    assert resp.status_code == 200
    lines = resp.iter_lines()
    first = next(line for line in lines if line.startswith(b"data: "))
    assert b"chat.completion.chunk" in first
    assert d.admin()["a"]["in_flight"] == 1
    _load(d, "c")  # needs room: LIFO would pick a, but a is busy, so b goes
    states = {n: m["state"] for n, m in d.admin().items()}
    assert states == {"a": "loaded", "b": "unloaded", "c": "loaded"}
    rest = [line[6:] for line in lines if line.startswith(b"data: ")]
    assert rest[-1] == b"[DONE]"
    tokens = [json.loads(x)["choices"][0]["delta"].get("content") for x in [first[6:], *rest[:-1]]]
    assert sum(1 for t in tokens if t) == 20  # the stream was never cut
    assert len(models.starts("a")) == 1


def test_all_candidates_busy_gives_503_with_retry_after(dynllm, spec, models) -> None:
    d = dynllm(
        [
            spec("a", 500, token_delay=0.2, tokens=10),
            spec("b", 500, token_delay=0.2, tokens=10),
            spec("c", 500),
        ]
    )
    streams = [d.chat(n, stream=True, max_tokens=10) for n in ("a", "b")]
    wait_for(lambda: all(m["in_flight"] == 1 for n, m in d.admin().items() if n != "c"))
    r = d.chat("c", max_tokens=1)
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) > 0
    assert r.json()["error"]["code"] == "insufficient_vram"
    assert models.starts("c") == []  # nothing started
    for s in streams:
        assert sse_events(s)[-1] == "[DONE]"
    assert d.chat("c", max_tokens=1).status_code == 200  # room once they are idle


def test_client_disconnect_releases_lease_and_closes_upstream(dynllm, spec, models) -> None:
    d = dynllm([spec("a", token_delay=0.1, tokens=100)])
    resp = d.chat("a", stream=True, max_tokens=100)
    it = resp.iter_lines()
    got = 0
    for line in it:
        if line.startswith(b"data: "):
            got += 1
            if got == 3:
                break
    assert d.admin()["a"]["in_flight"] == 1
    resp.close()  # the client goes away mid-stream
    wait_for(lambda: d.admin()["a"]["in_flight"] == 0)
    wait_for(lambda: any(e.startswith("stream_aborted") for e in models.events("a")))
    assert d.state("a") == "loaded"
    assert not any(e.startswith("stream_done") for e in models.events("a"))


def test_crash_mid_stream_ends_the_stream_with_an_error(dynllm, spec, models) -> None:
    d = dynllm([spec("a", crash_after_tokens=3, tokens=10)])
    resp = d.chat("a", stream=True, max_tokens=10)
    events = sse_events(resp)  # must end, not hang
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["code"] == "backend_stream_error"
    assert sum(1 for e in events[:-1] if json.loads(e)["choices"][0]["delta"].get("content")) == 3
    wait_for(lambda: d.state("a") == "failed")
    assert "SIGABRT" in d.admin()["a"]["last_error"] or "134" in d.admin()["a"]["last_error"]
    # The next request starts a fresh backend.
    models.model("a", tokens=5)
    r = d.chat("a", max_tokens=5)
    assert r.status_code == 200
    assert len(models.starts("a")) == 2


def test_crash_before_a_non_stream_answer_is_502(dynllm, spec) -> None:
    d = dynllm([spec("a", crash_after_tokens=1, tokens=5)])
    r = d.chat("a", max_tokens=5)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "backend_unavailable"


def test_sixty_four_concurrent_streams_complete(dynllm, spec) -> None:
    d = dynllm(
        [spec("a", 300, token_delay=0.02, tokens=30), spec("b", 300, token_delay=0.02, tokens=30)]
    )
    barrier = threading.Barrier(64)

    def one(i: int) -> int:
        barrier.wait()
        resp = d.chat("ab"[i % 2], stream=True, max_tokens=30)
        events = sse_events(resp)
        assert events[-1] == "[DONE]"
        return sum(1 for e in events[:-1] if json.loads(e)["choices"][0]["delta"].get("content"))

    with cf.ThreadPoolExecutor(64) as pool:
        counts = list(pool.map(one, range(64)))
    assert counts == [30] * 64
    assert all(m["in_flight"] == 0 for m in d.admin().values())


def test_non_stream_body_and_status_pass_through(dynllm, spec) -> None:
    d = dynllm([spec("a")])
    raw = b'{"model": "a", "messages": [{"role":"user","content":"x"}], "max_tokens": 2}'
    r = d.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "a"
    r = d.post("/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 2})
    assert r.json()["object"] == "text_completion"
    r = d.post(
        "/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 2, "stream": True}
    )
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["X-Accel-Buffering"] == "no"


def test_streams_keep_the_client_connection_alive(dynllm, spec) -> None:
    import http.client
    from urllib.parse import urlsplit

    d = dynllm([spec("a", tokens=4)])
    u = urlsplit(d.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    body = json.dumps({"model": "a", "stream": True, "max_tokens": 4, "messages": []})
    local_ports = []
    for _ in range(3):
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.getheader("Transfer-Encoding") == "chunked"
        assert resp.getheader("Connection") is None
        data = resp.read()
        assert data.rstrip().endswith(b"data: [DONE]")
        local_ports.append(conn.sock.getsockname()[1])
    assert len(set(local_ports)) == 1  # one TCP connection carried all three streams
    conn.close()


def test_declared_vram_never_exceeds_budget_under_concurrent_churn(dynllm, spec) -> None:
    names = ["a", "b", "c"]
    d = dynllm([spec(n, 400, load_delay=0.05, token_delay=0.01, tokens=5) for n in names])
    stop = threading.Event()
    worst = {"used": 0}
    statuses: list[int] = []

    def sample() -> None:
        while not stop.is_set():
            snap = d.get("/admin/models").json()
            held = sum(
                m["vram_mb"]
                for m in snap["models"]
                if m["state"] in ("loading", "loaded", "unloading")
            )
            worst["used"] = max(worst["used"], held, snap["used_vram_mb"])

    def client(i: int) -> None:
        for j in range(6):
            r = d.chat(names[(i + j) % 3], stream=bool(j % 2), max_tokens=5)
            statuses.append(r.status_code)
            if r.status_code == 200 and j % 2:
                assert sse_events(r)[-1] == "[DONE]"
            elif r.status_code == 503:
                assert r.headers.get("Retry-After")
            r.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(client, range(8)))
    stop.set()
    sampler.join()
    assert worst["used"] <= 1000
    assert set(statuses) <= {200, 503} and statuses.count(200) > len(statuses) // 2
