"""Tagged JSON for plain Python data (tuples, sets, complex, big ints ...) crossing the sandbox wall.

Why not pickle: the parent must never unpickle bytes that came out of a sandbox.
"""

from __future__ import annotations

import base64
import collections
import json
from typing import Any

# Why hex: Python 3.11 refuses decimal str() of ints above 4300 digits, and factorial-style
# benchmark outputs exceed that; power-of-two bases are exempt from the limit.
_BIG_INT = 1 << 512


def encode(x: Any) -> Any:
    """JSON-able form of `x`; raises TypeError for anything that is not plain data."""
    t = type(x)
    if x is None or t in (bool, str, float):
        return x
    if t is int:
        return {"$int": hex(x)} if abs(x) >= _BIG_INT else x
    if t is list:
        return [encode(v) for v in x]
    if t is tuple:
        return {"$t": [encode(v) for v in x]}
    if t in _DICTS:  # a defaultdict's factory cannot travel; it compares as a dict anyway
        return {_DICTS[t]: [[encode(k), encode(v)] for k, v in x.items()]}
    if t in (set, frozenset):
        return {"$set" if t is set else "$fset": [encode(v) for v in x]}
    if t is complex:
        return {"$c": [x.real, x.imag]}
    if t is bytes:
        return {"$b": base64.b64encode(x).decode("ascii")}
    raise TypeError(f"cannot transport a value of type {t.__module__}.{t.__qualname__}")


_DICTS = {dict: "$d", collections.defaultdict: "$d", collections.Counter: "$counter", collections.OrderedDict: "$odict"}
_DECODERS = {
    "$int": lambda v: int(v, 16),
    "$t": lambda v: tuple(decode(i) for i in v),
    "$d": lambda v: {decode(k): decode(i) for k, i in v},
    "$counter": lambda v: collections.Counter({decode(k): decode(i) for k, i in v}),
    "$odict": lambda v: collections.OrderedDict((decode(k), decode(i)) for k, i in v),
    "$set": lambda v: {decode(i) for i in v},
    "$fset": lambda v: frozenset(decode(i) for i in v),
    "$c": lambda v: complex(v[0], v[1]),
    "$b": lambda v: base64.b64decode(v),
}


def decode(x: Any) -> Any:
    """Inverse of `encode`."""
    if type(x) is list:
        return [decode(v) for v in x]
    if type(x) is dict:
        ((tag, value),) = x.items()
        return _DECODERS[tag](value)
    return x


def dumps(x: Any) -> str:
    return json.dumps(encode(x), separators=(",", ":"))


def loads(s: str) -> Any:
    data = json.loads(s)
    return decode(data) if '{"$' in s else data  # untagged JSON needs no second walk
