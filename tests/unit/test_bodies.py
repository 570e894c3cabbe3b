"""Finding and replacing the model in JSON and multipart bodies, and renaming it back
in streamed responses."""

from __future__ import annotations

import io
import os

import pytest

from dynllm import bodies
from dynllm.bodies import MultipartBody, Renamer, json_with_model, parse_json
from dynllm.errors import InvalidRequest

B = "XyZ-b0undary"
CT = f"multipart/form-data; boundary={B}"


def form(*parts: tuple[str, bytes, str | None], preamble: bytes = b"") -> bytes:
    out = [preamble]
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.append(f"--{B}\r\nContent-Disposition: {disp}\r\n".encode())
        if filename:
            out.append(b"Content-Type: audio/wav\r\n")
        out.append(b"\r\n" + value + b"\r\n")
    out.append(f"--{B}--\r\n".encode())
    return b"".join(out)


def parse(body: bytes, ct: str = CT) -> MultipartBody:
    return MultipartBody(io.BytesIO(body), ct)


def test_model_before_file() -> None:
    body = form(("model", b"whisper", None), ("file", b"RIFF....", "a.wav"))
    with parse(body) as mp:
        assert mp.model == "whisper"
        assert mp.size == len(body)
        assert mp.upstream(None).read() == body
        swapped = mp.upstream("/models/whisper-tiny@main").read()
    assert swapped == body.replace(b"\r\n\r\nwhisper\r\n", b"\r\n\r\n/models/whisper-tiny@main\r\n")


def test_model_after_a_large_file_spanning_many_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodies, "BLOCK", 4096)
    audio = os.urandom(50_000) + f"\r\n-{B}\r\n--{B[:-1]}".encode()  # near-delimiters in the file
    body = form(("file", audio, "a.wav"), ("language", b"en", None), ("model", b"m1", None))
    with parse(body, f'multipart/form-data; boundary="{B}"') as mp:
        assert mp.model == "m1"
        up = mp.upstream("other")
        assert len(up) == len(body) + 3
        chunks = []
        while piece := up.read(1000):
            chunks.append(piece)
    assert b"".join(chunks) == body.replace(b"\r\n\r\nm1\r\n", b"\r\n\r\nother\r\n")


@pytest.mark.parametrize("split", [4090, 4093, 4096, 4098, 4099, 4100])
def test_delimiter_split_across_scan_blocks(monkeypatch: pytest.MonkeyPatch, split: int) -> None:
    monkeypatch.setattr(bodies, "BLOCK", 4096)
    # Put the delimiter of the model part right across a block edge.
    head = form(("file", b"", "a.wav"))[: -len(f"--{B}--\r\n")]
    pad = split - len(head) - 2
    body = form(("file", b"a" * pad, "a.wav"), ("model", b"edge-model", None))
    with parse(body) as mp:
        assert mp.model == "edge-model"


def test_preamble_padding_and_unquoted_name() -> None:
    body = (
        b"ignored preamble\r\n"
        + f"--{B} \t\r\ncontent-disposition: form-data; name=model\r\n\r\nm\r\n".encode()
        + f"--{B}--\r\nepilogue --{B}\r\n".encode()
    )
    with parse(body) as mp:
        assert mp.model == "m"


def test_two_model_fields_are_refused() -> None:
    # The backend's parser may read the other one: DynLLM must route by the model it reads.
    body = form(("model", b"whisper", None), ("file", b"x", "a.wav"), ("model", b"/etc/x", None))
    with pytest.raises(InvalidRequest) as err:
        parse(body)
    assert err.value.code == "invalid_model" and "more than one" in err.value.message


def test_a_boundary_line_with_trailing_bytes_is_refused() -> None:
    # A client hiding a second form behind a lookalike boundary ("a" vs "a,b").
    inner = f'--{B}\r\nContent-Disposition: form-data; name="model"\r\n\r\nalias\r\n'.encode()
    body = (
        f"--{B}x\r\n".encode()
        + b'Content-Disposition: form-data; name="model"\r\n\r\n/other\r\n'
        + inner
        + f"--{B}--\r\n".encode()
    )
    with pytest.raises(InvalidRequest) as err:
        parse(body)
    assert err.value.code == "invalid_multipart"


def test_upstream_content_type_carries_the_boundary_as_read() -> None:
    body = form(("model", b"m", None))
    with parse(body, f"multipart/form-data; boundary={B},junk; charset=utf-8") as mp:
        pass
    # werkzeug reads the boundary up to the comma; the backend is told exactly that.
    assert mp.content_type == f'multipart/form-data; boundary="{B}"'


def test_model_field_must_be_a_nonempty_plain_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(form(("model", b"", None)))
    assert err.value.code == "invalid_model"
    with pytest.raises(InvalidRequest) as err:
        parse(form(("model", b"whisper", "model.txt")))
    assert err.value.code == "invalid_model" and "not a file" in err.value.message


def test_part_count_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bodies, "MAX_PARTS", 50)
    body = form(*[("x", b"1", None)] * 50, ("model", b"m", None))
    with pytest.raises(InvalidRequest) as err:
        parse(body)
    assert "more than 50 parts" in err.value.message
    with parse(form(*[("x", b"1", None)] * 49, ("model", b"m", None))) as mp:
        assert mp.model == "m"


def test_a_field_named_like_model_is_not_model() -> None:
    body = form(("model_name", b"x", None), ("file", b"data", "model.wav"))
    with pytest.raises(InvalidRequest) as err:
        parse(body)
    assert err.value.code == "missing_model"


@pytest.mark.parametrize(
    ("ct", "code"),
    [
        ("application/json", "invalid_content_type"),
        ("", "invalid_content_type"),
        ("multipart/form-data", "invalid_multipart"),
        ("multipart/form-data; boundary=", "invalid_multipart"),
        ('multipart/form-data; boundary="a\\"b"', "invalid_multipart"),
        ("multipart/form-data; boundary=" + "x" * 71, "invalid_multipart"),
        ('multipart/form-data; boundary="ends in space "', "invalid_multipart"),
    ],
)
def test_bad_content_types(ct: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(form(("model", b"m", None)), ct)
    assert err.value.code == code


def test_empty_and_truncated_bodies() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(b"")
    assert err.value.code == "invalid_multipart"
    with pytest.raises(InvalidRequest) as err:
        parse(form(("file", b"x", "a.wav")))
    assert err.value.code == "missing_model"
    truncated = f'--{B}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisp'.encode()
    with pytest.raises(InvalidRequest) as err:
        parse(truncated)
    assert err.value.code == "invalid_multipart"
    no_header_end = f'--{B}\r\nContent-Disposition: form-data; name="model"'.encode() + b"x" * 20000
    with pytest.raises(InvalidRequest) as err:
        parse(no_header_end)
    assert err.value.code == "invalid_multipart"


def test_model_value_too_long_or_not_utf8() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(form(("model", b"m" * 5000, None)))
    assert err.value.code == "invalid_model"
    with pytest.raises(InvalidRequest) as err:
        parse(form(("model", b"\xff\xfe", None)))
    assert err.value.code == "invalid_model"


def test_json_helpers() -> None:
    doc = parse_json(b'{"model": "a", "messages": [{"content": "h\\u00e9"}]}')
    assert json_with_model(doc, "/m/x@main") == (
        '{"model": "/m/x@main", "messages": [{"content": "hé"}]}'.encode()
    )
    for bad in (b"", b"[1]", b"{", b'"x"'):
        with pytest.raises(InvalidRequest):
            parse_json(bad)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_renamer_across_any_chunking(size: int) -> None:
    old, new = b'"/models/tiny"', b'"tiny"'
    stream = (
        b'data: {"model":"/models/tiny","x":1}\n\n'
        b'data: {"model":"/models/tiny"}\n\n'
        b'{"content":"\\"/models/tin"}'  # a near miss stays as it is
        b'"/models/tiny"'
    )
    r = Renamer(old, new)
    out = b"".join(r.feed(stream[i : i + size]) for i in range(0, len(stream), size)) + r.flush()
    assert out == stream.replace(old, new)


def test_renamer_holds_back_only_a_possible_prefix() -> None:
    r = Renamer(b'"/m/x"', b'"x"')
    assert r.feed(b'data: {"model":"/m') == b'data: {"model":'
    assert r.feed(b'/x"}\n\n') == b'"x"}\n\n'
    assert r.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert r.flush() == b""


def test_sniff_audio() -> None:
    from dynllm.relay import sniff_audio

    assert sniff_audio(b"RIFF\x24\x00\x00\x00WAVEfmt ") == "audio/wav"
    assert sniff_audio(b"RIFF\x24\x00\x00\x00AVI LIST") is None
    assert sniff_audio(b"ID3\x04") == "audio/mpeg"
    assert sniff_audio(b"OggS\x00") == "audio/ogg"
    assert sniff_audio(b'{"error": "x"}') is None
    assert sniff_audio(b"") is None
