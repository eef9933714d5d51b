"""The study report's data: read only the stages' metrics.json files and saved artifacts."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from scoder_lib.core.io import read_json
from scoder_lib.core.run import Run
from scoder_lib.evaluation import anchors
from scoder_lib.evaluation.compare import HELDOUT_TESTS
from scoder_lib.pipeline.engines import one_line
from scoder_lib.sandbox.isolation import isolation_in_force, summary

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasketch",
    "papermill",
    "vllm",
    "llama_cpp_python",
    "openai",
)


def stage_walls(run: Run) -> pd.DataFrame:
    """Per stage: done, wall seconds, when it finished, what ran its models and training (backend,
    launcher), the run it was taken from (`share`), and the isolation untrusted code ran under."""
    rows = []
    for ref in run.instances:
        marker = read_json(run.marker(ref)) if run.marker(ref).exists() else {}
        rows.append(
            {
                "stage": ref.id,
                "done": bool(marker),
                "wall_s": run.wall_s(ref),
                "finished_at": marker.get("finished_at"),
                "ran_with": one_line(marker.get("engines", {})),
                "taken_from": marker.get("shared_from", {}).get("run", ""),  # an ablation's shared stage
                "isolation": marker.get("isolation", ""),
            }
        )
    return pd.DataFrame(rows)


def run_facts(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = "-"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu only"
    return {
        "run": run.name,
        "profile": cfg.profile,
        "description": cfg.description,
        "seed": cfg.seed,
        "synthesizer": cfg.synthesizer.name,
        "scorer": (run.cfg.iterate.scorer or cfg.synthesizer).name,
        "student": cfg.final.student.name,
        "iterations": run.cfg.iterate.iterations,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {device}",
        "isolation": summary(isolation_in_force(cfg.execution.isolation)),
        **{f"pkg {k}": v for k, v in versions.items()},
    }


def funnel(run: Run) -> list[tuple[str, int]]:
    """From the pool to the final instruction set, one step per filter, across stages."""
    steps = [("pool snippets", int(run.metrics("01_preprocess").get("pool_size", 0)))]
    for t in range(1, run.cfg.iterate.iterations + 1):
        m3, m4 = run.metrics("03_sample_score", t), run.metrics("04_influence", t)
        steps += [
            (f"iter {t}: candidates", int(m3.get("candidates", 0))),
            (f"iter {t}: eligible", int(m3.get("eligible", 0))),
            (f"iter {t}: score-selected", int(m3.get("selected", 0))),
            (f"iter {t}: influence-kept", int(m4.get("kept", 0))),
        ]
    m5 = run.metrics("05_final")
    method = next((a.name for a in run.cfg.final.arms if a.data == "method"), None)
    steps += [("final: snippets synthesized", int(m5.get("final_snippets", 0)))]
    if method:
        steps += [(f"final: {method} dataset", int(m5.get(f"{method}_dataset_size", 0)))]
    return steps


def _heldout(prefix: str, m: dict[str, Any]) -> dict[str, Any]:
    keys = ("valid_rate", "valid_ci_low", "valid_ci_high", "parsed_rate", "parsed_ci_low", "parsed_ci_high")
    return {f"heldout_{k}": m.get(f"{prefix}{k}") for k in keys}


def iteration_curves(run: Run) -> pd.DataFrame:
    """Per synthesizer (-1 = base, 0 = enhanced, t = after iteration t): held-out rates with intervals,
    scores, the aspect weights' separation and whether the fit was used, influence, and what each
    iteration kept."""
    m2 = run.metrics("02_seed")
    rows = [{"synthesizer": -1, **_heldout("base_", m2)}, {"synthesizer": 0, **_heldout("enhanced_", m2)}]
    modes = ["", ""]  # no weights for the base and enhanced synthesizers
    for t in range(1, run.cfg.iterate.iterations + 1):
        m3, m4 = run.metrics("03_sample_score", t), run.metrics("04_influence", t)
        rows.append(
            {
                "synthesizer": t,
                **_heldout("heldout_", m4),
                "candidates": m3.get("candidates"),
                "eligible": m3.get("eligible"),
                "selected": m3.get("selected"),
                "kept": m4.get("kept"),
                "candidate_valid_rate": m3.get("valid_rate"),
                "mean_score_eligible": m3.get("mean_score_eligible"),
                "weights_auc_cv": m3.get("weights_auc_cv"),
                "equal_weights_auc": m3.get("equal_weights_auc"),
                **{f"mean_{a}": m3.get(f"mean_{a}") for a in run.cfg.iterate.aspects},
                "influence_mean": m4.get("influence_mean"),
                "influence_std": m4.get("influence_std"),
                "influence_vs_score_spearman": m4.get("spearman_score_influence"),
                "delta_valid": m4.get("vs_previous_valid_delta"),
                "delta_parsed": m4.get("vs_previous_parsed_delta"),
            }
        )
        modes.append(m3.get("weights_mode", ""))
    df = pd.DataFrame(rows).set_index("synthesizer").apply(pd.to_numeric, errors="coerce")
    return df.assign(aspect_weights=modes)  # "fit", or why equal weights were used instead


def readable(curves: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """`curves` for display: rates rounded; influence (learning-rate-weighted cosines, ~1e-5) in three
    significant digits, which rounding would show as 0."""
    out = curves.round(digits).astype(object)
    for c in ("influence_mean", "influence_std"):
        if c in curves:
            out[c] = curves[c].map(lambda v: "" if pd.isna(v) else f"{v:.{digits}g}")
    return out


def curve_long(curves: pd.DataFrame) -> pd.DataFrame:
    """The held-out rates in long form (synthesizer, measure, rate, low, high) for a banded line plot."""
    out = []
    for what in ("valid", "parsed"):
        part = curves[[f"heldout_{what}_rate", f"heldout_{what}_ci_low", f"heldout_{what}_ci_high"]].reset_index()
        part.columns = ["synthesizer", "rate", "low", "high"]
        out.append(part.assign(measure=what))
    return pd.concat(out, ignore_index=True)


def arms(run: Run) -> pd.DataFrame:
    """Stage 05's arm table: data source, asked, available after the filters, got."""
    path = run.stage_dir("05_final") / "arms.json"
    return pd.DataFrame(read_json(path)).set_index("arm") if path.exists() else pd.DataFrame()


def paired(run: Run) -> pd.DataFrame:
    path = run.stage_dir("06_evaluate") / "paired.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def evaluation(run: Run) -> pd.DataFrame:
    path = run.stage_dir("06_evaluate") / "table.csv"
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


def costs(run: Run) -> pd.DataFrame:
    path = run.stage_dir("05_final") / "costs.json"
    return pd.DataFrame(read_json(path)["rows"]).set_index("item") if path.exists() else pd.DataFrame()


def summary_html(
    facts: dict[str, Any],
    claims: pd.DataFrame,
    table: pd.DataFrame,
    curves: pd.DataFrame,
    walls: pd.DataFrame,
    arm_table: pd.DataFrame | None = None,
    cost_table: pd.DataFrame | None = None,
) -> str:
    """The block that opens the index page: what the run shows and how sure it is, then the evidence
    (with the arms, ablation runs included, the data's cost and what ran each stage, when given)."""
    total = pd.to_numeric(walls.wall_s, errors="coerce").sum()
    parts = [
        f"<h2>Study summary</h2><p>Profile <b>{facts['profile']}</b>: {facts['description']}<br>"
        f"synthesizer {facts['synthesizer']}, student {facts['student']}, {facts['iterations']} iteration(s); "
        f"stages took {total / 60:.1f} min on {facts['machine']}; untrusted code ran under "
        f"<b>{facts.get('isolation', '?')}</b>.</p>"
    ]
    ran = walls[walls.isolation != ""] if "isolation" in walls else walls.iloc[0:0]
    if len(ran):
        parts.append(
            "<p>Isolation of model-written code, per stage: "
            + "; ".join(f"{r.stage}: {r.isolation}" for r in ran.itertuples())
            + ".</p>"
        )
    if not claims.empty:
        parts.append(
            "<h3>What this run shows</h3><p>Each claim of the paper this run can test: the measured "
            "effect, its 95% interval, its exact p and that p Holm-adjusted over the claim's rows, and a "
            "verdict read off the interval and the adjusted p together.</p>" + claims.to_html(index=False, na_rep="")
        )
    if not table.empty:
        wide = (table.pivot(index="model", columns="benchmark", values="pass@1") * 100).round(1)
        note = f"; {HELDOUT_TESTS}: the share of the teacher's asserts passed" if HELDOUT_TESTS in wide else ""
        parts.append(f"<h3>Greedy pass@1 (%{note})</h3>" + wide.to_html())
        parts.append(f"<p><i>Reference ({anchors.OTHER_SCALE}): {anchors.sentence()}.</i></p>")
    if not curves.empty:
        cols = [c for c in curves if c.startswith("heldout_")]
        parts.append(
            "<h3>Held-out synthesis per synthesizer (-1 = base, 0 = enhanced)</h3>" + curves[cols].round(3).to_html()
        )
    if arm_table is not None and not arm_table.empty:
        parts.append(
            "<h3>Arms</h3><p>What each student was trained on (an arm fed by another run is an ablation): "
            "asked, available after the filters, got.</p>" + arm_table.to_html(na_rep="")
        )
    if cost_table is not None and not cost_table.empty:
        parts.append("<h3>Cost of the data</h3>" + cost_table.to_html(na_rep=""))
    if "ran_with" in walls and (walls.ran_with != "").any():
        rows = walls[walls.ran_with != ""]
        parts.append(
            "<h3>What ran each stage</h3><p>Backend of each model and launcher of each training, per stage.</p>"
            + rows[["stage", "ran_with"]].to_html(index=False)
        )
    return "".join(parts)


def summary_path(run: Run) -> Path:
    return run.stage_dir("07_report") / "summary.html"
