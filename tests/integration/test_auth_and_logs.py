"""API keys on the model and admin routes, and the backend log endpoint."""

from __future__ import annotations

CLIENT = "sk-client-0123456789"
OTHER = "sk-second-key"
ADMIN = "sk-admin-abcdef"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_client_keys_guard_v1_and_v2_but_not_health(dynllm, spec, monkeypatch) -> None:
    monkeypatch.setenv("DYNLLM_API_KEYS", f" {OTHER} ,")
    d = dynllm([spec("a")], api_keys=[CLIENT])
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for headers in ({}, bearer("wrong"), {"Authorization": CLIENT}, {"Authorization": "Basic x"}):
        r = d.post("/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 401, headers
        err = r.json()["error"]
        assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    states = d.get("/admin/models", headers=bearer(CLIENT)).json()["models"]
    assert states[0]["state"] == "unloaded"  # nothing started for a refused request
    assert d.post("/v1/chat/completions", json=body, headers=bearer(CLIENT)).status_code == 200
    assert d.post("/v1/chat/completions", json=body, headers=bearer(OTHER)).status_code == 200
    assert d.get("/v1/models").status_code == 401
    assert d.get("/v1/models", headers=bearer(CLIENT)).status_code == 200
    assert d.get("/v2/models/a/ready").status_code == 401
    assert d.get("/health").status_code == 200
    # Without an admin key, /admin takes the client keys.
    assert d.get("/admin/models").status_code == 401
    assert d.get("/admin/models", headers=bearer(CLIENT)).status_code == 200
    log = d.log()
    assert CLIENT not in log and OTHER not in log and "wrong" not in log


def test_admin_key_is_separate(dynllm, spec) -> None:
    d = dynllm([spec("a")], api_keys=[CLIENT], admin_api_key=ADMIN)
    assert (
        d.post("/admin/models/load", json={"model": "a"}, headers=bearer(CLIENT)).status_code == 401
    )
    r = d.post("/admin/models/load", json={"model": "a"}, headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    assert d.get("/admin/models", headers=bearer(ADMIN)).status_code == 200
    # The admin key is not a client key.
    chat = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    assert d.post("/v1/chat/completions", json=chat, headers=bearer(ADMIN)).status_code == 401
    assert ADMIN not in d.log()


def test_keys_never_reach_a_backend_and_admin_wants_json(dynllm, spec, monkeypatch) -> None:
    from pathlib import Path

    monkeypatch.setenv("DYNLLM_API_KEYS", CLIENT)
    monkeypatch.setenv("DYNLLM_ADMIN_API_KEY", ADMIN)
    d = dynllm([spec("a")])
    r = d.post("/admin/models/load", json={"model": "a"}, headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    pid = d.get("/admin/models", headers=bearer(ADMIN)).json()["models"][0]["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"DYNLLM_API_KEYS" not in environ and CLIENT.encode() not in environ
    assert b"DYNLLM_ADMIN_API_KEY" not in environ and ADMIN.encode() not in environ
    # A cross-site form post (text/plain) cannot drive /admin.
    r = d.post(
        "/admin/models/unload",
        data='{"model": "a"}',
        headers={**bearer(ADMIN), "Content-Type": "text/plain"},
    )
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_no_keys_means_open(dynllm, spec) -> None:
    d = dynllm([spec("a")])
    assert d.chat("a", max_tokens=1).status_code == 200
    assert d.get("/admin/models").status_code == 200


def test_logs_endpoint(dynllm, spec) -> None:
    d = dynllm([spec("a"), spec("never")])
    assert d.chat("a", max_tokens=1).status_code == 200
    d.post("/admin/models/unload", json={"model": "a"}).raise_for_status()
    assert d.chat("a", max_tokens=1).status_code == 200
    r = d.get("/admin/models/a/logs", params={"lines": 1000})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model"] == "a" and doc["log_path"].endswith("/logs/a.log")
    marks = [x for x in doc["lines"] if x.startswith("=== dynllm: ")]
    assert len(marks) == 2  # both runs, each marked with its command line
    assert all("--port" in m for m in marks)
    assert len(d.get("/admin/models/a/logs", params={"lines": 3}).json()["lines"]) == 3
    assert d.get("/admin/models/never/logs").json()["lines"] == []
    for bad in ("0", "-1", "abc", "100001", "\u00b2", "9" * 5000):
        r = d.get("/admin/models/a/logs", params={"lines": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "lines"
    r = d.get("/admin/models/nope/logs")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
