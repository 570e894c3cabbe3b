"""Request bodies: find the ``model`` a request names, and put another one in its place.

JSON bodies are small and parsed whole.  Multipart uploads (audio) can be
hundreds of megabytes, so they are copied once into a spooled temporary file
(at most :data:`SPOOL_MEMORY` bytes in memory, the rest on disk), scanned there
for the ``model`` field, and sent upstream from that file: unchanged, or with
just the bytes of the ``model`` value swapped.  :class:`Renamer` does the
reverse on the response, turning a backend's model value back into the public
name as the bytes stream past.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from werkzeug.http import parse_options_header

from .errors import InvalidRequest

#: Bytes of an upload kept in memory before the spool moves to disk.
SPOOL_MEMORY = 1024 * 1024
#: Piece size for copying and scanning uploads.
BLOCK = 256 * 1024
#: Longest part header block accepted while looking for the ``model`` field.
MAX_PART_HEADERS = 16 * 1024
#: Longest ``model`` value accepted in a multipart body.
MAX_MODEL_VALUE = 4096
#: Most parts a multipart body may have (each costs a header read).
MAX_PARTS = 1000


# --------------------------------------------------------------------------- JSON


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body, with a 400 for anything else."""
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object", code="invalid_json")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(doc, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    return doc


def check_model(model: Any) -> str:
    """The ``model`` value of a request, with a 400 when it is absent or not a name."""
    if model is None:
        raise InvalidRequest(
            "you must provide a model parameter", param="model", code="missing_model"
        )
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "'model' must be a non-empty string", param="model", code="invalid_model"
        )
    return model


def json_with_model(doc: dict[str, Any], model: str) -> bytes:
    """``doc`` re-encoded with its ``model`` replaced."""
    return json.dumps({**doc, "model": model}, ensure_ascii=False).encode()


# --------------------------------------------------------------------------- multipart


#: RFC 2046 boundary: 1-70 of these characters, the last not a space.
_BOUNDARY_RE = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]\Z")


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type, or a 400."""
    mimetype, options = parse_options_header(content_type)
    if mimetype != "multipart/form-data":
        raise InvalidRequest(
            f"this endpoint takes multipart/form-data, not {mimetype or 'an untyped body'}",
            code="invalid_content_type",
        )
    boundary = options.get("boundary", "")
    if not _BOUNDARY_RE.match(boundary):
        raise InvalidRequest(
            "multipart/form-data content type has no valid boundary (1-70 characters of "
            "letters, digits and '()+_,-./:=? , not ending in a space)",
            code="invalid_multipart",
        )
    return boundary.encode("ascii")


_NAME_RE = re.compile(rb'(?:^|;)\s*name\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.IGNORECASE)
_FILENAME_RE = re.compile(rb"(?:^|;)\s*filename\*?\s*=", re.IGNORECASE)
#: What may follow ``--boundary`` on a delimiter line: transport padding, then CRLF.
_DELIMITER_END = re.compile(rb"[ \t]*\r\n")


def _disposition(headers: bytes) -> tuple[bytes | None, bool]:
    """The form field name of a part, and whether it is a file upload."""
    for line in headers.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == b"content-disposition":
            _, _, params = value.partition(b";")
            params = b";" + params
            m = _NAME_RE.search(params)
            name = None
            if m:
                name = m.group(1) if m.group(1) is not None else m.group(2)
            return name, _FILENAME_RE.search(params) is not None
    return None, False


def _malformed(what: str) -> InvalidRequest:
    return InvalidRequest(f"malformed multipart body: {what}", code="invalid_multipart")


class MultipartBody:
    """An uploaded multipart body, spooled, with the position of its ``model`` value.

    The whole body is checked, strictly, because the backend parses it again
    with its own parser: every ``--boundary`` at the start of a line must be a
    well-formed delimiter, and there must be exactly one ``model`` field, so
    the model DynLLM routes by is the model the backend reads.

    Use as a context manager (or call :meth:`close`) so the spool is deleted.
    """

    def __init__(self, stream: IO[bytes], content_type: str) -> None:
        self._boundary = multipart_boundary(content_type)
        #: The content type sent upstream: the boundary exactly as DynLLM read it.
        self.content_type = f'multipart/form-data; boundary="{self._boundary.decode()}"'
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 (closed by close())
        try:
            self.size = self._copy(stream)
            self._span = self._find_model()
            start, end = self._span
            if end - start > MAX_MODEL_VALUE:
                raise InvalidRequest(
                    f"'model' is longer than {MAX_MODEL_VALUE} bytes",
                    param="model",
                    code="invalid_model",
                )
            raw = self._read_at(start, end - start)
            try:
                self.model = check_model(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidRequest(
                    "'model' must be UTF-8 text", param="model", code="invalid_model"
                ) from None
        except BaseException:
            self.close()
            raise

    def _copy(self, stream: IO[bytes]) -> int:
        size = 0
        while True:
            block = stream.read(BLOCK)
            if not block:
                return size
            self._file.write(block)
            size += len(block)

    def _read_at(self, pos: int, n: int) -> bytes:
        self._file.seek(pos)
        return self._file.read(n)

    def _delimiters(self) -> Iterator[int]:
        """Offsets of every ``--boundary`` that starts a line."""
        delim = b"--" + self._boundary
        overlap = len(delim) + 2
        pos = 0
        while pos < self.size:
            window = self._read_at(pos, BLOCK + overlap)
            i = window.find(delim)
            while i != -1 and i < BLOCK:
                at = pos + i
                before = window[i - 2 : i] if i >= 2 else self._read_at(max(0, at - 2), 2)
                if at == 0 or before == b"\r\n":
                    yield at
                i = window.find(delim, i + 1)
            pos += BLOCK

    def _part_headers(self, at: int) -> bytes:
        """The header block of the part whose headers start at ``at`` (without the blank line)."""
        head = self._read_at(at, 1024)
        if head.startswith(b"\r\n"):
            return b""  # a part without headers
        end = head.find(b"\r\n\r\n")
        if end == -1 and len(head) == 1024:
            head = self._read_at(at, MAX_PART_HEADERS + 4)
            end = head.find(b"\r\n\r\n")
        if end == -1:
            raise _malformed("part headers are unterminated or longer than 16 KiB")
        return head[:end]

    def _find_model(self) -> tuple[int, int]:
        """Byte span of the one ``model`` field's value, or a 400."""
        delim_len = len(self._boundary) + 2
        span: tuple[int, int] | None = None
        value_start: int | None = None  # set while the model part is the current one
        parts = 0
        closed = False
        for at in self._delimiters():
            if value_start is not None:
                span = (value_start, at - 2)  # the CRLF before a delimiter is not the value's
                value_start = None
            after = self._read_at(at + delim_len, 2)
            if after == b"--":
                closed = True
                break  # the close delimiter; anything after it is an epilogue
            line_end = _DELIMITER_END.match(self._read_at(at + delim_len, 80))
            if line_end is None:
                raise _malformed("a boundary line has something after the boundary")
            parts += 1  # noqa: SIM113 (counts well-formed parts only)
            if parts > MAX_PARTS:
                raise _malformed(f"more than {MAX_PARTS} parts")
            headers_at = at + delim_len + line_end.end()
            headers = self._part_headers(headers_at)
            name, is_file = _disposition(headers)
            if name == b"model":
                if span is not None or value_start is not None:
                    raise InvalidRequest(
                        "the form has more than one 'model' field",
                        param="model",
                        code="invalid_model",
                    )
                if is_file:
                    raise InvalidRequest(
                        "'model' must be a plain form field, not a file",
                        param="model",
                        code="invalid_model",
                    )
                value_start = headers_at + (len(headers) + 4 if headers else 2)
        if value_start is not None or not closed:
            raise _malformed("the body ends before its closing boundary")
        if span is None:
            raise InvalidRequest(
                "you must provide a model parameter (a 'model' form field)",
                param="model",
                code="missing_model",
            )
        return span

    def upstream(self, model: str | None) -> SplicedFile:
        """The body to send upstream, with the ``model`` value replaced when given."""
        start, end = self._span
        if model is None:
            return SplicedFile(self._file, [(0, self.size)])
        return SplicedFile(self._file, [(0, start), model.encode("utf-8"), (end, self.size)])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MultipartBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SplicedFile:
    """A read-only file made of byte ranges of another file and literal pieces.

    It has a length, so the HTTP client sends a ``Content-Length`` and streams
    the body in blocks without holding it.
    """

    def __init__(self, source: IO[bytes], pieces: list[tuple[int, int] | bytes]) -> None:
        self._source = source
        self._pieces = pieces
        self._len = sum(len(p) if isinstance(p, bytes) else p[1] - p[0] for p in pieces)
        self._index = 0
        self._offset = 0  # within the current piece

    def __len__(self) -> int:
        return self._len

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._len
        out: list[bytes] = []
        while n > 0 and self._index < len(self._pieces):
            piece = self._pieces[self._index]
            if isinstance(piece, bytes):
                data = piece[self._offset : self._offset + n]
            else:
                start, end = piece
                self._source.seek(start + self._offset)
                data = self._source.read(min(n, end - start - self._offset))
            if not data:
                self._index += 1
                self._offset = 0
                continue
            out.append(data)
            self._offset += len(data)
            n -= len(data)
        return b"".join(out)


# --------------------------------------------------------------------------- responses


class Renamer:
    """Replace one byte string with another in a stream of chunks.

    Only the tail of a chunk that could be the start of a split occurrence is
    held back (until the next chunk or :meth:`flush`); everything else goes out
    at once, so event streams are not delayed.
    """

    def __init__(self, old: bytes, new: bytes) -> None:
        if not old:
            raise ValueError("nothing to replace")
        self.old = old
        self.new = new
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        out = data.replace(self.old, self.new)
        # The part after the last complete occurrence may end with a partial one.
        last = data.rfind(self.old)
        rest = data[last + len(self.old) :] if last != -1 else data
        keep = 0
        for k in range(min(len(self.old) - 1, len(rest)), 0, -1):
            if rest.endswith(self.old[:k]):
                keep = k
                break
        self._held = rest[len(rest) - keep :] if keep else b""
        return out[: len(out) - keep] if keep else out

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


def json_string(value: str) -> bytes:
    """``value`` as a JSON string literal, as backends write it."""
    return json.dumps(value, ensure_ascii=False).encode()
