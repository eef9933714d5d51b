"""The child side of the llama.cpp backend: one process, one model, up to `slots` sequences decoded together.

Spawned by `llamacpp_backend`; it imports only llama_cpp and tokenizers (no torch, no transformers),
so a worker starts in about a second. A task is a list of rows, each (row index, prompt ids,
temperature, top_p, max_new_tokens, stop strings, seed); None stops. Messages on the result queue:
("ready", worker, pid), ("row", worker, row index, token ids, finish), ("error", worker, traceback).

Continuous batching: every decode step advances all live rows by one token in one llama.cpp batch,
and a finished row's slot takes the next row of the task at once, so the batch stays full until the
task runs out. Each row has its own KV stream (`kv_unified` off: a row attends only to its own
tokens) and its own seeded sampler. A row's prompt is evaluated alone; which rows share its decode
steps follows from the task list and the outputs, so a task decodes the same way every time.
"""

from __future__ import annotations

import ctypes
import os
import queue
import traceback
from dataclasses import dataclass, field
from typing import Any

PREFILL_CHUNK = 512  # prompt tokens per llama_decode call (the context's n_batch)
PARENT_CHECK_S = 2.0  # an idle worker checks this often that its parent still lives


def run(worker: int, setup: dict[str, Any], tasks: Any, results: Any) -> None:
    """Worker entry point (multiprocessing target): load once, then decode tasks until None."""
    _log_to(setup["log_path"])
    try:
        decoder = _Decoder(setup)
    except BaseException:
        results.put(("error", worker, traceback.format_exc()))
        return
    results.put(("ready", worker, os.getpid()))
    while (task := _next_task(tasks, decoder.parent)) is not None:
        try:
            for k, ids, finish in decoder.decode_rows(task):
                results.put(("row", worker, k, ids, finish))
        except BaseException:
            results.put(("error", worker, traceback.format_exc()))
            return


def _next_task(tasks: Any, parent: int | None) -> Any:
    """The next task; None when told to stop or when the process that spawned us is gone."""
    while True:
        try:
            return tasks.get(timeout=PARENT_CHECK_S)
        except queue.Empty:
            exit_if_orphaned(parent)


def exit_if_orphaned(parent: int | None) -> None:
    """Exit at once if `parent` is no longer our parent: a killed pipeline (SIGKILL, or SIGTERM, which
    skips multiprocessing's clean-up of daemon children) must not leave workers decoding for nobody.
    None (a decoder run in the calling process, as a test does) never exits."""
    if parent is not None and os.getppid() != parent:
        os._exit(0)  # nothing to save: the rows in flight were for the dead parent


def to_f16(src: str, dst: str, log_path: str) -> None:
    """Convert a GGUF's weights to float16 with llama.cpp's quantizer (multiprocessing target)."""
    import llama_cpp  # noqa: PLC0415

    _log_to(log_path)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True  # the source is already quantized (Q4_1): f16 holds its values
    params.nthread = 1
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(1)


def _log_to(path: str) -> None:
    """llama.cpp logs to fds 1 and 2: into a file, so the parent can quote its last lines if we die."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


@dataclass
class _Live:
    """A row being decoded in a slot."""

    k: int
    slot: int
    pos: int  # position of the next token to evaluate
    max_new: int
    stop: tuple[str, ...]
    sampler: Any
    out: list[int] = field(default_factory=list)


class _Decoder:
    def __init__(self, setup: dict[str, Any]):
        import llama_cpp as L  # noqa: PLC0415, N812 - the child's own heavy import
        from tokenizers import Tokenizer  # noqa: PLC0415

        self.L = L
        self.parent: int | None = setup.get("parent_pid")  # set only for a spawned worker
        self.slots = int(setup.get("slots", 1))
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(setup["model_path"].encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {setup['model_path']}")
        cparams = L.llama_context_default_params()
        cparams.n_seq_max = self.slots
        cparams.kv_unified = False  # one KV stream per slot: a row attends to its own tokens only
        cparams.n_ctx = setup["n_ctx"] * self.slots  # split evenly over the streams
        cparams.n_batch = cparams.n_ubatch = max(PREFILL_CHUNK, self.slots)
        cparams.n_threads = cparams.n_threads_batch = setup["threads"]
        # off, as llama-cpp-python's `Llama` has it: llama.cpp's CPU flash attention sums the values in float16
        cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = L.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {cparams.n_ctx} tokens")
        if setup.get("lora_path"):
            self.adapter = L.llama_adapter_lora_init(self.model, setup["lora_path"].encode())
            if not self.adapter:
                raise RuntimeError(f"llama.cpp could not load the adapter {setup['lora_path']}")
            adapters = (L.llama_adapter_lora_p_ctypes * 1)(self.adapter)
            if L.llama_set_adapters_lora(self.ctx, adapters, 1, (ctypes.c_float * 1)(1.0)):
                raise RuntimeError(f"llama.cpp could not apply the adapter {setup['lora_path']}")
        self.memory = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(cparams.n_batch, 0, 1)
        self.tok = Tokenizer.from_str(setup["tokenizer_json"])
        self.eos = set(setup["eos"])

    # ------------------------------------------------------------------ batches
    def _eval(self, tokens: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, slot, wants logits) entries."""
        b = self.batch
        b.n_tokens = len(tokens)
        for i, (token, pos, slot, logits) in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = slot
        if (rc := self.L.llama_decode(self.ctx, b)) != 0:
            raise RuntimeError(f"llama_decode returned {rc} for a batch of {len(tokens)} tokens")

    def _prefill(self, ids: list[int], slot: int) -> None:
        """Evaluate a prompt in its slot's stream, alone, logits for its last token only."""
        for c in range(0, len(ids), PREFILL_CHUNK):
            chunk = ids[c : c + PREFILL_CHUNK]
            self._eval([(t, c + i, slot, c + i == len(ids) - 1) for i, t in enumerate(chunk)])

    # ------------------------------------------------------------------ rows
    def decode_rows(self, rows: list[tuple]) -> Any:
        """Yield (row index, new token ids, "eos" | "stop" | "length") for every row, as rows finish;
        the transformers backend's `_append` rules."""
        pending = list(reversed(rows))
        free = list(reversed(range(self.slots)))
        live: list[_Live] = []
        try:
            while pending or live:
                while pending and free:  # fill free slots: prompt, then the row's first token
                    k, ids, temp, top_p, max_new, stop, seed = pending.pop()
                    row = _Live(k, free.pop(), len(ids), max_new, tuple(stop), _sampler(temp, top_p, seed))
                    if max_new <= 0:
                        yield self._finish(row, "length", free)
                        continue
                    self._prefill(ids, row.slot)
                    done = self._take(row, self.L.llama_sampler_sample(row.sampler, self.ctx, -1))
                    if done:
                        yield self._finish(row, done, free)
                    else:
                        live.append(row)
                if not live:
                    continue
                exit_if_orphaned(self.parent)  # once a decode step: a getppid call, ~1 us
                self._eval([(r.out[-1], r.pos, r.slot, True) for r in live])
                still, ended = [], []
                for i, row in enumerate(live):
                    row.pos += 1
                    if done := self._take(row, self.L.llama_sampler_sample(row.sampler, self.ctx, i)):
                        ended.append((row, done))
                    else:
                        still.append(row)
                live = still  # before reporting: the cleanup below never frees a sampler twice
                for row, done in ended:
                    yield self._finish(row, done, free)
        finally:
            for row in live:
                self.L.llama_sampler_free(row.sampler)
                self.L.llama_memory_seq_rm(self.memory, row.slot, -1, -1)

    def _take(self, row: _Live, token: int) -> str | None:
        """Append a sampled token; the finish reason if the row ends with it."""
        if token in self.eos:
            return "eos"
        row.out.append(token)
        if row.stop and any(s in self.tok.decode(row.out, skip_special_tokens=True) for s in row.stop):
            return "stop"
        return "length" if len(row.out) >= row.max_new else None

    def _finish(self, row: _Live, finish: str, free: list[int]) -> tuple[int, list[int], str]:
        """Release a finished row's sampler and KV stream, free its slot; what the task reports for it."""
        self.L.llama_sampler_free(row.sampler)
        self.L.llama_memory_seq_rm(self.memory, row.slot, -1, -1)
        free.append(row.slot)
        return row.k, row.out, finish

    def decode(
        self, ids: list[int], temp: float, top_p: float, max_new: int, stop: tuple[str, ...], seed: int
    ) -> tuple[list[int], str]:
        """One row alone: (new token ids, finish reason)."""
        ((_, out, finish),) = self.decode_rows([(0, ids, temp, top_p, max_new, stop, seed)])
        return out, finish


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
