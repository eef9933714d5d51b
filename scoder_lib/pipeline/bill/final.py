"""The work of stages 05 (final synthesis per arm, one student per arm) and 06 (benchmarks per model)."""

from __future__ import annotations

from dataclasses import dataclass

from scoder_lib.core.config import ArmOptions
from scoder_lib.llm import student_format
from scoder_lib.pipeline.bill.constants import BENCH_PROMPT_TOKENS, BENCH_TASKS, CHAT_OVERHEAD_TOKENS, SHARES_PROMPTS
from scoder_lib.pipeline.bill.context import Ctx
from scoder_lib.pipeline.bill.lengths import fit, tokens
from scoder_lib.pipeline.bill.stages import verify
from scoder_lib.pipeline.bill.work import FLOAT32_BYTES, Work, generation, sandbox, training

HELDOUT = "heldout"  # evaluation.benchrun.HELDOUT: the held-out teacher problems as tasks


@dataclass(frozen=True)
class ArmSize:
    name: str
    asked: int | None
    available: float
    got: int


def final(c: Ctx) -> tuple[list[Work], list[ArmSize]]:
    """05: each synthesizing arm answers `final.snippets` fresh snippets; arms are cut to their asked
    sizes; one student is trained per non-empty arm."""
    cfg, fin, st = c.cfg, c.cfg.final, "05_final"
    out: list[Work] = []
    arms = [a for a in fin.arms if a.enabled]
    sizes = []
    for arm in arms:
        if arm.data == "teacher":
            available = _teacher_available(c, arm)
        else:
            trained = arm.data != "base"
            gen = c.synthesis(st, f"final synthesis: {arm.name}", cfg.synthesizer, fin.snippets, fin.sampling, trained)
            # Only another run's final synthesizer is new here; base, enhanced and this run's were merged before.
            gen.merges, gen.disk_bytes = c.merges(cfg.synthesizer, 1 if arm.data == "run" else 0)
            out += [gen, verify(c, st, f"sandbox: final synthesis of {arm.name}", gen.sequences)]
            available = fin.snippets * c.rate(fin.min_status) * c.a.dedup_survival
        asked = arm.n if arm.n is not None else fin.n_train
        sizes.append(ArmSize(arm.name, asked, available, int(min(asked, available) if asked else available)))
    _shortfalls(c, sizes, {a.name for a in arms if a.data != "teacher"})
    if fin.equalize and sizes:
        smallest = min(z.got for z in sizes)
        sizes = [ArmSize(z.name, z.asked, z.available, smallest) for z in sizes]
    out += students(c, sizes)
    return out, sizes


def _shortfalls(c: Ctx, sizes: list[ArmSize], synthesizing: set[str]) -> None:
    """Warn where the expected yield of the filters leaves an arm short of its asked size (05 would stop)."""
    fin = c.cfg.final
    short = [z for z in sizes if z.asked and z.available < z.asked * (1 - fin.shortfall_tolerance)]
    if not short:
        return
    names = ", ".join(z.name for z in short)
    msg = f"05: arm(s) {names} would fall short of their asked size (tolerance {fin.shortfall_tolerance:.0%}): 05 stops"
    synth = [z for z in short if z.name in synthesizing]
    if synth:
        need = max(z.asked or 0 for z in synth) * (1 - fin.shortfall_tolerance)
        rate = need / (fin.snippets * c.a.dedup_survival)
        msg += (
            f". The bill expects {c.rate(fin.min_status):.0%} of final samples to reach '{fin.min_status}' "
            f"({fin.snippets:,} snippets give about {synth[0].available:,.0f}); {need:,.0f} need {rate:.0%}"
        )
    c.warnings.append(msg)


def _teacher_available(c: Ctx, arm: ArmOptions) -> float:
    """The teacher arm's rows: the run's teacher training samples, plus a dataset (its size unknown
    before the run: taken as what the arm asks for)."""
    t = c.cfg.seed_stage.teacher
    asked = arm.n if arm.n is not None else c.cfg.final.n_train
    if t.dataset is None:
        return float(c.teacher_train)
    if asked is None:
        c.warnings.append(f"05: the teacher dataset's size is unknown before the run: arm {arm.name} billed without it")
        return float(c.teacher_train)
    return float(max(asked, c.teacher_train))


def students(c: Ctx, sizes: list[ArmSize]) -> list[Work]:
    """One SFT per non-empty arm, identical options; the examples are problem -> solution pairs."""
    fin, size = c.cfg.final, c.sizes["student"]
    kept = fit([(r.student_prompt, r.student_response) for r in c.seed.rows], fin.train)
    out = []
    for z in sizes:
        if z.got:
            out.append(training("05_final", f"student: {z.name} ({z.got:,} samples)", size, fin.train, z.got, kept))
    return out


def task_counts(c: Ctx) -> dict[str, int]:
    """Tasks per benchmark after `max_tasks` and `task_sample`; LiveCodebench's count is not known here."""
    ev, counts = c.cfg.evaluate, {}
    for b in ev.benchmarks:
        n = BENCH_TASKS[b]
        if n is None:
            c.warnings.append(f"06: {b}: task count depends on the release files; not billed")
            continue
        n = min(n, ev.max_tasks) if ev.max_tasks else n
        counts[b] = min(n, ev.task_sample.get(b, n))
    if ev.heldout_problems:
        counts[HELDOUT] = len(c.seed.heldout)  # every held-out problem, not only the yardstick's
    return counts


def evaluate(c: Ctx, sizes: list[ArmSize]) -> list[Work]:
    """06: every model (the base student if asked, one per trained arm) answers every benchmark greedily;
    benchmarks that reuse another's prompts are served by the generation cache."""
    cfg, ev, st = c.cfg, c.cfg.evaluate, "06_evaluate"
    models = (["base"] if ev.evaluate_base_student else []) + [z.name for z in sizes if z.got]
    counts = task_counts(c)
    unique = {b: n for b, n in counts.items() if SHARES_PROMPTS.get(b) not in counts}
    prompt = sum(n * _prompt_tokens(c, b) for b, n in unique.items()) / max(sum(unique.values()), 1)
    samples = 1 if ev.sampling.temperature <= 0 else ev.sampling.n
    answer = _answer_tokens(c)
    out = []
    for name in models:
        gen = generation(
            st, f"{name}: {sum(unique.values())} prompts", cfg.final.student, c.sizes["student"],
            sum(unique.values()), samples, (prompt, answer),
        )  # fmt: skip
        lora_student = cfg.final.train.method == "lora" and name != "base"
        if lora_student and cfg.final.student.backend == "vllm" and not cfg.final.student.vllm.lora_as_adapter:
            gen.merges, gen.disk_bytes = 1, c.sizes["student"].params * FLOAT32_BYTES
        out.append(gen)
        programs = sum(n * samples * _programs_per_answer(c, b) for b, n in counts.items())
        out.append(
            sandbox(
                st,
                f"{name}: judge {sum(counts.values())} answers",
                programs,
                cfg.execution.timeout_s,
                cfg.execution.workers,
            )
        )
    return out


def _programs_per_answer(c: Ctx, bench: str) -> float:
    """Sandbox programs per answer, in plain-test units: EvalPlus's plus inputs cost more; a held-out
    answer runs once per teacher assert."""
    if bench == HELDOUT:
        return c.seed.mean("judge_jobs", c.seed.heldout)
    return c.a.plus_test_cost if bench.endswith("+") else 1.0


def _prompt_tokens(c: Ctx, bench: str) -> float:
    """A benchmark prompt in EvalPlus's chat format (instruction, fenced task, response prefix)."""
    frame = tokens(len(student_format.user_turn("")) + len(student_format.response_prefix()))
    frame += CHAT_OVERHEAD_TOKENS.value
    if bench == HELDOUT:
        return c.seed.mean("student_prompt", c.seed.heldout)
    if bench == "bigcodebench":
        return c.a.bigcodebench_prompt_tokens + frame
    key = "mbpp+" if bench.startswith("mbpp") else "humaneval"
    return BENCH_PROMPT_TOKENS[key].value + frame


def _answer_tokens(c: Ctx) -> float:
    limit = c.cfg.evaluate.sampling.max_new_tokens
    if c.small("student"):
        return c.a.small_bench_fill * limit
    return min(limit, c.a.large_bench_answer_tokens)
