"""The error table, tried against a running DynLLM (real waitress)."""

from __future__ import annotations

import pytest


@pytest.fixture
def d(dynllm, spec):  # noqa: ANN001, ANN201
    return dynllm(
        [
            spec("chat"),
            spec("emb", model_type="embedding"),
            spec("locked", extra_args=["--api-key", "k"]),
        ],
        server={"max_body_mb": 0.01},
    )


def _err(r, status: int, code: str) -> dict:  # noqa: ANN001
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    e = r.json()["error"]
    assert e["code"] == code and e["message"] and e["type"]
    assert e["source"] == "dynllm"
    return e


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b'{"model": "chat", "messages": [', "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"chat"', "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b'{"messages": []}', "missing_model"),
        (b'{"model": 7}', "invalid_model"),
        (b'{"model": ["chat"]}', "invalid_model"),
        (b'{"model": ""}', "invalid_model"),
        (b'{"model": null}', "missing_model"),
    ],
)
def test_malformed_bodies_are_400(d, body: bytes, code: str) -> None:  # noqa: ANN001
    _err(d.post("/v1/chat/completions", data=body), 400, code)


@pytest.mark.parametrize("name", ["nope", "../chat", "chat\u0000", "x" * 5000, "/etc/passwd"])
def test_unknown_models_are_404_and_start_nothing(d, models, name: str) -> None:  # noqa: ANN001
    e = _err(d.post("/v1/chat/completions", json={"model": name}), 404, "model_not_found")
    assert e["param"] == "model"
    assert all(not models.starts(n) for n in ("chat", "emb", "locked"))


def test_wrong_model_type_says_what_it_serves(d) -> None:  # noqa: ANN001
    e = _err(d.post("/v1/chat/completions", json={"model": "emb"}), 400, "model_type_mismatch")
    assert "/v1/embeddings" in e["message"]
    _err(d.post("/v1/embeddings", json={"model": "chat", "input": "x"}), 400, "model_type_mismatch")


def test_body_over_the_limit_is_413(d) -> None:  # noqa: ANN001
    big = b'{"model": "chat", "pad": "' + b"x" * 20000 + b'"}'
    _err(d.post("/v1/chat/completions", data=big), 413, "request_too_large")


def test_body_far_over_the_limit_is_a_json_413_too(d) -> None:  # noqa: ANN001
    # Large enough for waitress itself to refuse it before DynLLM's code runs.
    big = b'{"model": "chat", "pad": "' + b"x" * 200_000 + b'"}'
    _err(d.post("/v1/chat/completions", data=big), 413, "request_too_large")


def test_double_slash_path_is_a_json_404(d) -> None:  # noqa: ANN001
    _err(d.post("/v1//chat/completions", json={"model": "chat"}), 404, "not_found")


def test_wrong_method_is_405(d) -> None:  # noqa: ANN001
    r = d.get("/v1/chat/completions")
    _err(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]
    _err(d.post("/v1/models", json={}), 405, "method_not_allowed")


def test_unknown_route_is_404_json(d) -> None:  # noqa: ANN001
    _err(d.get("/v1/nothing"), 404, "not_found")


def test_backend_errors_pass_through_unchanged(d) -> None:  # noqa: ANN001
    # The backend wants its own key; DynLLM does not forward the client's Authorization.
    r = d.post(
        "/v1/chat/completions",
        json={"model": "locked", "max_tokens": 1},
        headers={"Authorization": "Bearer k"},
    )
    assert r.status_code == 401
    assert "source" not in r.json()["error"]  # the backend's own body


def test_server_keeps_serving_after_bad_input(d) -> None:  # noqa: ANN001
    for body in (b"{", b"[]", b'{"model": 1}'):
        d.post("/v1/chat/completions", data=body)
    assert d.chat("chat", max_tokens=1).status_code == 200
