"""The HTTP client layer, against ``responses`` (no sockets)."""

from __future__ import annotations

import pytest
import requests
import responses

from dynllm.errors import BackendTimeout, BackendUnavailable
from dynllm.relay import RelayBody, Upstream, downstream_headers, upstream_headers

URL = "http://127.0.0.1:9100/v1/chat/completions"


class FakeLease:
    def __init__(self) -> None:
        self.released = 0

    def release(self) -> None:
        self.released += 1


def test_hop_by_hop_and_auth_headers_stay_behind() -> None:
    out = upstream_headers(
        {
            "Content-Type": "application/json",
            "Connection": "keep-alive",
            "Transfer-Encoding": "chunked",
            "Authorization": "Bearer secret",
            "Host": "dynllm",
            "Content-Length": "12",
            "X-Request-Id": "abc",
        }
    )
    assert out == {"Content-Type": "application/json", "X-Request-Id": "abc"}


@responses.activate
def test_body_goes_upstream_byte_for_byte() -> None:
    body = b'{ "model" : "m",\n  "messages": [] , "x": 1.50 }'
    responses.post(URL, body=b'{"ok":true}', content_type="application/json")
    up = Upstream(pool_size=4, request_timeout=5)
    resp = up.send("POST", URL, body, {"Content-Type": "application/json"})
    assert responses.calls[0].request.body == body
    lease = FakeLease()
    relay = RelayBody(resp, lease, "m")
    assert b"".join(relay) == b'{"ok":true}'
    relay.close()
    relay.close()
    assert lease.released == 1


@responses.activate
def test_status_and_content_type_come_back_unchanged() -> None:
    responses.post(URL, body=b"nope", status=418, content_type="text/x-teapot")
    up = Upstream(pool_size=4, request_timeout=5)
    resp = up.send("POST", URL, b"{}", {})
    assert resp.status_code == 418
    headers = dict(downstream_headers(resp))
    assert headers["Content-Type"] == "text/x-teapot"
    assert headers["X-Accel-Buffering"] == "no"


@responses.activate
def test_connection_refused_is_backend_unavailable() -> None:
    responses.post(URL, body=requests.ConnectionError("refused"))
    with pytest.raises(BackendUnavailable) as info:
        Upstream(pool_size=4, request_timeout=5).send("POST", URL, b"{}", {})
    assert info.value.status == 502


@responses.activate
def test_timeout_is_backend_timeout() -> None:
    responses.post(URL, body=requests.ReadTimeout("slow"))
    with pytest.raises(BackendTimeout) as info:
        Upstream(pool_size=4, request_timeout=5).send("POST", URL, b"{}", {})
    assert info.value.status == 504


def test_close_before_iteration_still_releases() -> None:
    class Resp:
        headers = {"content-type": "text/event-stream"}
        closed = False

        class raw:  # noqa: N801
            chunked = False
            length_remaining = 0

        def close(self) -> None:
            self.closed = True

    resp, lease = Resp(), FakeLease()
    RelayBody(resp, lease, "m").close()  # type: ignore[arg-type]
    assert resp.closed and lease.released == 1
