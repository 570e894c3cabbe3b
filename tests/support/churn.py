"""A churn load for soak tests: many client threads, a VRAM sampler, a fault injector.

Every request's outcome is classified (never just counted): a test then says
which outcomes are acceptable for which request. The clients only ever talk to
``base_url``, so DynLLM can be killed and restarted on the same port under them.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

PROMPTS = ["Hello there", "Tell me a story", "What is up", "Good morning"]
DOCS = ["hello world", "blue sky at night", "a story of the sea"]

# Outcome kinds.
OK = "ok"  # complete and equal to the reference answer
REFUSED = "refused"  # 503 with Retry-After, OpenAI-shaped
STREAM_ERROR = "stream_error"  # a stream that ended with an error event
WRONG = "wrong"  # 200 but not the reference answer / malformed
CUT = "cut"  # a stream that ended with neither [DONE] nor an error event
ERROR = "error"  # any other HTTP error (status and code in detail)
NO_CONNECTION = "no_connection"  # the connection failed or broke (DynLLM down)


@dataclass
class Outcome:
    model: str
    kind: str  # "chat", "stream", "embeddings", "rerank"
    start: float
    end: float
    result: str
    status: int | None = None
    code: str | None = None
    detail: str = ""


@dataclass
class Job:
    """One model in the mix and how to check its answers."""

    model: str
    kinds: tuple[str, ...]  # "chat"/"stream" for chat models, "embeddings", "rerank"
    #: Checks a finished answer: (kind, prompt index, parsed answer) -> problem or "".
    check: Callable[[str, int, Any], str]
    weight: float = 1.0
    #: Takes part in the rotating hot pair (fault models do not).
    hot: bool = True


def _error_of(resp: requests.Response) -> tuple[str | None, str]:
    try:
        err = resp.json()["error"]
        return str(err.get("code")), str(err.get("message"))[:300]
    except (ValueError, KeyError, TypeError):
        return None, f"not an OpenAI error body: {resp.text[:200]!r}"


def request_once(
    session: requests.Session, base_url: str, job: Job, kind: str, i: int, max_tokens: int
) -> Outcome:
    """Send one request of ``kind`` to ``job.model`` and classify what came back."""
    start = time.monotonic()
    out = Outcome(job.model, kind, start, start, WRONG)
    try:
        if kind in ("chat", "stream"):
            body: dict[str, Any] = {
                "model": job.model,
                "messages": [{"role": "user", "content": PROMPTS[i]}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            if kind == "stream":
                body["stream"] = True
            path = "/v1/chat/completions"
        elif kind == "embeddings":
            body = {"model": job.model, "input": [PROMPTS[i], DOCS[0]]}
            path = "/v1/embeddings"
        else:
            body = {"model": job.model, "query": PROMPTS[i], "documents": DOCS}
            path = "/v1/rerank"
        with session.post(
            base_url + path, json=body, stream=kind == "stream", timeout=(5, 180)
        ) as resp:
            out.status = resp.status_code
            if resp.status_code != 200:
                out.code, out.detail = _error_of(resp)
                refused = resp.status_code == 503 and resp.headers.get("Retry-After")
                out.result = REFUSED if refused and out.code is not None else ERROR
            elif kind == "stream":
                _classify_stream(resp, job, i, out)
            else:
                problem = job.check(kind, i, resp.json())
                out.result, out.detail = (WRONG, problem) if problem else (OK, "")
    except requests.RequestException as exc:
        out.result, out.detail = NO_CONNECTION, f"{type(exc).__name__}: {exc}"[:300]
    out.end = time.monotonic()
    return out


def _classify_stream(resp: requests.Response, job: Job, i: int, out: Outcome) -> None:
    pieces: list[str] = []
    finish = None
    done = False
    for line in resp.iter_lines():
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            done = True
            continue
        event = json.loads(data)
        if "error" in event:
            out.result, out.code = STREAM_ERROR, str(event["error"].get("code"))
            out.detail = str(event["error"].get("message"))[:300]
            return
        for choice in event.get("choices") or []:
            pieces.append((choice.get("delta") or {}).get("content") or "")
            finish = choice.get("finish_reason") or finish
    if not done:
        out.result, out.detail = CUT, f"no [DONE] after {len(pieces)} pieces"
        return
    answer = {"choices": [{"message": {"content": "".join(pieces)}, "finish_reason": finish}]}
    problem = job.check("stream", i, answer)
    out.result, out.detail = (WRONG, problem) if problem else (OK, "")


def vectors_close(a: list[float], b: list[float], tol: float = 1e-3) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b, strict=True)
    )


@dataclass
class Churn:
    """``clients`` threads sending a rotating mix of requests to ``base_url``."""

    base_url: str
    jobs: list[Job]
    clients: int = 64
    #: Every ``hot_seconds`` most traffic moves to another pair of models.
    hot_seconds: float = 4.0
    max_tokens: int = 24
    seed: int = 1
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _pick(self, rng: random.Random) -> Job:
        """Mostly the current hot pair (so models go cold and get evicted), sometimes any."""
        hot = [j for j in self.jobs if j.hot]
        pairs = [(a, b) for n, a in enumerate(hot) for b in hot[n + 1 :]]
        random.Random(self.seed).shuffle(pairs)  # the same order for every client
        slot = int(time.monotonic() / self.hot_seconds)
        if pairs and rng.random() < 0.8:
            return rng.choice(pairs[slot % len(pairs)])
        return rng.choices(self.jobs, weights=[j.weight for j in self.jobs])[0]

    def _client(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        with requests.Session() as session:
            while not self._stop.is_set():
                job = self._pick(rng)
                kind = rng.choice(job.kinds)
                out = request_once(
                    session, self.base_url, job, kind, rng.randrange(len(PROMPTS)), self.max_tokens
                )
                with self._lock:
                    self.outcomes.append(out)
                # Back off after a refusal as a polite client would (not the full
                # Retry-After: the test wants churn, not idle time).
                pause = rng.uniform(0.3, 1.0) if out.result != OK else rng.uniform(0.0, 0.1)
                self._stop.wait(pause)

    def start(self) -> Churn:
        for n in range(self.clients):
            t = threading.Thread(target=self._client, args=(n,), name=f"churn-{n}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 240.0, check: bool = True) -> None:
        """Stop sending and wait for every request in flight to finish."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not (check and alive), f"clients still waiting after {timeout}s: {alive}"

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)


@dataclass
class Sampler:
    """Polls ``/admin/models`` and records every sample (and every failure to read it)."""

    base_url: str
    interval: float = 0.1
    samples: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    misses: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    r = session.get(self.base_url + "/admin/models", timeout=5)
                    self.samples.append((time.monotonic(), r.json()))
                except (requests.RequestException, ValueError):
                    self.misses += 1  # DynLLM down (killed on purpose) or overloaded
                self._stop.wait(self.interval)

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


HOLDS_VRAM = ("loading", "loaded", "unloading")


def vram_over_budget(samples: list[tuple[float, dict[str, Any]]]) -> list[str]:
    """Samples whose declared VRAM in use (as reported, and summed by state) exceeds the budget."""
    bad = []
    for t, doc in samples:
        budget = doc["total_vram_mb"]
        summed = sum(m["vram_mb"] for m in doc["models"] if m["state"] in HOLDS_VRAM)
        if doc["used_vram_mb"] > budget or summed > budget:
            states = {m["name"]: m["state"] for m in doc["models"]}
            bad.append(f"t={t:.1f} used={doc['used_vram_mb']} summed={summed} {states}")
    return bad
