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


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` content type, or a 400."""
    mimetype, options = parse_options_header(content_type)
    if mimetype != "multipart/form-data":
        raise InvalidRequest(
            f"this endpoint takes multipart/form-data, not {mimetype or 'an untyped body'}",
            code="invalid_content_type",
        )
    boundary = options.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise InvalidRequest(
            "multipart/form-data content type has no valid boundary", code="invalid_multipart"
        )
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidRequest("multipart boundary must be ASCII", code="invalid_multipart") from None


_NAME_RE = re.compile(rb'(?:^|;)\s*name\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.IGNORECASE)


def _field_name(headers: bytes) -> bytes | None:
    for line in headers.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == b"content-disposition":
            _, _, params = value.partition(b";")
            m = _NAME_RE.search(b";" + params)
            if m:
                return m.group(1) if m.group(1) is not None else m.group(2)
    return None


class MultipartBody:
    """An uploaded multipart body, spooled, with the position of its ``model`` value.

    Use as a context manager (or call :meth:`close`) so the spool is deleted.
    """

    def __init__(self, stream: IO[bytes], content_type: str) -> None:
        self.content_type = content_type
        self._boundary = multipart_boundary(content_type)
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
        except BaseException:
            self.close()
            raise
        try:
            self.model = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.close()
            raise InvalidRequest(
                "'model' must be UTF-8 text", param="model", code="invalid_model"
            ) from None

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

    def _find_model(self) -> tuple[int, int]:
        """Byte span of the first ``model`` field's value, or a 400 if there is none."""
        delim_len = len(self._boundary) + 2
        found: int | None = None  # where the model value starts
        for at in self._delimiters():
            if found is not None:
                return found, at - 2  # the CRLF before the delimiter is not the value's
            head = self._read_at(at + delim_len, MAX_PART_HEADERS + 4)
            if head.startswith(b"--"):
                break  # the closing delimiter
            if not head.startswith(b"\r\n"):
                continue
            end = head.find(b"\r\n\r\n", 2)
            if end == -1:
                if head.startswith(b"\r\n\r\n"):
                    end = 0
                else:
                    raise InvalidRequest(
                        "multipart part headers are malformed or too long", code="invalid_multipart"
                    )
            if _field_name(head[2:end]) == b"model":
                found = at + delim_len + end + 4
        if found is not None:
            raise InvalidRequest(
                "multipart body ends inside the 'model' field", code="invalid_multipart"
            )
        raise InvalidRequest(
            "you must provide a model parameter (a 'model' form field)",
            param="model",
            code="missing_model",
        )

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
