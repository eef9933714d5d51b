"""The model worker's side: build a backend in this interpreter, answer generate requests over a pipe.

python -m scoder_lib.llm.worker_main      (started by `llm.worker.WorkerBackend`)
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


def serve() -> None:
    """The worker's loop: build the backend, then answer generate requests until close or end of input."""
    setup_logging()
    inp, out = os.dup(0), os.dup(1)
    os.dup2(2, 1)  # library prints go to stderr, never into the protocol
    backend: Backend | None = None
    while (msg := read_msg(inp)) is not None:
        try:
            if "init" in msg:
                init = msg["init"]
                backend = make_backend(
                    ModelSpec.model_validate(init["spec"]), Path(init["cache_dir"]), init["model_path"]
                )
                reply: Any = {
                    "name": backend.name,
                    "fingerprint": backend.fingerprint,
                    "chunk_size": backend.chunk_size,
                }
            elif "generate" in msg and backend is not None:
                reply = [r.to_json() for r in backend.generate([_request(d) for d in msg["generate"]])]
            else:
                if backend is not None:
                    backend.close()
                write_msg(out, {"ok": True})
                return
            write_msg(out, {"ok": reply})
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            write_msg(out, {"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    serve()
