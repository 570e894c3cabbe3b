"""DynLLM in front of a real llama-server, spoken to by the openai package, requests and curl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import openai
import pytest

from tests.support.harness import pid_alive, wait_for


@pytest.fixture
def client(real):  # noqa: ANN001, ANN201
    d = real()
    c = openai.OpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    c.dynllm = d  # type: ignore[attr-defined]
    yield c
    c.close()


def test_chat_non_stream_and_stream_agree(client) -> None:  # noqa: ANN001
    msgs = [{"role": "user", "content": "Hello there"}]
    full = client.chat.completions.create(model="chat", messages=msgs, max_tokens=12, temperature=0)
    text = full.choices[0].message.content
    assert text and text.isascii()
    assert full.choices[0].finish_reason == "length"
    assert full.model == "chat"  # the backend was told the public name
    assert full.usage.completion_tokens == 12

    pieces, finish = [], None
    stream = client.chat.completions.create(
        model="chat", messages=msgs, max_tokens=12, temperature=0, stream=True
    )
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == text
    assert finish == "length"


def test_completions(client) -> None:  # noqa: ANN001
    r = client.completions.create(model="chat", prompt="Once upon", max_tokens=6, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens == 6
    pieces = [
        c.choices[0].text
        for c in client.completions.create(
            model="chat", prompt="Once upon", max_tokens=6, temperature=0, stream=True
        )
        if c.choices
    ]
    assert "".join(pieces) == r.choices[0].text


def test_embeddings(client) -> None:  # noqa: ANN001
    r = client.embeddings.create(model="emb", input=["hello world", "good night"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) == 64
    assert r.data[0].embedding != r.data[1].embedding


def test_rerank(client) -> None:  # noqa: ANN001
    d = client.dynllm
    r = d.post(
        "/v1/rerank",
        json={"model": "rerank", "query": "hello", "documents": ["hello world", "blue sky"]},
    )
    assert r.status_code == 200
    results = r.json()["results"]
    assert sorted(x["index"] for x in results) == [0, 1]
    assert all(isinstance(x["relevance_score"], float) for x in results)


def test_wrong_endpoint_is_a_clear_openai_error(client) -> None:  # noqa: ANN001
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="emb", messages=[{"role": "user", "content": "x"}])
    assert "/v1/embeddings" in str(info.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}])


def test_eviction_between_two_real_models(real) -> None:  # noqa: ANN001
    d = real(budget=600)  # room for one chat model (400) plus the small ones
    c = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    a = c.chat.completions.create(model="chat", messages=msgs, max_tokens=4, temperature=0)
    pid_a = d.admin()["chat"]["pid"]
    b = c.chat.completions.create(model="chat-b", messages=msgs, max_tokens=4, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content  # same weights
    states = {n: m["state"] for n, m in d.admin().items()}
    assert states["chat"] == "unloaded" and states["chat-b"] == "loaded"
    assert not pid_alive(pid_a)
    assert d.admin()["chat-b"]["pid"] != pid_a
    c.close()


def test_kill_9_then_recovery_on_next_request(client) -> None:  # noqa: ANN001
    d = client.dynllm
    msgs = [{"role": "user", "content": "hi"}]
    first = client.chat.completions.create(model="chat", messages=msgs, max_tokens=4, temperature=0)
    pid = d.admin()["chat"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: d.state("chat") == "failed")
    again = client.chat.completions.create(model="chat", messages=msgs, max_tokens=4, temperature=0)
    assert again.choices[0].message.content == first.choices[0].message.content
    assert d.state("chat") == "loaded" and d.admin()["chat"]["pid"] != pid


def test_curl_stream_and_error(client) -> None:  # noqa: ANN001
    curl = shutil.which("curl")
    assert curl, "curl is installed by .ci/run"
    d = client.dynllm
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    out = subprocess.run(
        [
            curl,
            "-sN",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({**body, "stream": True}),
            d.url + "/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    events = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])
    res = subprocess.run(
        [curl, "-s", "-w", "\n%{http_code}", "-d", "{oops", d.url + "/v1/chat/completions"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    payload, status = res.rsplit("\n", 1)
    assert status == "400" and json.loads(payload)["error"]["code"] == "invalid_json"


def test_langchain_chat_model_and_embeddings(client) -> None:  # noqa: ANN001
    """LangChain's OpenAI integration, as an application would configure it."""
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    d = client.dynllm
    msgs = [{"role": "user", "content": "Hello there"}]
    want = (
        client.chat.completions.create(model="chat", messages=msgs, max_tokens=10, temperature=0)
        .choices[0]
        .message.content
    )
    llm = ChatOpenAI(
        model="chat",
        base_url=d.url + "/v1",
        api_key="unused",
        temperature=0,
        max_tokens=10,
        max_retries=0,
        timeout=60,
    )
    answer = llm.invoke([HumanMessage("Hello there")])
    assert answer.content == want
    assert answer.response_metadata["finish_reason"] == "length"
    streamed = "".join(str(part.content) for part in llm.stream([HumanMessage("Hello there")]))
    assert streamed == want

    # check_embedding_ctx_length=False: otherwise LangChain counts tokens with
    # tiktoken, whose vocabulary it downloads (and this machine is offline).
    emb = OpenAIEmbeddings(
        model="emb",
        base_url=d.url + "/v1",
        api_key="unused",
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    vectors = emb.embed_documents(["hello world", "good night"])
    direct = client.embeddings.create(model="emb", input=["hello world", "good night"])
    assert [len(v) for v in vectors] == [64, 64]
    assert vectors == [pytest.approx(e.embedding, abs=1e-5) for e in direct.data]
    assert emb.embed_query("hello world") == pytest.approx(vectors[0], abs=1e-5)
