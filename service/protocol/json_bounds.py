"""Bounds on a JSON body counted before it is parsed: the values it can hold, and when to parse it off the loop."""

from __future__ import annotations

import numpy as np

BIG_JSON = 256 * 1024  # bodies over this are validated off the event loop
_CHUNK = 1 << 20
_QUOTE, _COMMA = ord('"'), ord(",")


def json_values(body: bytes) -> int:
    """An upper bound on the values in any one JSON array or object of ``body``: commas outside strings, plus one.

    Counted with numpy, a megabyte at a time, before anything is parsed: a body of millions of
    tiny values is refused without allocating them (a regex over it would build a piece per string).
    """
    if body.count(b",") == 0:
        return 1
    clean = body.replace(b"\\\\", b"__").replace(b'\\"', b"__")  # escaped backslashes, then escaped quotes
    codes = np.frombuffer(clean, dtype=np.uint8)
    commas, inside = 0, 0
    for start in range(0, len(codes), _CHUNK):
        part = codes[start : start + _CHUNK]
        parity = (np.cumsum(part == _QUOTE, dtype=np.uint8) + inside) & 1  # odd: inside a string (mod 256 keeps parity)
        commas += int(np.count_nonzero((part == _COMMA) & (parity == 0)))
        inside = int(parity[-1])
    return commas + 1
