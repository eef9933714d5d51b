"""OpenAI-compatible generation backend: a proprietary teacher, or `vllm serve`, over HTTP.

Chat requests go to chat.completions and raw prompts to completions, on a bounded thread pool,
with retries (exponential backoff + jitter) on 429/5xx/connection errors. Every result records its
tokens, cost and latency; the backend keeps running totals. The API key comes from the environment
only and is redacted from every message this module writes.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import openai

from scoder_lib.core.config import ModelSpec, OpenAIOptions
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.logs import get_logger
from scoder_lib.llm.base import Backend, Completion, GenRequest, GenResult

log = get_logger(__name__)

RETRY_STATUS = frozenset({408, 409, 429})  # plus every 5xx; other 4xx will not heal on retry
MAX_BACKOFF_S = 60.0
MAX_MESSAGE_CHARS = 300


class OpenAIBackendError(RuntimeError):
    """A request that failed for good (non-retryable, or still failing after retries)."""


def cost_usd(prompt_tokens: int, completion_tokens: int, options: OpenAIOptions) -> float:
    """Price of one call in US dollars, from the per-million-token prices in `options`."""
    return (
        prompt_tokens * options.price_per_1m_input_usd + completion_tokens * options.price_per_1m_output_usd
    ) / 1_000_000


def read_api_key(env: str) -> str:
    """The key held in environment variable `env`; a clear error naming the variable if unset."""
    key = os.environ.get(env, "")
    if not key:
        raise OpenAIBackendError(
            f"backend 'openai' reads its API key from the environment variable {env}, which is not set; "
            f"export it (for a local server that accepts any key: export {env}=EMPTY)"
        )
    return key


def split_tokens(total: int, texts: list[str]) -> list[int]:
    """Share a response's completion tokens among its choices by text length.

    Why: the API reports only the sum over the n choices; the shares add up to that sum exactly.
    """
    if len(texts) == 1:
        return [total]
    weights = [len(t) for t in texts] if any(texts) else [1] * len(texts)
    raw = [total * w / sum(weights) for w in weights]
    out = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: out[i] - raw[i])[: total - sum(out)]:
        out[i] += 1  # largest remainders take the leftover tokens
    return out


def _retryable(exc: openai.APIError) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True
    status = getattr(exc, "status_code", None)
    return status is not None and (status in RETRY_STATUS or status >= 500)


def _retry_after_s(exc: openai.APIError) -> float:
    """The server's requested wait (retry-after-ms / retry-after in seconds), else 0."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
    return 0.0


class OpenAIBackend(Backend):
    """Backend for any OpenAI-compatible endpoint; `totals` sums tokens, cost and retries."""

    name = "openai"

    def __init__(self, spec: ModelSpec):
        self.spec, self.options = spec, spec.openai
        key = read_api_key(self.options.api_key_env)
        self._secret = key  # kept only to redact it from messages
        self.base_url = self.options.base_url.rstrip("/")
        # Not the key: who pays does not change the outputs.
        self.fingerprint = fingerprint({"base_url": self.base_url, "model": spec.name})
        self.chunk_size = 4 * max(self.options.max_concurrency, 1)  # the cache saves every few seconds
        # max_retries=0: retries happen here, so they are counted, logged and jittered in one place.
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.options.timeout_s, max_retries=0)
        self.totals: dict[str, float] = {
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
            "retries": 0,
            "failures": 0,
        }
        self._lock = threading.Lock()
        self._rng = random.Random()  # jitter only: never affects outputs

    # ------------------------------------------------------------------ public
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        results: list[GenResult | None] = [None] * len(requests)
        workers = min(max(self.options.max_concurrency, 1), len(requests))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai")
        stop = threading.Event()
        futures = {pool.submit(self._one, i, req, stop): i for i, req in enumerate(requests)}
        try:
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
        except BaseException:
            stop.set()  # requests waiting to retry give up: the chunk is lost anyway
            raise
        finally:
            # After a failure, queued requests would only cost money for a chunk that is discarded.
            pool.shutdown(wait=True, cancel_futures=True)
        done = [r for r in results if r is not None]
        self._log_summary(done)
        return done

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ one request
    def _one(self, index: int, req: GenRequest, stop: threading.Event) -> GenResult:
        start = time.monotonic()
        response, retries = self._with_retries(index, req, stop)
        return self._result(index, req, response, retries, time.monotonic() - start)

    def _call(self, req: GenRequest) -> Any:
        # Greedy samples are identical: ask for one and copy it (cheaper; some servers reject n>1 greedy).
        kwargs: dict[str, Any] = {
            "model": self.spec.name,
            "n": 1 if req.greedy else req.n,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_new_tokens,
            "seed": req.seed,
        }
        if req.stop:
            kwargs["stop"] = list(req.stop)
        if req.messages:
            return self.client.chat.completions.create(messages=req.message_dicts(), **kwargs)
        return self.client.completions.create(prompt=req.prompt, **kwargs)

    def _with_retries(self, index: int, req: GenRequest, stop: threading.Event) -> tuple[Any, int]:
        attempts = self.options.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._call(req), attempt
            except openai.APIError as exc:
                if not _retryable(exc) or attempt + 1 == attempts:
                    self._add(failures=1)
                    raise OpenAIBackendError(self._failure(index, exc, attempt + 1)) from None
                delay = self._backoff(attempt, exc)
                log.warning(
                    "openai request %d: attempt %d/%d failed (%s); retrying in %.2fs",
                    index,
                    attempt + 1,
                    attempts,
                    self._describe(exc),
                    delay,
                )
                self._add(retries=1)
                if stop.wait(delay):
                    raise OpenAIBackendError(f"openai request {index}: cancelled, another request failed") from None
        raise AssertionError("unreachable")  # the loop returns or raises

    def _backoff(self, attempt: int, exc: openai.APIError) -> float:
        """Exponential backoff with equal jitter (never zero), at least what the server asked for."""
        base = self.options.backoff_s * 2**attempt
        delay = base / 2 + self._rng.uniform(0, base / 2)
        return min(max(delay, _retry_after_s(exc)), MAX_BACKOFF_S)

    def _result(self, index: int, req: GenRequest, response: Any, retries: int, latency: float) -> GenResult:
        choices = sorted(response.choices, key=lambda c: c.index)
        expected = 1 if req.greedy else req.n
        if len(choices) != expected:
            raise OpenAIBackendError(
                f"openai request {index} to {self.base_url} (model {self.spec.name}): "
                f"asked for {expected} choices, got {len(choices)}"
            )
        texts = [(c.message.content if req.messages else c.text) or "" for c in choices]
        prompt_tokens, completion_tokens = self._usage(response)
        completions = [
            Completion(t, c.finish_reason or "stop", k)
            for t, c, k in zip(texts, choices, split_tokens(completion_tokens, texts))
        ]
        if req.greedy and req.n > 1:
            completions = [Completion(**vars(completions[0])) for _ in range(req.n)]
        cost = cost_usd(prompt_tokens, completion_tokens, self.options)
        self._add(requests=1, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": cost,
            "latency_s": round(latency, 3),
            "retries": retries,
            "model": getattr(response, "model", None),
        }
        return GenResult(completions, prompt_tokens, usage=usage)

    def _usage(self, response: Any) -> tuple[int, int]:
        usage = getattr(response, "usage", None)
        if usage is None:
            log.warning("openai: %s returned no token usage; tokens and cost count as 0", self.base_url)
            return 0, 0
        return int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)

    # ------------------------------------------------------------------ bookkeeping and messages
    def _add(self, **amounts: float) -> None:
        with self._lock:
            for k, v in amounts.items():
                self.totals[k] += v

    def _log_summary(self, results: list[GenResult]) -> None:
        prompt = sum(r.usage["prompt_tokens"] for r in results)
        completion = sum(r.usage["completion_tokens"] for r in results)
        cost = sum(r.usage["cost_usd"] for r in results)
        log.info(
            "openai %s: %d requests, %d prompt + %d completion tokens, $%.4f (this backend: $%.4f, %d retries)",
            self.spec.name,
            len(results),
            prompt,
            completion,
            cost,
            self.totals["cost_usd"],
            self.totals["retries"],
        )

    def _redact(self, text: str) -> str:
        # Keys under 4 characters ("x") are placeholders, and masking them would garble the message.
        return text.replace(self._secret, "***") if len(self._secret) >= 4 else text

    def _describe(self, exc: openai.APIError) -> str:
        status = getattr(exc, "status_code", None)
        head = type(exc).__name__ + (f" {status}" if status is not None else "")
        if isinstance(exc, openai.APITimeoutError):
            head += f" (no answer within timeout_s={self.options.timeout_s:g})"
        message = self._redact(str(exc))  # before truncating: a cut key would escape redaction
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "..."
        return f"{head}: {message}"

    def _failure(self, index: int, exc: openai.APIError, attempts: int) -> str:
        hint = ""
        if getattr(exc, "status_code", None) in (401, 403):
            hint = f"; check the key in the environment variable {self.options.api_key_env}"
        return (
            f"openai request {index} to {self.base_url} (model {self.spec.name}) failed after "
            f"{attempts} attempt{'s' if attempts > 1 else ''}: {self._describe(exc)}{hint}"
        )
