"""The synthesis task: snippet -> prompt; model output -> (problem, solution, tests) with a verdict.

Output format (fixed sections, OSS-Instruct style plus tests):
    [Problem] ... [Solution] ```python ...``` [Tests] ```python assert ...```
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from importlib import resources
from pathlib import Path

from scoder_lib.core.config import ExecutionOptions, Sampling
from scoder_lib.core.hashing import fingerprint
from scoder_lib.core.io import JsonlStore
from scoder_lib.core.records import STATUSES, Sample
from scoder_lib.core.stats import cluster_wilson, distinct_n, wilson
from scoder_lib.llm.base import GenRequest
from scoder_lib.llm.generator import Generator
from scoder_lib.sandbox.execution import harness_fingerprint, run_many

PROMPT_VERSIONS = ("v1", "v2")  # v2: the compact task (short problem, <= 15-line solution, 3-5 asserts)
MIN_ASSERTS = 1  # a parsed sample needs at least one assert to be executable; quality asks for three
_HEADER = re.compile(r"^[ \t#*>]*\[?(problem|solution|tests?)\]?[ \t*:]*$", re.I | re.M)
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def prompt_template(version: str = "v1") -> tuple[str, str]:
    """(system, user) text of a versioned prompt file in scoder_lib/prompts/."""
    if version not in PROMPT_VERSIONS:
        raise ValueError(f"unknown prompt version '{version}'; known: {', '.join(PROMPT_VERSIONS)}")
    text = (resources.files("scoder_lib") / "prompts" / f"synthesis_{version}.md").read_text(encoding="utf-8")
    system = text.split("<!-- system -->")[1].split("<!-- user -->")[0].strip()
    user = text.split("<!-- user -->")[1].strip()
    return system, user


def messages(snippet: str, version: str = "v1") -> list[dict[str, str]]:
    """Chat messages asking for a problem inspired by `snippet` (no str.format: code has braces)."""
    system, user = prompt_template(version)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user.replace("{snippet}", snippet.strip("\n"))},
    ]


def render(problem: str, solution: str, tests: str) -> str:
    """The canonical response text: what teacher samples look like, and what synthesizers learn."""
    return (
        f"[Problem]\n{problem.strip()}\n\n[Solution]\n```python\n{solution.strip()}\n```\n\n"
        f"[Tests]\n```python\n{tests.strip()}\n```"
    )


def _sections(text: str) -> dict[str, str]:
    marks = [(m.start(), m.end(), m.group(1).lower().rstrip("s")) for m in _HEADER.finditer(text)]
    out: dict[str, str] = {}
    for i, (_, end, name) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else len(text)
        out.setdefault({"test": "tests"}.get(name, name), text[end:stop].strip())
    return out


def _code(section: str) -> str:
    m = _FENCE.search(section)
    return (m.group(1) if m else section).strip("\n")


def _entry_point(solution: ast.Module, tests: str) -> str:
    names = [n.name for n in solution.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    called = [n for n in names if re.search(rf"\b{re.escape(n)}\s*\(", tests)]
    return (called or names or [""])[0]


def parse(text: str) -> Sample:
    """Sections and static checks; status 'invalid' or 'unparsable' carries the reason."""
    sample = _parse(text)
    sample.raw = text
    return sample


def _parse(text: str) -> Sample:
    sec = _sections(text)
    missing = [s for s in ("problem", "solution", "tests") if not sec.get(s)]
    if missing:
        return Sample(sec.get("problem", ""), "", "", "", 0, "unparsable", f"missing_{missing[0]}")
    problem, solution, tests = sec["problem"], _code(sec["solution"]), _code(sec["tests"])
    try:
        sol_tree = ast.parse(solution)
    except SyntaxError:
        return Sample(problem, solution, tests, "", 0, "invalid", "solution_syntax")
    try:
        test_tree = ast.parse(tests)
    except SyntaxError:
        return Sample(problem, solution, tests, "", 0, "invalid", "tests_syntax")
    n_asserts = sum(isinstance(n, ast.Assert) for n in ast.walk(test_tree))
    entry = _entry_point(sol_tree, tests)
    if not entry:
        return Sample(problem, solution, tests, "", n_asserts, "invalid", "no_function")
    if n_asserts < MIN_ASSERTS:
        return Sample(problem, solution, tests, entry, n_asserts, "invalid", "no_asserts")
    return Sample(problem, solution, tests, entry, n_asserts, "failed", "not_executed")


def status_at_least(status: str, minimum: str) -> bool:
    """Whether a verdict reaches a selection threshold ('any' accepts everything)."""
    if minimum == "any":
        return True
    if minimum == "parsed":
        return status in ("failed", "passed")
    return STATUSES.index(status) >= STATUSES.index(minimum)


def verify(
    samples: list[Sample],
    *,
    workers: int,
    timeout_s: float,
    memory_mb: int,
    isolation: str,
    desc: str = "verifying",
    cache_dir: Path | None = None,
) -> list[Sample]:
    """Run each parsed solution against its own asserts in the sandbox; set passed/failed + reason.

    Verdicts are cached by (solution, tests, limits) when `cache_dir` is set: reruns skip the sandbox.
    """

    store = JsonlStore(cache_dir / "verdicts.jsonl") if cache_dir else None
    todo = [i for i, s in enumerate(samples) if s.status == "failed" and s.reason == "not_executed"]
    harness = harness_fingerprint()
    keys = {i: fingerprint([samples[i].solution, samples[i].tests, timeout_s, memory_mb, harness]) for i in todo}
    to_run = [i for i in todo if store is None or keys[i] not in store]
    results = (
        run_many(
            [(samples[i].solution, samples[i].tests) for i in to_run],
            workers=workers,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            isolation=isolation,
            desc=desc,
        )
        if to_run
        else []
    )
    fresh = {
        keys[i]: {"passed": r.passed, "reason": "" if r.passed else f"{r.status}: {r.reason}"[:200]}
        for i, r in zip(to_run, results)
    }
    if store is not None:
        store.put_many(fresh)
    for i in todo:
        v = fresh.get(keys[i]) or store.get(keys[i])  # type: ignore[union-attr]
        samples[i].status = "passed" if v["passed"] else "failed"
        samples[i].reason = v["reason"]
    return samples


def synthesize(
    gen: Generator,
    snippets: list[str],
    sampling: Sampling,
    *,
    version: str,
    execution: ExecutionOptions,
    desc: str = "synthesizing",
    seed_offset: int = 0,
    seeds: list[int] | None = None,
    cache_dir: Path | None = None,
) -> list[list[Sample]]:
    """Sample `sampling.n` outputs per snippet, parse them, and verify them in the sandbox.

    `gen` is a cached `llm.Generator`. Request seeds are `seeds` when given (one per snippet), else
    `sampling.seed + seed_offset + index`, so every snippet's samples are reproducible and
    independent of the others; sample j of a request is seeded from its request seed and j.
    """
    if seeds is not None and len(seeds) != len(snippets):
        raise ValueError(f"synthesize: {len(seeds)} seeds for {len(snippets)} snippets")
    request_seeds = seeds or [sampling.seed + seed_offset + i for i in range(len(snippets))]
    reqs = [GenRequest.chat(messages(s, version), sampling, seed=rs) for s, rs in zip(snippets, request_seeds)]
    results = gen.generate(reqs, desc=desc)
    samples = [[parse(c.text) for c in r.completions] for r in results]
    flat = verify(
        [x for row in samples for x in row],
        workers=execution.workers,
        timeout_s=execution.timeout_s,
        memory_mb=execution.memory_mb,
        isolation=execution.isolation,
        desc=f"{desc}: verifying",
        cache_dir=cache_dir,
    )
    verdicts = iter(flat)
    return [[next(verdicts) for _ in row] for row in samples]


def _mean(xs: list[int] | list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def summarize(samples: list[Sample], clusters: list[str] | None = None) -> dict[str, float]:
    """Valid and parsed rates with Wilson 95% intervals (valid: the solution passes its own tests), and shape.

    `clusters` (one key per sample, e.g. its snippet) widens the intervals for samples that share a
    snippet (`stats.cluster_wilson`); without it every sample counts as independent.
    """
    n = len(samples)
    passed = sum(s.status == "passed" for s in samples)
    parsed = [s for s in samples if s.status in ("failed", "passed")]
    if clusters is None:
        lo, hi = wilson(passed, n)
        plo, phi = wilson(len(parsed), n)
    else:
        lo, hi = cluster_wilson([s.status == "passed" for s in samples], clusters)
        plo, phi = cluster_wilson([s.status in ("failed", "passed") for s in samples], clusters)
    return {
        "n": n,
        "valid_rate": passed / n if n else 0.0,
        "valid_ci_low": lo,
        "valid_ci_high": hi,
        "parsed_rate": len(parsed) / n if n else 0.0,
        "parsed_ci_low": plo,
        "parsed_ci_high": phi,
        "asserts_per_parsed": _mean([s.n_asserts for s in parsed]),
        "problem_words": _mean([len(s.problem.split()) for s in parsed]),
        "distinct_2": distinct_n([s.problem for s in parsed], 2),
    }


def reasons(samples: list[Sample]) -> dict[str, int]:
    """Why samples are not valid, counted (status: reason head)."""
    return dict(Counter(f"{s.status}: {s.reason.split(':')[0]}" for s in samples if s.status != "passed").most_common())
