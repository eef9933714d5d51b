"""What synthetic data costs: proprietary-teacher dollars versus self-distillation compute."""

from __future__ import annotations

from typing import Any

from scoder_lib.core.config import Config
from scoder_lib.core.records import SeedSample
from scoder_lib.core.run import Run
from scoder_lib.llm.models import synthesizer_tokenizer
from scoder_lib.method import seed, teacher
from scoder_lib.method.synthesis import messages

SELF_DISTILLATION = ("02_seed", "03_sample_score", "04_influence")


def teacher_tokens(cfg: Config, rows: list[SeedSample]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of teacher samples, counted with the synthesizer's tokenizer.

    Why a proxy tokenizer: the committed seed set records no API usage; counts from another BPE differ
    by ~10-20%.
    """
    tok = synthesizer_tokenizer(cfg)
    prompt = completion = 0
    for r in rows:
        prompt += sum(len(tok(m["content"])["input_ids"]) for m in messages(r.snippet, r.prompt_version))
        completion += len(tok(seed.response(r))["input_ids"])
    return prompt, completion


def _teacher_rows(run: Run) -> list[dict[str, Any]]:
    """The teacher's part: the committed training split at list prices, and what the API calls really cost."""
    cfg, data = run.cfg, teacher.load(run)
    prices = cfg.seed_stage.teacher.model.openai
    p_tok, c_tok = teacher_tokens(cfg, data.seeds.train)  # held-out rows were never paid for as training data
    usd = (p_tok * prices.price_per_1m_input_usd + c_tok * prices.price_per_1m_output_usd) / 1e6
    rows = [
        {
            "item": "teacher: committed seed set (training split, list prices)",
            "samples": len(data.seeds.train),
            "prompt_tokens": p_tok,
            "completion_tokens": c_tok,
            "usd": round(usd, 4),
        }
    ]
    if data.usage:
        rows.append(
            {
                "item": f"teacher: bought through the API ({data.usage.get('model', '?')})",
                "samples": len(data.bought),
                "prompt_tokens": data.usage.get("prompt_tokens", 0),
                "completion_tokens": data.usage.get("completion_tokens", 0),
                "usd": round(float(data.usage.get("cost_usd", 0.0)), 4),
                "requested": data.usage.get("requested", 0),
            }
        )
    for r in rows:
        r["usd_per_1k_samples"] = round(1000 * r["usd"] / max(r["samples"], 1), 4)
    return rows


def synthesis_costs(run: Run, n_final: int, final_synthesis_s: float) -> dict[str, Any]:
    """Teacher USD per 1K samples vs the compute of self-distillation, final synthesis included."""
    sd_s = sum(run.wall_s(ref) or 0.0 for ref in run.instances if ref.key in SELF_DISTILLATION) + final_synthesis_s
    rows = _teacher_rows(run)
    rows.append(
        {
            "item": "self-distillation (02, every iteration, the final synthesis in 05)",
            "samples": n_final,
            "compute_s": round(sd_s, 1),
            "final_synthesis_s": round(final_synthesis_s, 1),
            "compute_s_per_1k_samples": round(1000 * sd_s / max(n_final, 1), 1),
        }
    )
    paid = [r for r in rows if "usd" in r]
    usd, samples = sum(r["usd"] for r in paid), sum(r["samples"] for r in paid)
    return {
        "rows": rows,
        "teacher_usd_per_1k": round(1000 * usd / max(samples, 1), 4),
        "teacher_usd_total": round(usd, 4),
        "selfdistill_s_per_1k": rows[-1]["compute_s_per_1k_samples"],
    }
