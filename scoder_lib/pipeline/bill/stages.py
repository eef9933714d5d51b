"""The work of stages 01-04 and 07, counted from the config the way the notebooks do it."""

from __future__ import annotations

from scoder_lib.pipeline.bill.constants import PREPROCESS_S_PER_FILE, REPORT_S, STDLIB_FILES
from scoder_lib.pipeline.bill.context import Ctx
from scoder_lib.pipeline.bill.lengths import fit
from scoder_lib.pipeline.bill.work import Work, sandbox, training


def preprocess(c: Ctx) -> list[Work]:
    """01: mining the sources (no model); time per source file as measured on the standard library."""
    files, unknown = 0.0, []
    for src in c.cfg.preprocess.sources:
        if src.kind == "stdlib":
            files += STDLIB_FILES.value
        elif src.max_files:
            files += src.max_files
        else:
            unknown.append(src.kind)
    if unknown:
        c.warnings.append(f"01: file count of source(s) {', '.join(unknown)} unknown before the run: not billed")
    host = files * PREPROCESS_S_PER_FILE.value
    return [Work("01_preprocess", f"mine {files:,.0f} source files", "host", host_s=host)]


def seed_stage(c: Ctx) -> tuple[list[Work], int]:
    """02: validate the seed set, buy teacher samples, train the enhanced synthesizer, the yardstick.
    Returns the work and the enhanced synthesizer's checkpoint count (iteration 1's M at most)."""
    cfg, st = c.cfg, "02_seed"
    ex = cfg.execution
    out = [sandbox(st, f"seed set in the sandbox ({len(c.seed.rows)} samples)", len(c.seed.rows), 0.0, ex.workers)]
    t = cfg.seed_stage.teacher
    if t.backend == "openai" and t.n_new:
        out += teacher_purchase(c)
    n = (
        c.teacher_train
        if cfg.seed_stage.max_train_samples is None
        else min(c.teacher_train, cfg.seed_stage.max_train_samples)
    )
    pairs = [(r.prompt, r.response) for r in c.seed.train]
    opts = cfg.seed_stage.train
    sft = training(
        st, "enhanced synthesizer (SFT on teacher samples)", c.sizes["synthesizer"], opts, n, fit(pairs, opts)
    )
    out += [sft, *yardstick(c, st, "base synthesizer", merged=0, trained=False)]
    out += yardstick(c, st, "enhanced synthesizer", merged=1)
    return out, max(sft.checkpoints, 1)


def teacher_purchase(c: Ctx) -> list[Work]:
    t = c.cfg.seed_stage.teacher
    prices = t.model.openai
    prompt, completion = c.seed.mean("prompt"), c.seed.response_upto(t.sampling.max_new_tokens)
    usd = t.n_new * (prompt * prices.price_per_1m_input_usd + completion * prices.price_per_1m_output_usd) / 1e6
    buy = Work(
        "02_seed",
        f"teacher: {t.n_new:,} snippets to {t.model.name} (about {c.bought:,} valid)",
        "api",
        model=t.model.name,
        backend="openai",
        prompts=t.n_new,
        sequences=t.n_new,
        prompt_tokens=t.n_new * prompt,
        generated_tokens=t.n_new * completion,
        usd=usd,
    )
    ex = c.cfg.execution
    return [buy, sandbox("02_seed", "teacher samples in the sandbox", t.n_new, ex.timeout_s, ex.workers)]


def yardstick(c: Ctx, stage: str, who: str, merged: int, trained: bool = True) -> list[Work]:
    """Held-out snippets x compare_sampling.n samples from one synthesizer, verified in the sandbox."""
    cfg = c.cfg
    sampling = cfg.seed_stage.compare_sampling
    gen = c.synthesis(stage, f"yardstick: {who}", cfg.synthesizer, c.heldout, sampling, trained)
    gen.merges, gen.disk_bytes = c.merges(cfg.synthesizer, merged)
    return [gen, verify(c, stage, f"sandbox: yardstick of the {who}", gen.sequences)]


def verify(c: Ctx, stage: str, item: str, samples: float, role: str = "synthesizer") -> Work:
    """The sandbox runs the samples that parse (the others have nothing to run)."""
    ex = c.cfg.execution
    return sandbox(stage, item, samples * c.rate("parsed", role), ex.timeout_s, ex.workers)


def report(c: Ctx) -> list[Work]:
    """07: the study report (rendering only; measured on tiny)."""
    return [Work("07_report", "render the reports", "host", host_s=REPORT_S.value)]
