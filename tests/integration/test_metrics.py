"""GET /metrics in Prometheus text format, parsed with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import chat_in_background, wait_for


def scrape(d) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # noqa: ANN001
    r = d.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m, name: str, **labels: str) -> float:  # noqa: ANN001
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_cover_requests_loads_evictions_state_and_vram(dynllm, spec) -> None:
    d = dynllm(
        [
            spec("a", vram_mb=600, load_delay=0.3),
            spec("b", vram_mb=600),
            spec("bad", fail_start=True),
        ],
        total_vram_mb=1000,
    )
    m = scrape(d)
    assert value(m, "dynllm_vram_budget_mb") == 1000
    assert value(m, "dynllm_vram_in_use_mb") == 0
    assert value(m, "dynllm_model_state", model="a", state="unloaded") == 1
    assert value(m, "dynllm_model_vram_declared_mb", model="a") == 600

    assert d.chat("a", max_tokens=2).status_code == 200
    assert d.chat("a", stream=True, max_tokens=2).status_code == 200
    assert d.post("/v1/embeddings", json={"model": "a", "input": "x"}).status_code == 400
    assert d.chat("nope", max_tokens=1).status_code == 404  # unknown names make no series
    m = scrape(d)
    assert value(m, "dynllm_requests_total", model="a", endpoint="chat", status="200") == 2
    assert value(m, "dynllm_requests_total", model="a", endpoint="embeddings", status="400") == 1
    assert not [k for k in m if ("model", "nope") in k[1]]
    assert value(m, "dynllm_request_duration_seconds_count", model="a", endpoint="chat") == 2
    assert value(m, "dynllm_time_to_first_byte_seconds_count", model="a", endpoint="chat") == 2
    # The first request waited for the 0.3 s load: it shows in its time to first byte.
    assert value(m, "dynllm_time_to_first_byte_seconds_sum", model="a", endpoint="chat") >= 0.3
    assert value(m, "dynllm_loads_total", model="a", result="ok") == 1
    assert value(m, "dynllm_load_duration_seconds_count", model="a", backend="llamacpp") == 1
    assert value(m, "dynllm_load_duration_seconds_sum", model="a", backend="llamacpp") >= 0.3
    assert value(m, "dynllm_model_state", model="a", state="loaded") == 1
    assert value(m, "dynllm_vram_in_use_mb") == 600

    # b evicts a (LIFO, a idle); a failed load is counted as such.
    assert d.chat("b", max_tokens=1).status_code == 200
    assert d.chat("bad", max_tokens=1).status_code == 503
    d.post("/admin/models/unload", json={"model": "b"}).raise_for_status()
    m = scrape(d)
    assert value(m, "dynllm_evictions_total", model="a") == 1
    assert value(m, "dynllm_unloads_total", model="a", reason="evicted") == 1
    assert value(m, "dynllm_unloads_total", model="b", reason="admin") == 1
    assert value(m, "dynllm_loads_total", model="bad", result="failed") == 1
    assert value(m, "dynllm_requests_total", model="bad", endpoint="chat", status="503") == 1
    assert value(m, "dynllm_model_state", model="bad", state="failed") == 1


def test_in_flight_and_capacity_refusals(dynllm, spec) -> None:
    d = dynllm(
        [spec("a", vram_mb=600, token_delay=0.1), spec("b", vram_mb=600)], total_vram_mb=1000
    )
    bg = chat_in_background(d, "a", stream=True, max_tokens=30)
    wait_for(lambda: value(scrape(d), "dynllm_model_in_flight_requests", model="a") == 1, 10)
    r = d.chat("b", max_tokens=1)  # a is busy: no room for b
    assert r.status_code == 503 and "Retry-After" in r.headers
    m = scrape(d)
    assert value(m, "dynllm_requests_refused_capacity_total", model="b") == 1
    assert value(m, "dynllm_requests_total", model="b", endpoint="chat", status="503") == 1
    bg["thread"].join(30)
    assert bg["response"].status_code == 200
    wait_for(lambda: value(scrape(d), "dynllm_model_in_flight_requests", model="a") == 0, 30)


def test_a_backend_failing_before_its_first_byte_is_counted_once(dynllm, spec) -> None:
    d = dynllm([spec("crashy", crash_after_tokens=1)])
    r = d.chat("crashy", max_tokens=4)
    assert r.status_code == 502, r.text
    m = scrape(d)
    assert value(m, "dynllm_requests_total", model="crashy", endpoint="chat", status="502") == 1
    assert value(m, "dynllm_requests_total", model="crashy", endpoint="chat", status="200") == 0
    assert value(m, "dynllm_request_duration_seconds_count", model="crashy", endpoint="chat") == 1
