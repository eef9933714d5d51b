"""The child side of the llama.cpp backend: one process, one model, one sequence at a time.

Spawned by `llamacpp_backend`; it imports only llama_cpp and tokenizers (no torch, no
transformers), so a worker starts in about a second. Messages on the result queue:
("ready", worker, pid), ("row", worker, row index, token ids, finish), ("error", worker, traceback).
A task is (row index, prompt ids, temperature, top_p, max_new_tokens, stop strings, seed); None stops.
"""

from __future__ import annotations

import os
import traceback
from typing import Any


def run(worker: int, setup: dict[str, Any], tasks: Any, results: Any) -> None:
    """Worker entry point (multiprocessing target): load once, then decode rows until None."""
    # llama.cpp logs to fds 1 and 2: into a file, so the parent can quote its last lines if we die.
    log = os.open(setup["log_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        decoder = _Decoder(setup)
    except BaseException:
        results.put(("error", worker, traceback.format_exc()))
        return
    results.put(("ready", worker, os.getpid()))
    while (task := tasks.get()) is not None:
        try:
            ids, finish = decoder.decode(*task[1:])
        except BaseException:
            results.put(("error", worker, traceback.format_exc()))
            return
        results.put(("row", worker, task[0], ids, finish))


class _Decoder:
    def __init__(self, setup: dict[str, Any]):
        from llama_cpp import Llama  # noqa: PLC0415 - the child's own heavy import
        from tokenizers import Tokenizer  # noqa: PLC0415

        self.llm = Llama(
            model_path=setup["model_path"],
            lora_path=setup["lora_path"],
            n_threads=setup["threads"],
            n_threads_batch=setup["threads"],
            n_ctx=setup["n_ctx"],
            n_batch=min(512, setup["n_ctx"]),
            verbose=True,  # to the log file above
        )
        self.tok = Tokenizer.from_str(setup["tokenizer_json"])
        self.eos = set(setup["eos"])

    def decode(
        self, ids: list[int], temp: float, top_p: float, max_new: int, stop: tuple[str, ...], seed: int
    ) -> tuple[list[int], str]:
        """(new token ids, "eos" | "stop" | "length"): the transformers backend's `_append` rules."""
        import llama_cpp  # noqa: PLC0415

        out: list[int] = []
        if max_new <= 0:
            return out, "length"
        sampler = _sampler(temp, top_p, seed)
        try:
            self.llm.reset()  # no KV prefix reuse: a row's numerics never depend on the row before it
            self.llm.eval(ids)
            while True:
                token = llama_cpp.llama_sampler_sample(sampler, self.llm.ctx, -1)
                if token in self.eos:
                    return out, "eos"
                out.append(token)
                if stop and any(s in self.tok.decode(out, skip_special_tokens=True) for s in stop):
                    return out, "stop"
                if len(out) >= max_new:
                    return out, "length"
                self.llm.eval([token])
        finally:
            llama_cpp.llama_sampler_free(sampler)


def _sampler(temp: float, top_p: float, seed: int) -> Any:
    """Greedy at temperature 0; else temperature, then nucleus on the tempered distribution (the
    transformers backend's order; llama-cpp-python's own chain applies top_p before temperature)."""
    import llama_cpp  # noqa: PLC0415

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if temp <= 0.0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temp))
    if top_p < 1.0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain
