"""Model layer: the transformers backend, the generation cache, SFT, and digit ratings (micro model)."""

from __future__ import annotations

import ast
import os
import re
import sys

import numpy as np
import pytest
import torch
from conftest import alive_after, live_stat

from scoder_lib.core.config import ConfigError, LoraOptions, ModelSpec, Sampling, TrainOptions
from scoder_lib.llm.base import GenRequest
from scoder_lib.llm.generator import Generator, make_backend
from scoder_lib.llm.models import load, prepare
from scoder_lib.llm.worker import stop_workers
from scoder_lib.method.rating import RatingPrompt, make_rater
from scoder_lib.method.train import IGNORE, Example, _build_model, encode, load_moments, save_points, sft

PROMPTS = [
    "Write a function that adds two numbers.",
    "Reverse a string in Python.",
    "What is a list comprehension? Explain with an example please.",
    "hi",
    "Sort a list of tuples by their second element, descending, and explain the key argument.",
]


@pytest.fixture(scope="module")
def micro():
    return ModelSpec(name="micro", batch_size=8)


def _chat(text: str, **kw) -> GenRequest:
    return GenRequest.chat([{"role": "user", "content": text}], Sampling(**{"max_new_tokens": 24, **kw}))


def test_batched_greedy_equals_one_at_a_time(micro, cache_dir):
    batched = make_backend(micro, cache_dir)
    single = make_backend(micro.model_copy(update={"batch_size": 1}), cache_dir)
    reqs = [_chat(p) for p in PROMPTS]
    a = batched.generate(reqs)
    b = single.generate(reqs)
    for ra, rb in zip(a, b):
        assert ra.completions[0].text == rb.completions[0].text
        assert ra.completions[0].tokens == rb.completions[0].tokens
    # and equal to Hugging Face's own greedy decoding of the same prompt
    model, tok = load(prepare(micro, cache_dir))
    ids = torch.tensor([batched.encode(reqs[0])])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    assert tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True) == a[0].completions[0].text


def test_sampling_is_seeded_per_request_not_per_batch(micro, cache_dir):
    backend = make_backend(micro, cache_dir)
    req = _chat(PROMPTS[0], temperature=1.0, top_p=0.9, n=3, seed=7)
    alone = backend.generate([req])[0].texts
    crowded = backend.generate([_chat(PROMPTS[1], temperature=1.0, n=2), req])[1].texts
    assert alone == crowded and len(set(alone)) > 1  # reproducible, and the n samples differ


def test_generation_is_saved_in_chunks_of_two_batches_and_chunking_changes_no_output(micro, cache_dir, tmp_path):
    """A long generation is saved (and logged) every two batches of requests, so an interruption loses
    at most those; the outputs are those of one call over everything."""
    spec = micro.model_copy(update={"batch_size": 2})
    reqs = [_chat(p, temperature=1.0, n=2, seed=i) for i, p in enumerate(PROMPTS + PROMPTS[:2])]
    chunked = Generator(make_backend(spec, cache_dir), tmp_path / "a")
    calls: list[int] = []
    inner = chunked.backend.generate
    chunked.backend.generate = lambda rs: calls.append(len(rs)) or inner(rs)  # record the call sizes
    whole = make_backend(spec, cache_dir)
    assert [r.texts for r in chunked.generate(reqs)] == [r.texts for r in whole.generate(reqs)]
    assert calls == [4, 3]


def test_stop_strings_cut_the_output(micro, cache_dir):
    backend = make_backend(micro, cache_dir)
    free = backend.generate([_chat(PROMPTS[2], max_new_tokens=40)])[0].texts[0]
    word = next(w for w in re.findall(r"\S{2,}", free[5:]))  # something the model does say
    cut = backend.generate(
        [GenRequest.chat([{"role": "user", "content": PROMPTS[2]}], Sampling(max_new_tokens=40), stop=(word,))]
    )[0]
    assert cut.completions[0].finish_reason == "stop"
    assert word not in cut.texts[0] and free.startswith(cut.texts[0])


def test_cache_serves_repeat_calls_without_the_model(micro, cache_dir, tmp_path):
    gen = Generator(make_backend(micro, cache_dir), tmp_path)
    reqs = [_chat(p) for p in PROMPTS[:3]]
    first = gen.generate(reqs)
    assert gen.model_calls == 3
    again = Generator(gen.backend, tmp_path)  # a fresh process would reload the same file
    second = again.generate(reqs + [reqs[0]])
    assert again.model_calls == 0 and [r.texts for r in second[:3]] == [r.texts for r in first]
    assert all(r.cached for r in second)


def test_requests_need_messages_or_prompt():
    with pytest.raises(ValueError):
        GenRequest()


def test_vllm_missing_is_a_clear_error(micro, cache_dir):
    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM installed")
    with pytest.raises(ConfigError, match="pip install vllm"):
        make_backend(micro.model_copy(update={"backend": "vllm"}), cache_dir)


# ----------------------------------------------------------------------------- training
def test_labels_mask_the_prompt(micro, cache_dir):
    _, tok = load(prepare(micro, cache_dir))
    ex = Example.of([{"role": "user", "content": "Add 2 and 3."}], "The answer is 5.")
    row = encode(tok, ex, 512)
    prompt_len = len(
        tok.apply_chat_template(
            [{"role": "user", "content": "Add 2 and 3."}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
    )
    assert row["labels"][:prompt_len] == [IGNORE] * prompt_len
    assert row["labels"][prompt_len:] == row["input_ids"][prompt_len:]
    assert tok.decode(row["input_ids"][prompt_len:-1]) == "The answer is 5."
    assert encode(tok, ex, prompt_len) is None  # the prompt alone does not fit


def test_save_points_are_even_and_end_at_the_last_step():
    assert save_points(10, 2) == [5, 10] and save_points(9, 3) == [3, 6, 9] and save_points(2, 5) == [1, 2]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_sft_lowers_loss_and_saves_reloadable_checkpoints(micro, cache_dir, tmp_path, method):
    ref = prepare(micro, cache_dir)
    examples = [
        Example.of([{"role": "user", "content": f"Task {i % 4}"}], f"def f{i % 4}():\n    return {i % 4}\n")
        for i in range(16)
    ]
    opts = TrainOptions(
        method=method,
        epochs=4,
        batch_size=4,
        learning_rate=3e-3,
        num_checkpoints=2,
        max_seq_len=128,
        lora=LoraOptions(r=8, last_layers=1),
    )
    res = sft(examples, ref.path, tmp_path / "run", opts, ref.fingerprint)
    losses = [loss for _, loss in res.losses]
    assert len(res.checkpoints) == 2 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2
    for ckpt in res.checkpoints:
        m, v, meta = load_moments(ckpt)
        reloaded = prepare(ModelSpec(name=str(ckpt)), cache_dir)
        model, _ = load(reloaded)
        trainable = _trainable_names(ref.path, opts)
        assert set(m) == set(v) == trainable and meta["avg_lr"] > 0 and meta["adam_step"] == meta["step"]
        assert all((vv >= 0).all() for vv in v.values())
    # a second call with identical inputs is served from disk
    again = sft(examples, ref.path, tmp_path / "run", opts, ref.fingerprint)
    assert again.losses == res.losses


def _trainable_names(base: str, opts: TrainOptions) -> set[str]:
    model = _build_model(base, opts, None)
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------- ratings
def test_digit_ratings_are_distributions_and_sharing_is_exact(micro, cache_dir, tmp_path):
    rater = make_rater(micro, cache_dir)
    rater.store = None
    prompt = RatingPrompt(
        "Rate it.",
        "def f(x):\n    return x * 2\n",
        ("Clarity 0-9?", "Is the solution correct? Answer 0 to 9.", "Difficulty?"),
    )
    shared = rater.rate([prompt], shared=True)[0]
    full = rater.rate([prompt], shared=False)[0]
    assert shared.shape == (3, 10) and np.allclose(shared.sum(1), 1.0)
    assert np.abs(shared - full).max() < 1e-4


@pytest.mark.slow
def test_real_smollm2_writes_a_parsable_function(cache_dir):
    gen = make_backend(ModelSpec(name="smollm2-135m-instruct"), cache_dir)
    req = GenRequest.chat(
        [{"role": "user", "content": "Write a Python function `add(a, b)` that returns a + b."}],
        Sampling(max_new_tokens=96),
    )
    text = gen.generate([req])[0].texts[0]
    code = re.search(r"```(?:python)?\n(.*?)```", text, re.S)
    tree = ast.parse(code.group(1) if code else text)
    assert any(isinstance(n, ast.FunctionDef) for n in ast.walk(tree)), text


def test_sft_under_a_launcher_matches_in_process(micro, cache_dir, tmp_path):
    """train.launcher runs the same job in a subprocess (here plain `python`, in production
    `accelerate launch ...`); the result is the same training."""
    ref = prepare(micro, cache_dir)
    examples = [Example.of([{"role": "user", "content": f"q{i}"}], f"a{i}") for i in range(4)]
    opts = TrainOptions(epochs=1, batch_size=2, num_checkpoints=1, max_seq_len=64, lora=LoraOptions(r=4))
    local = sft(examples, ref.path, tmp_path / "local", opts, ref.fingerprint)
    launched = sft(
        examples, ref.path, tmp_path / "launched", opts.model_copy(update={"launcher": "python"}), ref.fingerprint
    )
    assert launched.steps == local.steps and np.allclose([x for _, x in launched.losses], [x for _, x in local.losses])
    assert (launched.final / "moments.safetensors").exists()


def test_stopping_a_worker_leaves_none_of_its_processes(micro, cache_dir, tmp_path):
    """What the worker starts (vLLM's EngineCore) must not outlive it, even when it does not exit on its
    own: here a child that ignores SIGTERM and SIGINT and sleeps, started beside the worker's interpreter."""
    pids = tmp_path / "child.pid"
    python = tmp_path / "python"
    python.write_text(
        f"#!/bin/sh\n(trap '' TERM INT; exec sleep 600) &\necho $! > {pids}\nexec {sys.executable} \"$@\"\n",
        encoding="utf-8",
    )
    python.chmod(0o755)
    backend = make_backend(micro.model_copy(update={"python": str(python)}), cache_dir)
    assert backend.generate([_chat(PROMPTS[0])])[0].texts
    child = int(pids.read_text())
    assert live_stat(child) is not None
    own_group = os.getpgid(backend.proc.pid) != os.getpgid(0)
    stop_workers()
    assert not alive_after([child], 10), "a process of the worker outlived it"
    assert own_group  # so a SIGINT to this process's group (a kernel shutting down) does not reach it
    # a worker that died on its own: the next backend that asks for one clears what it left
    backend = make_backend(micro.model_copy(update={"python": str(python)}), cache_dir)
    child = int(pids.read_text())
    os.kill(backend.proc.pid, 9)
    backend.proc.wait()
    try:
        make_backend(micro.model_copy(update={"python": str(python)}), cache_dir)
        assert not alive_after([child], 10), "a dead worker's process outlived it"
    finally:
        stop_workers()


def test_a_backend_in_a_worker_process_gives_the_same_outputs(micro, cache_dir):
    """`python:` on a spec runs the backend in another interpreter (vLLM's own venv); same results and key."""
    req = [_chat(PROMPTS[0], temperature=1.0, n=2, seed=3), _chat(PROMPTS[3])]
    local = make_backend(micro, cache_dir)
    worker = make_backend(micro.model_copy(update={"python": sys.executable}), cache_dir)
    try:
        assert [r.texts for r in worker.generate(req)] == [r.texts for r in local.generate(req)]
        assert (worker.name, worker.fingerprint) == (local.name, local.fingerprint)
    finally:
        worker.close()
    assert worker.proc.poll() is None  # the worker stays for the next model of this process
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_backend(micro.model_copy(update={"python": ".venv-nowhere/bin/python"}), cache_dir)
