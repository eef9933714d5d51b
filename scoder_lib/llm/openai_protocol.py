"""The OpenAI-compatible wire format the local server speaks: requests in, completions and errors out."""

from __future__ import annotations

import time
import uuid
from typing import Any

from scoder_lib.llm.base import GenRequest, GenResult


class RequestError(ValueError):
    """A malformed request body: answered with HTTP 400."""


def _text(content: Any) -> str:
    """Message content as text: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise RequestError("message content must be a string or a list of text parts")


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or GenRequest.max_new_tokens
    try:
        return {
            "n": int(body.get("n") or 1),
            "temperature": float(body.get("temperature", 0.0) or 0.0),
            "top_p": float(body.get("top_p", 1.0) or 1.0),
            "max_new_tokens": int(max_tokens),
            "stop": stop,
            "seed": int(body.get("seed") or 0),
        }
    except (TypeError, ValueError) as exc:
        raise RequestError(f"bad sampling field: {exc}") from None


def parse_chat(body: dict[str, Any]) -> list[GenRequest]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    pairs = tuple((str(m.get("role", "user")), _text(m.get("content", ""))) for m in messages)
    return [GenRequest(messages=pairs, **_sampling(body))]


def parse_completion(body: dict[str, Any]) -> list[GenRequest]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError("'prompt' must be a string or a list of strings (token ids are not supported)")
    return [GenRequest(prompt=p, **_sampling(body)) for p in prompts]


# ----------------------------------------------------------------------------- responses
def _usage(results: list[GenResult]) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(c.tokens for r in results for c in r.completions)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _envelope(
    prefix: str, kind: str, model: str, choices: list[dict[str, Any]], results: list[GenResult]
) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": _usage(results),
    }


def chat_response(model: str, results: list[GenResult]) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "finish_reason": c.finish_reason,
            "logprobs": None,
        }
        for i, c in enumerate(results[0].completions)
    ]
    return _envelope("chatcmpl", "chat.completion", model, choices, results)


def completion_response(model: str, results: list[GenResult]) -> dict[str, Any]:
    # OpenAI's layout for several prompts: choice index = prompt index * n + sample index.
    choices = [
        {
            "index": len(results[0].completions) * p + i,
            "text": c.text,
            "finish_reason": c.finish_reason,
            "logprobs": None,
        }
        for p, res in enumerate(results)
        for i, c in enumerate(res.completions)
    ]
    return _envelope("cmpl", "text_completion", model, choices, results)


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}


# ----------------------------------------------------------------------------- HTTP
