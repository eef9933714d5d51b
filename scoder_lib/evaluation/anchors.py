"""Published reference numbers at another scale, for orientation in figures and reports only.

EvalPlus leaderboard, greedy pass@1 (%), students fine-tuned from DeepSeek-Coder-6.7B-Base:
Magicoder-DS on OSS-Instruct-75K; Magicoder-S-DS on OSS-Instruct-75K plus Evol-Instruct-110K.
Their MBPP figures are EvalPlus's base-input check (`MBPP_BASE`), not the original asserts ("mbpp").
"""

from __future__ import annotations

from scoder_lib.evaluation.compare import MBPP_BASE

OTHER_SCALE = "another scale: 6.7B student, 75K+ samples; not comparable"
ANCHORS: dict[str, dict[str, float]] = {
    "Magicoder-DS-6.7B (OSS-Instruct 75K)": {"humaneval": 66.5, "humaneval+": 60.4, MBPP_BASE: 75.4, "mbpp+": 61.9},
    "Magicoder-S-DS-6.7B (OSS-Instruct 75K + Evol 110K)": {
        "humaneval": 76.8,
        "humaneval+": 70.7,
        MBPP_BASE: 75.7,
        "mbpp+": 64.4,
    },
}


def refs_for(benchmark: str) -> dict[str, float]:
    """Reference lines for one benchmark's figure, labelled as another scale."""
    return {f"{name} - other scale": scores[benchmark] for name, scores in ANCHORS.items() if benchmark in scores}


def sentence() -> str:
    """One line for a report: every reference number with its label."""
    return "; ".join(f"{name}: " + ", ".join(f"{b} {v}" for b, v in scores.items()) for name, scores in ANCHORS.items())
