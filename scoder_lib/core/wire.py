"""Length-prefixed JSON messages on pipes: how a parent talks to a worker process (sandbox, model worker).

Standard library only: the sandbox worker (`sandbox/harness/zygote.py`) imports it inside the sandbox.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

_HEADER = struct.Struct(">I")  # body length, big-endian


def write_msg(fd: int, obj: Any) -> None:
    """Write one message, looping over short writes."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    view = memoryview(_HEADER.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view) :]


def read_msg(fd: int, deadline: float | None = None) -> Any:
    """One message; None at end of file; TimeoutError once `deadline` (time.monotonic) passes."""
    head = _read_exact(fd, _HEADER.size, deadline)
    if head is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(head)[0], deadline)
    return None if body is None else json.loads(body)


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    parts, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
