"""The bill as a readable table (stage rows, their items indented, totals) and as JSON."""

from __future__ import annotations

from typing import Any

from scoder_lib.pipeline.bill import constants
from scoder_lib.pipeline.bill.assumptions import table as assumption_table
from scoder_lib.pipeline.bill.build import Bill
from scoder_lib.pipeline.bill.work import Work

COLUMNS = ("prompts", "generated_tokens", "trained_tokens", "grad_passes", "gpu_s", "cpu_s", "host_s", "disk_bytes")
LABEL = 60


def human(x: float) -> str:
    """1,234 / 12.3k / 4.56M / 7.89B: counts at a glance."""
    if not x:
        return "-"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div * 10 or (unit != "k" and abs(x) >= div):
            return f"{x / div:.3g}{unit}"
    return f"{x:,.0f}"


def size(n: float) -> str:
    if not n:
        return "-"
    for div, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:.0f} B"


def amount(x: float) -> str:
    """Hours or minutes: 3 significant digits, thousands separated, tiny amounts as <0.001."""
    if not x:
        return "-"
    if x < 0.001:
        return "<0.001"
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def _row(label: str, values: dict[str, float], cpu: bool) -> str:
    cells = [
        human(values["prompts"]),
        human(values["generated_tokens"]),
        human(values["trained_tokens"]),
        human(values["grad_passes"]),
        amount(values["gpu_s"] / 3600),
        amount(values["cpu_s"] / 60) if cpu else amount(values["host_s"] / 3600),
        size(values["disk_bytes"]),
    ]
    return f"{label[:LABEL]:<{LABEL}}" + "".join(f"{c:>11}" for c in cells)


def _values(works: list[Work]) -> dict[str, float]:
    return {c: sum(float(getattr(w, c)) for w in works) for c in COLUMNS}


def render(bill: Bill) -> str:
    """The bill: per stage and per item, totals, the teacher's dollars, arms, the runs it reads, warnings."""
    cpu = bill.cpu_sized
    head = ["prompts", "generated", "trained", "grad pass", f"GPU-h {bill.gpu.name.split()[0]}"]
    head += ["CPU-min" if cpu else "host CPU-h", "disk"]
    lines = [
        f"Bill of run '{bill.run}' (profile {bill.profile}), counted before any work: no model is loaded.",
        f"GPU: {bill.gpu.name}. Tokens are generated or trained tokens (x epochs); disk is what stays on disk.",
        "",
        f"{'stage / item':<{LABEL}}" + "".join(f"{h:>11}" for h in head),
    ]
    for stage in bill.stages():
        works = [w for w in bill.works if w.stage == stage]
        lines.append(_row(stage, _values(works), cpu))
        for w in works:
            if not w.item.startswith("notebook:"):
                lines.append(_row(f"  {w.item}", _values([w]), cpu))
                lines += [f"      ({w.note})"] if w.note and w.kind in ("train", "gradients") else []
    lines += ["-" * (LABEL + 11 * len(head)), _row("total", _values(bill.works), cpu), ""]
    lines += _footer(bill)
    return "\n".join(lines)


def _footer(bill: Bill) -> list[str]:
    if bill.cpu_sized:
        out = ["CPU-min: wall minutes on the 2-core reference machine; GPU-h: the same run on one GPU."]
    else:
        out = [
            "GPU-h: time each stage holds the GPU (compute, engine starts, merges, sandbox, host-made projection "
            "blocks); host CPU-h: work without a GPU (mining the pool, notebook starts, reports)."
        ]
    out.append(teacher_line(bill))
    out.append("Arms (asked / expected after the filters / trained on):")
    out += [
        f"  {z.name:<24} {f'{z.asked:,}' if z.asked is not None else 'all':>8} / {z.available:>10,.0f} / {z.got:>8,}"
        for z in bill.arms
    ]
    if bill.dependencies:
        out.append(
            "Runs this one reads (their stages 01-04, less those they take from this run; a full standalone "
            "`make reproduce` of them costs the second figure):"
        )
        out += [
            f"  {d['arm']:<24} run {d['run']} (profile {d['profile']}): {amount(d['gpu_h_to_04'])} GPU-h "
            f"({amount(d['gpu_h_all'])} in full), {size(d['disk_bytes_to_04'])}, ${d['usd']:,.2f}; "
            f"takes {', '.join(d['shared']) or 'nothing'} from this run"
            for d in bill.dependencies
        ]
        extra = sum(d["gpu_h_to_04"] for d in bill.dependencies)
        out.append(f"  total with them: {amount(bill.total('gpu_s') / 3600 + extra)} GPU-h")
    out += [f"warning: {w}" for w in bill.warnings + (bill.cpu_warnings if bill.cpu_sized else [])]
    out.append("Constants and guesses: docs/bill.md, or --json; change a guess with --assume NAME=VALUE.")
    return out


def teacher_line(bill: Bill) -> str:
    buys = [w for w in bill.works if w.kind == "api"]
    if not buys:
        return "Teacher: $0 at run time (the committed seed set is already paid for; no samples are bought)."
    w = buys[0]
    return (
        f"Teacher: ${bill.teacher_usd:,.2f} for {w.prompts:,} requests to {w.model} "
        f"({human(w.prompt_tokens)} prompt + {human(w.generated_tokens)} completion tokens); "
        "the committed seed set costs nothing at run time."
    )


def to_json(bill: Bill) -> dict[str, Any]:
    """Everything the table shows, per item, with the constants and guesses it used."""
    stages = []
    for stage in bill.stages():
        works = [w for w in bill.works if w.stage == stage]
        stages.append({"stage": stage, "totals": _values(works), "items": [w.to_json() for w in works]})
    return {
        "profile": bill.profile,
        "run": bill.run,
        "gpu": bill.gpu.name,
        "cpu_sized": bill.cpu_sized,
        "totals": _values(bill.works) | {"gpu_h": bill.total("gpu_s") / 3600, "cpu_h": bill.total("cpu_s") / 3600},
        "teacher_usd": bill.teacher_usd,
        "stages": stages,
        "arms": [vars(z) for z in bill.arms],
        "dependencies": bill.dependencies,
        "warnings": bill.warnings,
        "cpu_warnings": bill.cpu_warnings,
        "assumptions": assumption_table(bill.assumptions),
        "constants": constants.table(bill.gpu),
    }
