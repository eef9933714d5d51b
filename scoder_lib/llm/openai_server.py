"""A small OpenAI-compatible HTTP server in front of any `Backend`, with fault injection for tests.

Serves POST /v1/chat/completions, POST /v1/completions and GET /v1/models on 127.0.0.1. Tests use
it to exercise the `openai` backend over real HTTP; users can put a local model behind the teacher
interface with it:

    SCODER_SERVER_KEY=... python -m scoder_lib.llm.openai_server --model micro --port 8000 \
        --api-key-env SCODER_SERVER_KEY

Fields a request leaves out take `GenRequest`'s defaults (greedy, 512 new tokens), not OpenAI's.
Any model name is accepted and echoed back: the client's cache key holds the name it sent.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from scoder_lib.core.config import REPO_ROOT, ModelSpec
from scoder_lib.core.logs import get_logger, setup_logging
from scoder_lib.llm.base import Backend, GenRequest, GenResult
from scoder_lib.llm.generator import make_backend
from scoder_lib.llm.openai_protocol import (
    chat_response,
    completion_response,
    error_body,
    parse_chat,
    parse_completion,
)

log = get_logger("scoder_lib.openai_server")  # not __name__: it is __main__ under `python -m`


@dataclass(frozen=True)
class Faults:
    """An injected failure for `count` requests: sleep `delay_s`, then answer `status` if set.

    A delay longer than the client's timeout makes those requests time out; `message` is the
    error text sent back (tests put secrets in it to check that clients redact them).
    """

    count: int = 0
    status: int | None = None
    delay_s: float = 0.0
    message: str = "injected fault"


# ----------------------------------------------------------------------------- batching
class _Batcher:
    """Runs the backend on one thread, batching requests that arrive together.

    Why: backends are not thread-safe, and a client with N concurrent connections should cost one
    batched decode, not N sequential ones.
    """

    def __init__(self, backend: Backend, max_batch: int, wait_s: float):
        self.backend, self.max_batch, self.wait_s = backend, max_batch, wait_s
        self.queue: queue.Queue[tuple[GenRequest, Future[GenResult]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="openai-server-batcher", daemon=True)
        self.thread.start()

    def submit(self, requests: list[GenRequest]) -> list[GenResult]:
        futures: list[Future[GenResult]] = [Future() for _ in requests]
        for req, fut in zip(requests, futures):
            self.queue.put((req, fut))
        return [f.result() for f in futures]

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                results = self.backend.generate([req for req, _ in batch])
            except Exception as exc:  # noqa: BLE001 - the handler turns it into an HTTP 500
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), res in zip(batch, results):
                fut.set_result(res)

    def _next_batch(self) -> list[tuple[GenRequest, Future[GenResult]]] | None:
        first = self.queue.get()
        if first is None:
            return None
        batch, deadline = [first], time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                break
            if item is None:
                self.queue.put(None)  # stop after this batch
                break
            batch.append(item)
        return batch


# ----------------------------------------------------------------------------- request parsing
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    server: _HTTPServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        app = self.server.app
        if self.path.rstrip("/") != "/v1/models":
            return self._send(404, error_body(404, f"no route GET {self.path}"))
        if not app.authorized(self.headers.get("Authorization")):
            return self._send(401, error_body(401, "missing or incorrect API key"))
        self._send(200, {"object": "list", "data": [{"id": app.model_name, "object": "model", "owned_by": "scoder"}]})

    def do_POST(self) -> None:  # noqa: N802
        status, body = self.server.app.handle(self.path, self.headers.get("Authorization"), self._body())
        self._send(status, body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): nothing left to answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - overrides the stdlib name
        log.debug("%s %s", self.address_string(), format % args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a handler sleeping on an injected delay must not block shutdown
    app: OpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class OpenAIServer:
    """Serve `backend` as an OpenAI-compatible endpoint; `url` is the client's `base_url`.

    `api_key`: when set, requests must carry `Authorization: Bearer <api_key>` (else 401).
    """

    def __init__(
        self,
        backend: Backend,
        model_name: str = "local",
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        max_batch: int = 16,
        batch_wait_s: float = 0.01,
    ):
        self.backend, self.model_name = backend, model_name
        self._api_key = api_key
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.app = self
        self._batcher = _Batcher(backend, max_batch, batch_wait_s)
        self._lock = threading.Lock()
        self._faults: list[list[Any]] = []  # [fault, requests it has left], applied in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {"requests": 0, "chat": 0, "completions": 0, "faults": 0, "generated": 0}
        self.bodies: deque[dict[str, Any]] = deque(maxlen=1000)  # recent request bodies (tests inspect them)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-server", daemon=True)
        self._thread.start()
        log.info("serving %s (%s backend) at %s", self.model_name, self.backend.name, self.url)
        return self

    def close(self) -> None:
        self._stop.set()  # wakes handlers sleeping on an injected delay
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()
        self._batcher.close()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ faults and auth
    def set_faults(self, *faults: Faults) -> None:
        """Hit the next requests with `faults` in turn, each for its `count` (replacing any left over)."""
        with self._lock:
            self._faults = [[f, f.count] for f in faults if f.count > 0]

    def reset(self) -> None:
        """Clear faults, counters and recorded bodies (between tests)."""
        self.set_faults()
        with self._lock:
            self.counts = dict.fromkeys(self.counts, 0)
            self.bodies.clear()

    def authorized(self, header: str | None) -> bool:
        return self._api_key is None or header == f"Bearer {self._api_key}"

    def _take_fault(self) -> Faults | None:
        with self._lock:
            self.counts["requests"] += 1
            if not self._faults:
                return None
            fault = self._faults[0][0]
            self._faults[0][1] -= 1
            if self._faults[0][1] == 0:
                self._faults.pop(0)
            self.counts["faults"] += 1
            return fault

    # ------------------------------------------------------------------ requests
    def handle(self, path: str, auth: str | None, raw: bytes) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) for one POST."""
        fault = self._take_fault()
        if fault is not None:
            if fault.delay_s > 0 and self._stop.wait(fault.delay_s):
                return 503, error_body(503, "server shutting down")
            if fault.status is not None:
                return fault.status, error_body(fault.status, fault.message)
        if not self.authorized(auth):
            return 401, error_body(401, "missing or incorrect API key")
        route = path.rstrip("/")
        if route not in ("/v1/chat/completions", "/v1/completions"):
            return 404, error_body(404, f"no route POST {path}")
        try:
            body = json.loads(raw or b"{}")
            chat = route == "/v1/chat/completions"
            requests = parse_chat(body) if chat else parse_completion(body)
        except (ValueError, TypeError, AttributeError) as exc:  # JSON, fields, GenRequest checks
            return 400, error_body(400, f"bad request: {exc}")
        return self._generate(chat, body, requests)

    def _generate(self, chat: bool, body: dict[str, Any], requests: list[GenRequest]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.counts["chat" if chat else "completions"] += 1
            self.bodies.append(body)
        try:
            results = self._batcher.submit(requests)
        except Exception as exc:  # noqa: BLE001 - report backend failures as HTTP 500
            log.exception("backend failed")
            return 500, error_body(500, f"backend error: {type(exc).__name__}: {exc}")
        with self._lock:
            self.counts["generated"] += sum(len(r.completions) for r in results)
        model = str(body.get("model") or self.model_name)
        return 200, chat_response(model, results) if chat else completion_response(model, results)


# ----------------------------------------------------------------------------- CLI
def _args(argv: list[str] | None) -> argparse.Namespace:

    ap = argparse.ArgumentParser(description="Serve a local model as an OpenAI-compatible endpoint.")
    ap.add_argument("--model", default="micro", help="ModelSpec name: micro, smollm2-135m-instruct, a folder ...")
    ap.add_argument("--served-name", default=None, help="name reported by /v1/models (default: --model)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--cache-dir", default=str(REPO_ROOT / ".cache/scoder"))
    ap.add_argument("--batch-size", type=int, default=16)
    # The key comes from the environment, never argv: argv is visible to every user in `ps`.
    ap.add_argument("--api-key-env", default=None, help="environment variable holding the key clients must send")
    return ap.parse_args(argv)


def serve_until_stopped(server: OpenAIServer) -> None:
    """Block until Ctrl-C or SIGTERM, then close the server cleanly."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops it as cleanly as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        log.info("stopping")
        server.close()


def api_key(env: str | None) -> str | None:
    """The key clients must send, from the environment variable `env` (never from argv: `ps` shows argv)."""
    key = os.environ.get(env) if env else None
    if env and not key:
        raise SystemExit(f"--api-key-env {env}: that environment variable is not set")
    return key


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    setup_logging()
    backend = make_backend(ModelSpec(name=args.model, batch_size=args.batch_size), Path(args.cache_dir))
    server = OpenAIServer(
        backend,
        args.served_name or args.model,
        port=args.port,
        api_key=api_key(args.api_key_env),
        max_batch=args.batch_size,
    ).start()
    serve_until_stopped(server)


if __name__ == "__main__":
    main()
