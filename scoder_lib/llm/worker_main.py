"""The model worker's side: build backends in this interpreter, answer generate requests over a pipe.

python -m scoder_lib.llm.worker_main      (started by `llm.worker`; one per interpreter and process)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scoder_lib.core.config import ModelSpec
from scoder_lib.core.logs import setup_logging
from scoder_lib.core.wire import read_msg, write_msg
from scoder_lib.llm.base import Backend, GenRequest
from scoder_lib.llm.generator import make_backend


def _request(d: dict[str, Any]) -> GenRequest:
    return GenRequest(**{**d, "messages": tuple(tuple(m) for m in d["messages"]), "stop": tuple(d["stop"])})


def _answer(msg: dict[str, Any], backends: dict[int, Backend]) -> Any:
    if "init" in msg:
        init = msg["init"]
        b = make_backend(ModelSpec.model_validate(init["spec"]), Path(init["cache_dir"]), init["model_path"])
        backends[init["handle"]] = b
        return {"name": b.name, "fingerprint": b.fingerprint, "chunk_size": b.chunk_size}
    if "generate" in msg:
        return [r.to_json() for r in backends[msg["handle"]].generate([_request(d) for d in msg["generate"]])]
    if "close" in msg:
        backends.pop(msg["close"]).close()
        return True
    raise ValueError(f"unknown message {sorted(msg)}")


def serve() -> None:
    """Answer messages until `exit` or the end of input; a failure is reported, never fatal."""
    setup_logging()
    inp, out = os.dup(0), os.dup(1)
    os.dup2(2, 1)  # library prints go to stderr, never into the protocol
    backends: dict[int, Backend] = {}
    while (msg := read_msg(inp)) is not None and "exit" not in msg:
        try:
            write_msg(out, {"ok": _answer(msg, backends)})
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            write_msg(out, {"error": f"{type(exc).__name__}: {exc}"})
    for b in backends.values():
        b.close()
    write_msg(out, {"ok": True})


if __name__ == "__main__":
    serve()
