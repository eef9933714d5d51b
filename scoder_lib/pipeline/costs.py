"""What synthetic data costs: proprietary-teacher dollars versus self-distillation compute."""

from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer

from scoder_lib.core.config import Config
from scoder_lib.core.run import Run
from scoder_lib.llm.models import prepare
from scoder_lib.method import seed
from scoder_lib.method.synthesis import messages


def teacher_tokens(cfg: Config) -> tuple[int, int, int]:
    """(samples, prompt tokens, completion tokens) of the seed set, counted with the synthesizer's tokenizer.

    Why a proxy tokenizer: the seed set records no API usage; counts from another BPE differ by ~10-20%.
    """
    seeds = seed.load(cfg.resolve(cfg.seed_stage.teacher.seed_file))
    tok = AutoTokenizer.from_pretrained(prepare(cfg.synthesizer, cfg.resolve(cfg.cache_dir)).path)
    prompt = completion = 0
    for r in seeds.rows:
        prompt += sum(len(tok(m["content"])["input_ids"]) for m in messages(r.snippet, r.prompt_version))
        completion += len(tok(seed.response(r))["input_ids"])
    return len(seeds.rows), prompt, completion


def synthesis_costs(run: Run, n_final: int) -> dict[str, Any]:
    """Teacher USD per 1K samples (list prices from params) vs CPU/GPU seconds of self-distillation."""
    cfg = run.cfg
    n_seed, p_tok, c_tok = teacher_tokens(cfg)
    prices = cfg.seed_stage.teacher.model.openai
    usd = (p_tok * prices.price_per_1m_input_usd + c_tok * prices.price_per_1m_output_usd) / 1e6
    sd_s = sum(
        run.wall_s(ref) or 0.0 for ref in run.instances if ref.key in ("02_seed", "03_sample_score", "04_influence")
    )
    rows = [
        {
            "item": "teacher seed set",
            "samples": n_seed,
            "prompt_tokens": p_tok,
            "completion_tokens": c_tok,
            "usd": round(usd, 4),
            "usd_per_1k_samples": round(1000 * usd / max(n_seed, 1), 4),
        },
        {
            "item": "self-distillation (02 + all iterations)",
            "samples": n_final,
            "compute_s": round(sd_s, 1),
            "compute_s_per_1k_samples": round(1000 * sd_s / max(n_final, 1), 1),
        },
    ]
    return {
        "rows": rows,
        "teacher_usd_per_1k": rows[0]["usd_per_1k_samples"],
        "selfdistill_s_per_1k": rows[1]["compute_s_per_1k_samples"],
    }
