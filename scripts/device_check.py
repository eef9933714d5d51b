"""The GPU path in one prepared check (scripts/device_check.sh sets up the venvs and runs this).

    python scripts/device_check.py [--device cuda|cpu] [--model NAME] [--vllm-python PATH] [--work DIR]
                                   [--checks greedy,train,features] [--dtype bfloat16] [--eager]

Three checks, one summary line each (PASS / FAIL / SKIP with its numbers); exit code 0 when none
fails, 1 when one does, 2 when asked for a GPU on a machine without one (one line, at once):
  greedy    the model through vLLM (in its own venv: --vllm-python) against the transformers
            backend (tests_vllm/reference.py, this venv), greedy token ids on a dozen prompts, both
            on the device in --dtype. A divergence passes only at a near-tie: the transformers
            backend's top-1 minus top-2 logit gap at the first differing token <= --tie-gap.
  train     a few bf16 LoRA SFT steps (`sft`): 2 checkpoints, each with the Adam moments of every
            LoRA weight, finite, exp_avg_sq >= 0; the device really used.
  features  gradient features (adam and sgd) of the last checkpoint on the device against the same
            computed on the CPU (a subprocess with no GPU visible): min row cosine >= --min-cos.

--device cpu is a dry run of the same code on the CPU (greedy is skipped without --vllm-python).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GREEDY_PROMPTS = [
    "Write a Python function that reverses a string.",
    "Write a function `is_prime(n)` with a docstring.",
    "Explain the difference between a list and a tuple in two sentences.",
    "Fix the bug: def add(a, b): return a - b",
    "Write a Python function that merges two sorted lists.",
    "Give three test cases for a function that sorts a list of integers.",
    "Write a function that counts the words in a text.",
    "What does the `yield` keyword do in Python?",
    "Write a Python class for a stack with push and pop.",
    "Write a function that flattens a nested list.",
]
RAW_PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "# Check whether a string is a palindrome\ndef",
]
MAX_NEW_TOKENS = 48
TRAIN_STEPS, TRAIN_BATCH, MAX_SEQ_LEN = 4, 8, 256


@dataclass
class Line:
    check: str
    status: str  # PASS | FAIL | SKIP
    detail: str

    def __str__(self) -> str:
        return f"device_check {self.check}: {self.status} {self.detail}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "vllm-generate":
        return vllm_generate(Path(args.src), Path(args.dst))
    if args.command == "cpu-features":
        return cpu_features(Path(args.checkpoint), Path(args.examples), Path(args.dst), args.dim)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch loads: the dry run stays off any GPU
    import torch  # noqa: PLC0415 - after CUDA_VISIBLE_DEVICES is settled

    if args.device == "cuda" and not torch.cuda.is_available():
        print("device_check: FAIL no CUDA GPU visible to torch here (--device cpu runs the dry mode)")
        return 2
    from scoder_lib.core.logs import setup_logging  # noqa: PLC0415 - after the GPU check: fail fast

    setup_logging()
    work = Path(args.work or tempfile.mkdtemp(prefix="device-check-"))
    work.mkdir(parents=True, exist_ok=True)
    lines = run_checks(args, work)
    summary = "\n".join(map(str, lines))
    (work / "summary.txt").write_text(summary + "\n")
    print(summary, flush=True)
    return 1 if any(line.status == "FAIL" for line in lines) else 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/device_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the model trained and compared")
    ap.add_argument("--vllm-python", help="the vLLM venv's python (greedy is skipped without it)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"], help="greedy's dtype")
    ap.add_argument("--tie-gap", type=float, help="near-tie logit gap (default 0.25 in 16 bits, 0.01 in float32)")
    ap.add_argument("--min-identical", type=float, default=0.5, help="share of greedy outputs that must be identical")
    ap.add_argument("--min-cos", type=float, default=0.999, help="GPU vs CPU features: least row cosine")
    ap.add_argument("--dim", type=int, default=1024, help="projection dimension of the features")
    ap.add_argument("--train-dtype", default="bf16", choices=["bf16", "fp32"], help="fp32: a quicker CPU dry run")
    ap.add_argument("--work", help="folder for everything the check writes (default: a new temp folder)")
    ap.add_argument("--checks", default="greedy,train,features", help="which checks (features needs train)")
    ap.add_argument("--eager", action="store_true", help="vLLM without compilation (quicker start, CPU dry runs)")
    sub = ap.add_subparsers(dest="command")
    gen = sub.add_parser("vllm-generate", help="(internal, vLLM venv) greedy token ids of a request file")
    gen.add_argument("src")
    gen.add_argument("dst")
    feats = sub.add_parser("cpu-features", help="(internal) gradient features on the CPU")
    feats.add_argument("checkpoint")
    feats.add_argument("examples")
    feats.add_argument("dst")
    feats.add_argument("--dim", type=int, default=1024)
    return ap


def run_checks(args: argparse.Namespace, work: Path) -> list[Line]:
    """The three checks in order; one that raises is a FAIL line with the error, not a traceback."""
    from scoder_lib.core.config import ModelSpec  # noqa: PLC0415
    from scoder_lib.llm.models import prepare  # noqa: PLC0415 - heavy: after the GPU check

    lines = []
    try:
        ref = prepare(ModelSpec(name=args.model), REPO / ".cache" / "scoder")
    except Exception as e:  # noqa: BLE001 - every check needs the model: report it as their failure
        return [Line(c, "FAIL", f"model {args.model!r} not prepared: {e}") for c in ("greedy", "train", "features")]
    checks = args.checks.split(",")
    if "greedy" in checks:
        lines.append(_guard("greedy", lambda: check_greedy(args, ref.path, work)))
    trained: list = []
    if "train" in checks or "features" in checks:
        lines.append(_guard("train", lambda: check_train(args, ref, work, trained)))
    if "features" in checks:
        lines.append(
            _guard("features", lambda: check_features(args, trained[0], work))
            if trained
            else Line("features", "FAIL", "no checkpoint: the train check failed")
        )
    return lines


def _guard(check: str, run) -> Line:  # noqa: ANN001
    start = time.monotonic()
    try:
        line = run()
    except Exception as e:  # noqa: BLE001 - a crashed check is one FAIL line; the next ones still run
        line = Line(check, "FAIL", f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
    line.detail += f" [{time.monotonic() - start:.0f} s]"
    return line


# ----------------------------------------------------------------------------- 1. greedy: vLLM vs transformers
def greedy_requests() -> list:
    from scoder_lib.core.config import Sampling  # noqa: PLC0415 - runs in both venvs
    from scoder_lib.llm.base import GenRequest  # noqa: PLC0415

    greedy = Sampling(temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
    chat = [GenRequest.chat([{"role": "user", "content": c}], greedy) for c in GREEDY_PROMPTS]
    return chat + [GenRequest.completion(p, greedy) for p in RAW_PROMPTS]


def check_greedy(args: argparse.Namespace, model: str, work: Path) -> Line:
    if not args.vllm_python:
        return Line("greedy", "SKIP" if args.device == "cpu" else "FAIL", "no --vllm-python given")
    src, ref_out, vllm_out = work / "greedy-in.json", work / "greedy-transformers.json", work / "greedy-vllm.json"
    job = {"model": model, "cache_dir": str(work / "cache"), "dtype": args.dtype, "eager": args.eager}
    src.write_text(json.dumps({**job, "requests": [asdict(r) for r in greedy_requests()]}))
    # Children's stdout goes to stderr: stdout holds only the summary lines.
    reference = [sys.executable, str(REPO / "tests_vllm" / "reference.py"), "generate", src, ref_out]
    subprocess.run(reference, check=True, stdout=sys.stderr)
    subprocess.run([args.vllm_python, __file__, "vllm-generate", src, vllm_out], check=True, stdout=sys.stderr)
    tie_gap = args.tie_gap if args.tie_gap is not None else (0.01 if args.dtype == "float32" else 0.25)
    return compare_greedy(json.loads(ref_out.read_text()), json.loads(vllm_out.read_text()), tie_gap, args)


def compare_greedy(ref: dict, vllm: dict, tie_gap: float, args: argparse.Namespace) -> Line:
    """PASS: same prompt tokens, >= min_identical of outputs identical, every divergence at a near-tie."""
    n, same, gaps, real = len(ref["outputs"]), 0, [], []
    for i, (r, v) in enumerate(zip(ref["outputs"], vllm["outputs"])):
        if r["prompt_ids"] != v["prompt_ids"]:
            return Line("greedy", "FAIL", f"request {i}: the backends tokenised the prompt differently")
        a, b = r["token_ids"], v["token_ids"]
        if a == b:
            same += 1
            continue
        at = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        gap = r["gaps"][at]["gap"] if at < len(r["gaps"]) else math.inf
        (gaps if gap <= tie_gap else real).append(gap)
    ok = not real and same >= args.min_identical * n
    detail = (
        f"{same}/{n} greedy outputs identical ({vllm.get('platform', '?')} vLLM vs transformers, {args.dtype}, "
        f"{MAX_NEW_TOKENS} tokens); {len(gaps)} diverged at near-ties (largest gap {max(gaps, default=0):.3g} <= "
        f"{tie_gap}), {len(real)} not (gaps {sorted(real)[:3]})"
    )
    return Line("greedy", "PASS" if ok else "FAIL", detail)


def vllm_generate(src: Path, dst: Path) -> int:
    """(vLLM venv) greedy token ids of the requests in `src`, as VllmBackend encodes and samples them."""
    from scoder_lib.core.config import ModelSpec, VllmOptions  # noqa: PLC0415 - this runs in the vLLM venv
    from scoder_lib.core.logs import setup_logging  # noqa: PLC0415
    from scoder_lib.llm.generator import make_backend  # noqa: PLC0415

    setup_logging()
    job = json.loads(src.read_text())
    options = VllmOptions(enforce_eager=job["eager"])  # otherwise as the pipeline builds its engine
    spec = ModelSpec(name=job["model"], backend="vllm", dtype=job["dtype"], vllm=options)
    backend = make_backend(spec, Path(job["cache_dir"]))
    from vllm.inputs import TokensPrompt  # noqa: PLC0415 - after logging set-up: vLLM logs on import
    from vllm.platforms import current_platform  # noqa: PLC0415

    try:
        requests = greedy_requests()
        prompts = [TokensPrompt(prompt_token_ids=backend.encode(r)) for r in requests]
        params = [backend.sampling_params(r, 0) for r in requests]
        outs = backend.llm.generate(prompts, params, use_tqdm=False)
        rows = []
        for r, o in zip(requests, outs):
            ids = list(o.outputs[0].token_ids)
            if o.outputs[0].finish_reason == "stop" and ids and ids[-1] in backend.eos:
                ids = ids[:-1]  # vLLM keeps the EOS it stopped on; the transformers backend does not (as _completion)
            rows.append({"prompt_ids": backend.encode(r), "token_ids": ids})
        dst.write_text(json.dumps({"platform": current_platform.device_name, "outputs": rows}))
    finally:
        backend.close()
    return 0


# ----------------------------------------------------------------------------- 2. bf16 LoRA training with moments
def train_examples(n: int = 32) -> list:
    from scoder_lib.method.train import Example  # noqa: PLC0415 - heavy: after the GPU check

    return [
        Example.of(
            [{"role": "user", "content": f"Write a Python function `add_{k}(x)` that returns x plus {k}."}],
            f"```python\ndef add_{k}(x):\n    return x + {k}\n```",
        )
        for k in range(n)
    ]


def check_train(args: argparse.Namespace, ref, work: Path, trained: list) -> Line:  # noqa: ANN001
    import torch  # noqa: PLC0415 - after the GPU check
    from safetensors.torch import load_file  # noqa: PLC0415

    from scoder_lib.core.config import LoraOptions, TrainOptions  # noqa: PLC0415
    from scoder_lib.method.train import load_moments, sft  # noqa: PLC0415

    opts = TrainOptions(
        max_steps=TRAIN_STEPS,
        batch_size=TRAIN_BATCH,
        num_checkpoints=2,
        max_seq_len=MAX_SEQ_LEN,
        learning_rate=1e-3,
        lora=LoraOptions(r=16, alpha=32, last_layers=4),
        extra_args={"bf16": args.train_dtype == "bf16"},
    )
    res = sft(train_examples(), ref.path, work / "train", opts, ref.fingerprint)
    losses = [x for _, x in res.losses]
    problems = [] if res.steps == TRAIN_STEPS and len(res.checkpoints) == 2 else [f"{res.steps} steps"]
    problems += [] if all(math.isfinite(x) for x in losses) else ["a loss is not finite"]
    for ckpt in res.checkpoints:
        m, v, _ = load_moments(ckpt)
        n_lora = len(load_file(str(ckpt / "adapter_model.safetensors")))
        finite = all(bool(torch.isfinite(t).all()) for t in [*m.values(), *v.values()])
        if not (len(m) == len(v) == n_lora and finite and all(bool((t >= 0).all()) for t in v.values())):
            problems.append(f"{ckpt.name}: moments for {len(m)}/{n_lora} LoRA weights, finite={finite}")
    where = args.device
    if args.device == "cuda":  # evidence that the steps ran on the GPU, not only that one was there
        used = torch.cuda.max_memory_allocated()
        problems += [] if used > 0 else ["no GPU memory was allocated"]
        where = f"{torch.cuda.get_device_name()} (peak {used / 2**20:.0f} MiB)"
    trained.append((res.final, train_examples()[:16]))
    detail = (
        f"{res.steps} {args.train_dtype} LoRA steps on {where} in {res.wall_s:.1f} s, loss {losses[0]:.3f} -> "
        f"{losses[-1]:.3f}, moments for {len(m)} LoRA weights in each of {len(res.checkpoints)} checkpoints"
        + (f"; problems: {problems}" if problems else "")
    )
    return Line("train", "FAIL" if problems else "PASS", detail)


# ----------------------------------------------------------------------------- 3. features: device vs CPU
def _features(checkpoint: Path, examples: list, dim: int) -> dict:
    from scoder_lib.core.config import InfluenceOptions  # noqa: PLC0415 - heavy: after the GPU check
    from scoder_lib.method.influence.features import gradient_features  # noqa: PLC0415

    opts = InfluenceOptions(projection_dim=dim, batch_size=4)
    return {
        k: gradient_features(checkpoint, examples, kind=k, opts=opts, max_seq_len=MAX_SEQ_LEN) for k in ("adam", "sgd")
    }


def cpu_features(checkpoint: Path, examples: Path, dst: Path, dim: int) -> int:
    """(subprocess, no GPU visible) the features of `checkpoint` on the CPU, to an .npz."""
    import numpy as np  # noqa: PLC0415

    from scoder_lib.core.logs import setup_logging  # noqa: PLC0415
    from scoder_lib.method.train import Example  # noqa: PLC0415

    setup_logging()
    rows = json.loads(examples.read_text())
    np.savez(dst, **_features(checkpoint, [Example.of(m, r) for m, r in rows], dim))
    return 0


def check_features(args: argparse.Namespace, trained: tuple, work: Path) -> Line:
    import numpy as np  # noqa: PLC0415

    checkpoint, examples = trained
    here = _features(checkpoint, examples, args.dim)
    src, dst = work / "features-examples.json", work / "features-cpu.npz"
    src.write_text(json.dumps([[[{"role": r, "content": c} for r, c in e.messages], e.response] for e in examples]))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, __file__, "cpu-features", checkpoint, src, dst, "--dim", str(args.dim)]
    subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)
    cpu = np.load(dst)
    cos = {k: float(np.min(np.sum(here[k] * cpu[k], axis=1))) for k in here}
    diff = {k: float(np.max(np.abs(here[k] - cpu[k]))) for k in here}
    ok = all(c >= args.min_cos for c in cos.values())
    detail = ", ".join(f"{k}: min row cosine {cos[k]:.6f}, max |diff| {diff[k]:.2g}" for k in here)
    return Line(
        "features",
        "PASS" if ok else "FAIL",
        f"{args.device} vs cpu on {len(examples)} examples, D={args.dim}: {detail} (needs >= {args.min_cos})",
    )


if __name__ == "__main__":
    raise SystemExit(main())
