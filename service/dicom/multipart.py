"""An incremental ``multipart/related`` reader (RFC 2046/2387) for STOW-RS bodies of any size.

``parts`` reads a byte stream and yields one part at a time, its body held in memory up to a
cap; a part over the cap is read to its end without being kept (``Part.too_large``), so what
is held at once is one part, never the whole body. Parsing errors raise ``MalformedInput``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

from biomed.errors import MalformedInput

MAX_HEADER_BYTES = 16 * 1024  # the header block of one part
MAX_PREAMBLE_BYTES = 64 * 1024


@dataclass
class Part:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    size: int = 0
    too_large: bool = False

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def parameters(content_type: str) -> dict[str, str]:
    """The parameters of a Content-Type value (RFC 9110 8.3.1), names lower-cased, quoted values unquoted.

    A ``;`` inside a quoted value (``boundary="a;b"``) belongs to the value, and a backslash in one quotes
    the character after it.
    """
    out: dict[str, str] = {}
    text, i, n = content_type, content_type.find(";"), len(content_type)
    while 0 <= i < n:
        i += 1
        eq = text.find("=", i)
        semi = text.find(";", i)
        if eq < 0 or (0 <= semi < eq):  # a parameter without a value
            i = semi
            continue
        name = text[i:eq].strip().lower()
        j = eq + 1
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == '"':
            value, j = _quoted(text, j + 1)
            semi = text.find(";", j)
        else:
            semi = text.find(";", j)
            value = text[j : semi if semi >= 0 else n].strip()
        out.setdefault(name, value)
        i = semi
    return out


def _quoted(text: str, start: int) -> tuple[str, int]:
    """A quoted string's value from just after its opening quote, and the index after its closing one."""
    chars, j = [], start
    while j < len(text) and text[j] != '"':
        if text[j] == "\\" and j + 1 < len(text):
            j += 1
        chars.append(text[j])
        j += 1
    return "".join(chars), j + 1


def boundary_of(content_type: str) -> bytes:
    """The ``boundary`` parameter of a Content-Type value (quoted or not); MalformedInput when absent or invalid."""
    value = parameters(content_type).get("boundary")
    if value is not None and 1 <= len(value) <= 70 and all(32 <= ord(ch) < 127 for ch in value) \
            and not value.endswith(" "):
        return value.encode("ascii")
    raise MalformedInput("the multipart/related body names no valid boundary (1-70 characters) in its Content-Type")


def parameter(content_type: str, name: str) -> str | None:
    """A parameter of a Content-Type value, unquoted and lower-cased (None when absent)."""
    value = parameters(content_type).get(name)
    return None if value is None else value.lower()


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line.strip():
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise MalformedInput("a part of the multipart/related body has a malformed header line")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


async def parts(stream: AsyncIterator[bytes], boundary: bytes, max_part: int) -> AsyncIterator[Part]:
    """The parts of a multipart body read from ``stream``, one at a time (module docstring)."""
    delimiter = b"\r\n--" + boundary
    buf = bytearray(b"\r\n")  # the first delimiter may open the body without a preceding CRLF
    chunks = stream.__aiter__()
    ended = False

    async def more() -> bool:
        nonlocal ended
        if ended:
            return False
        try:
            buf.extend(await chunks.__anext__())
        except StopAsyncIteration:
            ended = True
        return not ended

    # The preamble, up to the first delimiter.
    while (start := buf.find(delimiter)) < 0:
        if len(buf) > MAX_PREAMBLE_BYTES + len(delimiter):
            raise MalformedInput("no multipart boundary found at the start of the body")
        if not await more():
            raise MalformedInput("the body holds no multipart/related part delimited by its boundary")
    del buf[: start + len(delimiter)]
    while True:
        # After a delimiter: "--" closes the body; else transport padding and CRLF, then the part's headers.
        while len(buf) < 2 and await more():
            pass
        if buf[:2] == b"--":
            return
        while (eol := buf.find(b"\r\n")) < 0:
            if len(buf) > 1024 or not await more():
                raise MalformedInput("a multipart delimiter line is not terminated")
        if buf[:eol].strip(b" \t"):
            raise MalformedInput("a multipart delimiter is followed by unexpected characters")
        del buf[: eol + 2]
        while (end := buf.find(b"\r\n\r\n")) < 0 and not buf.startswith(b"\r\n"):
            if len(buf) > MAX_HEADER_BYTES:
                raise MalformedInput(f"the headers of a multipart part are over {MAX_HEADER_BYTES // 1024} KB")
            if not await more():
                raise MalformedInput("the multipart body ends inside a part's headers")
        if buf.startswith(b"\r\n"):  # no headers at all
            part = Part()
            del buf[:2]
        else:
            part = Part(_headers(bytes(buf[:end])))
            del buf[: end + 4]
        body = bytearray()
        while True:
            at = buf.find(delimiter)
            if at >= 0:
                take = at
            else:
                take = max(len(buf) - len(delimiter) + 1, 0)  # keep what could be the start of a delimiter
            if take:
                part.size += take
                if part.size > max_part:
                    part.too_large = True
                    body = bytearray()
                else:
                    body += buf[:take]
                del buf[:take]
            if at >= 0:
                del buf[: len(delimiter)]
                break
            if not await more():
                raise MalformedInput("the multipart body ends inside a part (no closing boundary)")
        part.data = bytes(body)
        del body
        yield part
