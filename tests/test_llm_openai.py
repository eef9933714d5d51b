"""The `openai` backend over real HTTP, against `scoder_lib.openai_server` serving the micro model.

Only 127.0.0.1 is contacted. The server runs the transformers backend, so every answer can be
checked against calling that backend directly.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from scoder_lib.core.config import REPO_ROOT, ModelSpec, OpenAIOptions, Sampling
from scoder_lib.llm import models
from scoder_lib.llm.base import GenRequest, GenResult
from scoder_lib.llm.generator import Generator, make_backend
from scoder_lib.llm.openai_backend import OpenAIBackend, OpenAIBackendError, cost_usd, split_tokens
from scoder_lib.llm.openai_server import Faults, OpenAIServer
from scoder_lib.llm.transformers_backend import TransformersBackend

KEY_ENV = "SCODER_TEST_OPENAI_KEY"
SECRET = "sk-test-SECRET-7f3a9c1e5b2d"  # recognisable, so any leak is easy to find
GREEDY = Sampling(temperature=0.0, max_new_tokens=8)
SAMPLED = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=8, n=3, seed=5)


@pytest.fixture(scope="module")
def local() -> Iterator[TransformersBackend]:
    spec = ModelSpec(name="micro")
    # Reuse the repository's model cache: the micro model needs the default model's tokenizer.
    ref = models.prepare(spec, REPO_ROOT / ".cache/scoder")
    yield TransformersBackend(ref, spec)


@pytest.fixture(scope="module")
def server(local: TransformersBackend) -> Iterator[OpenAIServer]:
    with OpenAIServer(local, model_name="micro", api_key=SECRET) as srv:
        yield srv


@pytest.fixture()
def srv(server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> OpenAIServer:
    server.reset()
    monkeypatch.setenv(KEY_ENV, SECRET)
    return server


def make(srv: OpenAIServer, **options: float) -> OpenAIBackend:
    opts = {
        "base_url": srv.url,
        "api_key_env": KEY_ENV,
        "max_concurrency": 4,
        "timeout_s": 10.0,
        "max_retries": 2,
        "backoff_s": 0.01,
        **options,
    }
    return OpenAIBackend(ModelSpec(name="micro", backend="openai", openai=OpenAIOptions(**opts)))


def mixed_requests() -> list[GenRequest]:
    chats = [GenRequest.chat([{"role": "user", "content": f"Write function number {i}."}], GREEDY) for i in range(3)]
    prompts = [GenRequest.completion(p, GREEDY) for p in ("def add(a, b):", "import os\n", "class Stack:")]
    return [chats[0], prompts[0], chats[1], prompts[1], chats[2], prompts[2]]


def same(a: GenResult, b: GenResult) -> bool:
    return (
        a.texts == b.texts
        and a.prompt_tokens == b.prompt_tokens
        and [c.finish_reason for c in a.completions] == [c.finish_reason for c in b.completions]
    )


# ----------------------------------------------------------------------------- round trips
def test_chat_and_completion_match_local_backend(srv: OpenAIServer, local: TransformersBackend) -> None:
    requests = mixed_requests()
    remote = make(srv).generate(requests)
    direct = local.generate(requests)
    assert all(same(r, d) for r, d in zip(remote, direct))  # also checks request order
    assert [c.tokens for r in remote for c in r.completions] == [c.tokens for d in direct for c in d.completions]
    assert srv.counts["chat"] == 3 and srv.counts["completions"] == 3
    sent = srv.bodies[0]
    assert {"n", "temperature", "top_p", "max_tokens", "seed"} <= set(sent) and sent["max_tokens"] == 8


def test_stop_strings_are_passed(srv: OpenAIServer, local: TransformersBackend) -> None:
    req = GenRequest.completion("def add(a, b):", Sampling(max_new_tokens=12), stop=("\n\n",))
    assert same(make(srv).generate([req])[0], local.generate([req])[0])
    assert srv.bodies[0]["stop"] == ["\n\n"]


def test_n_samples(srv: OpenAIServer, local: TransformersBackend) -> None:
    sampled = GenRequest.chat([{"role": "user", "content": "Say something."}], SAMPLED)
    greedy = GenRequest.completion("def add(a, b):", GREEDY.model_copy(update={"n": 2}))
    backend = make(srv)
    remote = backend.generate([sampled, greedy])
    # Seeds travel with the request, so sampled texts equal the local backend's.
    assert same(remote[0], local.generate([sampled])[0]) and len(remote[0].texts) == 3
    assert sum(c.tokens for c in remote[0].completions) == remote[0].usage["completion_tokens"]
    # Greedy n=2 asks the server for one sample and copies it.
    assert remote[1].texts == [remote[1].texts[0]] * 2
    assert sorted(b["n"] for b in srv.bodies) == [1, 3]


def test_split_tokens_adds_up() -> None:
    assert split_tokens(7, ["a"]) == [7]
    assert split_tokens(10, ["aaa", "a", ""]) == [8, 2, 0]
    assert sum(split_tokens(11, ["ab", "cd", "ef"])) == 11
    assert split_tokens(3, ["", ""]) in ([2, 1], [1, 2])


# ----------------------------------------------------------------------------- failures
def test_429_then_success_is_retried_and_counted(srv: OpenAIServer) -> None:
    srv.set_faults(Faults(count=2, status=429, message="rate limited"))
    backend = make(srv)
    result = backend.generate([GenRequest.completion("def f():", GREEDY)])[0]
    assert result.texts and result.usage["retries"] == 2
    assert backend.totals["retries"] == 2 and backend.totals["failures"] == 0
    assert srv.counts["requests"] == 3 and srv.counts["faults"] == 2


def test_timeout_retries_then_fails_clearly(srv: OpenAIServer) -> None:
    srv.set_faults(Faults(count=100, delay_s=5.0))
    backend = make(srv, timeout_s=0.3, max_retries=1)
    start = time.monotonic()
    with pytest.raises(OpenAIBackendError, match=r"failed after 2 attempts: APITimeoutError.*timeout_s=0.3"):
        backend.generate([GenRequest.completion("def f():", GREEDY)])
    assert time.monotonic() - start < 3.0
    assert backend.totals["retries"] == 1 and backend.totals["failures"] == 1
    assert srv.counts["requests"] == 2


def test_client_errors_are_not_retried(srv: OpenAIServer) -> None:
    srv.set_faults(Faults(count=1, status=400, message="bad stop list"))
    with pytest.raises(OpenAIBackendError, match=r"failed after 1 attempt: BadRequestError 400.*bad stop list"):
        make(srv).generate([GenRequest.completion("def f():", GREEDY)])
    assert srv.counts["requests"] == 1


def test_a_failure_stops_the_chunk_without_waiting_out_retries(srv: OpenAIServer) -> None:
    # One request gets a 429 (and would back off ~10 s), the other a 400 that fails at once.
    srv.set_faults(Faults(count=1, status=429), Faults(count=1, status=400, message="bad request"))
    backend = make(srv, backoff_s=20.0)
    start = time.monotonic()
    with pytest.raises(OpenAIBackendError, match="BadRequestError 400"):
        backend.generate([GenRequest.completion(p, GREEDY) for p in ("def f():", "def g():")])
    assert time.monotonic() - start < 3.0
    assert backend.totals["failures"] == 1


def test_missing_key_names_the_variable(srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(OpenAIBackendError, match=KEY_ENV):
        make(srv)


def test_wrong_key_fails_with_a_hint(srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "EMPTY")  # what a local server without a key would take
    with pytest.raises(OpenAIBackendError, match=f"AuthenticationError 401.*{KEY_ENV}"):
        make(srv).generate([GenRequest.completion("def f():", GREEDY)])


def test_api_key_never_leaks(srv: OpenAIServer, tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # openai, httpx2 and scoder loggers at their chattiest
    logging.getLogger("scoder").addHandler(caplog.handler)  # in case setup_logging stopped propagation
    try:
        gen = Generator(make(srv), tmp_path)
        results = gen.generate(mixed_requests()[:2])
        # A provider that echoes the key in its error text, first retried, then failing for good.
        srv.set_faults(Faults(count=100, status=500, message=f"Incorrect API key provided: {SECRET}"))
        with pytest.raises(OpenAIBackendError) as info:
            gen.generate([GenRequest.completion("never answered", GREEDY)])
    finally:
        logging.getLogger("scoder").removeHandler(caplog.handler)
    assert "***" in str(info.value)
    written = [
        caplog.text,
        str(info.value),
        "".join(traceback.format_exception(info.value)),
        json.dumps([r.to_json() for r in results]),
        gen.store.path.read_text(),
    ]
    written += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(SECRET in text for text in written)
    assert SECRET[:12] not in caplog.text


# ----------------------------------------------------------------------------- cache and cost
def test_generator_cache_serves_repeats(srv: OpenAIServer, tmp_path) -> None:
    requests = mixed_requests()
    first = Generator(make(srv), tmp_path)
    texts = [r.texts for r in first.generate(requests)]
    assert first.model_calls == len(requests) and first.backend.chunk_size == 16
    again = Generator(make(srv), tmp_path)
    assert [r.texts for r in again.generate(requests)] == texts
    assert again.model_calls == 0 and srv.counts["requests"] == len(requests)


def test_fingerprint_is_url_and_model_not_key(srv: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    a = make(srv)
    monkeypatch.setenv(KEY_ENV, "another-key-entirely")
    assert make(srv).fingerprint == a.fingerprint
    assert make(srv, base_url=srv.url + "/").fingerprint == a.fingerprint
    assert make(srv, base_url="http://127.0.0.1:1/v1").fingerprint != a.fingerprint


def test_cost_accounting_adds_up(srv: OpenAIServer, local: TransformersBackend) -> None:
    assert cost_usd(
        1_000_000, 500_000, OpenAIOptions(price_per_1m_input_usd=2.5, price_per_1m_output_usd=10.0)
    ) == pytest.approx(7.5)
    requests = mixed_requests()
    backend = make(srv, price_per_1m_input_usd=2.5, price_per_1m_output_usd=10.0)
    remote = backend.generate(requests)
    direct = local.generate(requests)
    prompt = sum(d.prompt_tokens for d in direct)
    completion = sum(c.tokens for d in direct for c in d.completions)
    for r, d in zip(remote, direct):
        assert r.usage["prompt_tokens"] == d.prompt_tokens and r.usage["latency_s"] >= 0
        expected = (d.prompt_tokens * 2.5 + sum(c.tokens for c in d.completions) * 10.0) / 1e6
        assert r.usage["cost_usd"] == pytest.approx(expected)
    assert backend.totals["prompt_tokens"] == prompt and backend.totals["completion_tokens"] == completion
    assert backend.totals["requests"] == len(requests)
    assert backend.totals["cost_usd"] == pytest.approx((prompt * 2.5 + completion * 10.0) / 1e6)


def test_make_backend_builds_the_openai_backend(srv: OpenAIServer, tmp_path) -> None:
    spec = ModelSpec(
        name="teacher-behind-a-server", backend="openai", openai=OpenAIOptions(base_url=srv.url, api_key_env=KEY_ENV)
    )
    backend = make_backend(spec, tmp_path)
    assert isinstance(backend, OpenAIBackend) and backend.chunk_size == 4 * spec.openai.max_concurrency
    assert backend.generate([GenRequest.completion("def f():", GREEDY)])[0].usage["model"] == spec.name


# ----------------------------------------------------------------------------- the server itself
def post(srv: OpenAIServer, route: str, body: object, key: str = SECRET) -> tuple[int, dict]:
    req = urllib.request.Request(
        srv.url + route,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_server_answers_openai_shapes_and_errors(srv: OpenAIServer) -> None:
    status, body = post(
        srv, "/completions", {"model": "m", "prompt": ["a", "b"], "n": 2, "max_tokens": 2, "temperature": 1.0}
    )
    assert status == 200 and [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    status, body = post(
        srv,
        "/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 2},
    )
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
    assert post(srv, "/chat/completions", {"messages": []})[0] == 400
    assert post(srv, "/completions", {"prompt": [1, 2, 3]})[0] == 400
    assert post(srv, "/embeddings", {"input": "x"})[0] == 404
    assert post(srv, "/completions", {"prompt": "x"}, key="wrong")[0] == 401
    models_req = urllib.request.Request(srv.url + "/models", headers={"Authorization": f"Bearer {SECRET}"})
    with urllib.request.urlopen(models_req, timeout=10) as resp:
        assert json.loads(resp.read())["data"][0]["id"] == "micro"
