"""Loading on demand: single flight, failures, timeouts, preload, argv."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import threading

from tests.support.harness import FAKE_LLAMA_SERVER, PORT_BASE, wait_for


def test_ten_concurrent_cold_requests_start_one_process(dynllm, spec, models) -> None:
    d = dynllm([spec("a", load_delay=0.5)])
    with cf.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: d.chat("a", max_tokens=3), range(10)))
    assert [r.status_code for r in results] == [200] * 10
    assert all(r.json()["choices"][0]["message"]["content"] for r in results)
    assert len(models.starts("a")) == 1


def test_backend_argv_is_the_real_command_line(dynllm, spec, models) -> None:
    d = dynllm(
        [
            spec("chat", n_gpu_layers=12, context_size=2048, extra_args=["-np", "2"]),
            spec("emb", model_type="embedding"),
            spec("rr", model_type="rerank"),
        ]
    )
    assert d.chat("chat", max_tokens=1).status_code == 200
    assert d.post("/v1/embeddings", json={"model": "emb", "input": "x"}).status_code == 200
    r = d.post("/v1/rerank", json={"model": "rr", "query": "a", "documents": ["a b", "c"]})
    assert r.status_code == 200 and r.json()["results"]
    ((_, argv),) = models.starts("chat")
    port = d.admin()["chat"]["port"]
    assert argv == [
        str(FAKE_LLAMA_SERVER),
        "-m",
        str(models.root / "chat.gguf"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-ngl",
        "12",
        "-c",
        "2048",
        "--alias",
        "chat",
        "-np",
        "2",
    ]
    assert models.starts("emb")[0][1][-1] == "--embeddings"
    assert models.starts("rr")[0][1][-1] == "--reranking"


def test_crash_during_load_returns_the_log_tail(dynllm, spec) -> None:
    d = dynllm([spec("bad", fail_start=True, load_delay=0.1)])
    r = d.chat("bad", max_tokens=1)
    assert r.status_code == 503
    err = r.json()["error"]
    assert err["code"] == "backend_load_failed"
    assert "exited during load with code 1" in err["message"]
    assert "error loading model" in err["message"]  # the backend's own words
    info = d.admin()["bad"]
    assert info["state"] == "failed"
    assert "error loading model" in info["last_error"]
    assert info["log_path"].endswith("bad.log")
    with open(info["log_path"]) as f:
        assert "exiting due to model loading error" in f.read()


def test_failed_load_is_retried_by_the_next_request(dynllm, spec, models) -> None:
    d = dynllm([spec("flaky", fail_start=True)])
    assert d.chat("flaky", max_tokens=1).status_code == 503
    models.model("flaky")  # "fix" the model file
    assert d.chat("flaky", max_tokens=1).status_code == 200
    assert d.state("flaky") == "loaded"
    assert len(models.starts("flaky")) == 2


def test_load_timeout_stops_the_backend_and_frees_its_budget(dynllm, spec, models) -> None:
    d = dynllm(
        [
            spec("hang", vram_mb=800, never_ready=True, load_timeout_seconds=1),
            spec("ok", vram_mb=800),
        ]
    )
    r = d.chat("hang", max_tokens=1)
    assert r.status_code == 503
    assert "load timeout" in r.json()["error"]["message"]
    info = d.admin()
    assert info["hang"]["state"] == "failed" and info["hang"]["pid"] is None
    pid = models.starts("hang")[0][0]
    wait_for(lambda: not _alive(pid))
    assert d.chat("ok", max_tokens=1).status_code == 200


def test_missing_binary_fails_cleanly(dynllm, spec) -> None:
    d = dynllm([spec("a")], backend={"llamacpp_binary": "/nonexistent/llama-server"})
    r = d.chat("a", max_tokens=1)
    assert r.status_code == 503
    assert "could not start backend" in r.json()["error"]["message"]


def test_port_in_use_is_skipped(dynllm, spec) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", PORT_BASE + 50))
    blocker.listen()
    try:
        ports = {"port_range_start": PORT_BASE + 50, "port_range_end": PORT_BASE + 51}
        d = dynllm([spec("a")], backend=ports)
        assert d.chat("a", max_tokens=1).status_code == 200
        assert d.admin()["a"]["port"] == PORT_BASE + 51
    finally:
        blocker.close()


def test_preload_happens_before_the_port_opens(dynllm, spec) -> None:
    d = dynllm([spec("pre", load_delay=0.8), spec("other")], preload_models=["pre"])
    log = d.log()
    assert log.index("model=pre loading -> loaded") < log.index("listening on")
    assert d.state("pre") == "loaded"
    assert d.state("other") == "unloaded"


def test_failed_preload_is_logged_and_server_still_starts(dynllm, spec) -> None:
    d = dynllm([spec("broken", fail_start=True)], preload_models=["broken"])
    assert "preload of broken failed" in d.log()
    assert d.state("broken") == "failed"
    assert d.get("/health").status_code == 200


def test_loading_one_model_does_not_block_a_loaded_one(dynllm, spec) -> None:
    d = dynllm([spec("fast"), spec("slow", load_delay=3)])
    assert d.chat("fast", max_tokens=1).status_code == 200
    slow = threading.Thread(target=d.chat, args=("slow",), kwargs={"max_tokens": 1})
    slow.start()
    wait_for(lambda: d.state("slow") == "loading")
    for _ in range(5):
        assert d.chat("fast", max_tokens=1).status_code == 200
    # All five answers came back while "slow" was still starting.
    assert d.state("slow") == "loading"
    slow.join(30)
    assert d.state("slow") == "loaded"


def _alive(pid: int) -> bool:
    from tests.support.harness import pid_alive

    return pid_alive(pid)


def test_v1_models_lists_every_model_with_state(dynllm, spec) -> None:
    d = dynllm([spec("a"), spec("b", model_type="embedding")])
    d.chat("a", max_tokens=1)
    body = d.get("/v1/models").json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert by_id["a"]["object"] == "model" and by_id["a"]["owned_by"] == "dynllm"
    assert by_id["a"]["state"] == "loaded" and by_id["b"]["state"] == "unloaded"
    assert d.get("/v1/models/b").json()["model_type"] == "embedding"
    assert d.get("/v1/models/zzz").status_code == 404
    json.dumps(body)
