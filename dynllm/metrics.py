"""Prometheus metrics (``GET /metrics``) with ``prometheus_client``.

Counters and histograms are fed by the views (requests) and by the
registry's state changes (loads, unloads, evictions); gauges that describe the
present (state, in-flight requests, VRAM) are read from the registry's
snapshot at scrape time, so they can never drift from the truth.  Every app
has its own collector registry.  Model labels only ever carry configured
model names, so clients cannot inflate the number of series.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .records import Transition
from .registry import ModelRegistry
from .services import services
from .states import State

#: Request and first-byte buckets (seconds): from a cached answer to a long generation.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Backend start-up buckets (seconds).
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)

bp = Blueprint("metrics", __name__)


class _Present(Collector):
    """Gauges computed from the registry at scrape time."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._registry.snapshot()
        state = GaugeMetricFamily(
            "dynllm_model_state", "1 for the state each model is in", labels=["model", "state"]
        )
        in_flight = GaugeMetricFamily(
            "dynllm_model_in_flight_requests", "Requests being served", labels=["model"]
        )
        vram = GaugeMetricFamily(
            "dynllm_model_vram_declared_mb", "Declared VRAM of each model", labels=["model"]
        )
        for m in snap["models"]:
            for s in State:
                state.add_metric([m["name"], s.value], 1.0 if m["state"] == s.value else 0.0)
            in_flight.add_metric([m["name"]], m["in_flight"])
            vram.add_metric([m["name"]], m["vram_mb"])
        yield state
        yield in_flight
        yield vram
        yield GaugeMetricFamily(
            "dynllm_vram_in_use_mb",
            "Declared VRAM of loading, loaded and unloading models",
            value=snap["used_vram_mb"],
        )
        yield GaugeMetricFamily(
            "dynllm_vram_budget_mb", "total_vram_mb from the config", value=snap["total_vram_mb"]
        )


class Metrics:
    """The metric objects of one app."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dynllm_requests", "Requests by model, endpoint and status",
            ["model", "endpoint", "status"], registry=r,
        )  # fmt: skip
        self.refused = Counter(
            "dynllm_requests_refused_capacity",
            "Requests answered 503 because no VRAM could be freed (every candidate busy)",
            ["model"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "dynllm_request_duration_seconds",
            "From the request's arrival to the last byte of the answer (streams included)",
            ["model", "endpoint"], buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttfb = Histogram(
            "dynllm_time_to_first_byte_seconds",
            "From the request's arrival to the first byte of the backend's answer "
            "(a cold start included)",
            ["model", "endpoint"], buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.load_duration = Histogram(
            "dynllm_load_duration_seconds", "Backend start to ready",
            ["model", "backend"], buckets=LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.loads = Counter(
            "dynllm_loads", "Backend starts by result (ok, failed)", ["model", "result"],
            registry=r,
        )  # fmt: skip
        self.unloads = Counter(
            "dynllm_unloads",
            "Models stopped, by reason (evicted, idle, admin, shutdown, crashed)",
            ["model", "reason"], registry=r,
        )  # fmt: skip
        self.evictions = Counter(
            "dynllm_evictions", "Models stopped to make room for another", ["model"], registry=r
        )
        r.register(_Present(registry))
        registry.add_listener(self.on_transition)

    def on_transition(self, t: Transition) -> None:
        if t.old is State.LOADING and t.new is State.LOADED:
            self.load_duration.labels(t.name, t.backend).observe(t.after)
            self.loads.labels(t.name, "ok").inc()
        elif t.new is State.FAILED and t.old in (State.LOADING, State.UNLOADED):
            self.loads.labels(t.name, "failed").inc()
        elif t.old is State.LOADED and t.new is State.FAILED:
            self.unloads.labels(t.name, "crashed").inc()
        elif t.old is State.LOADED and t.new is State.UNLOADING:
            self.unloads.labels(t.name, t.cause or "other").inc()
            if t.cause == "evicted":
                self.evictions.labels(t.name).inc()

    def request_done(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        self.duration.labels(model, endpoint).observe(seconds)

    def first_byte(self, model: str, endpoint: str, seconds: float) -> None:
        self.ttfb.labels(model, endpoint).observe(seconds)


@bp.get("/metrics")
def metrics() -> Response:
    m = services().metrics
    return Response(generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
