"""How a student code model is prompted: one format for fine-tuning and for evaluation.

EvalPlus's chat prompt (evalplus/codegen.py, v0.3.1; BigCodeBench uses the same wording): the task in
a fenced block after an instruction, and an assistant turn that opens with a response prefix and a
```python fence. Students fine-tune on exactly this shape (the problem as the task, the solution
after the prefix), the way Magicoder trains and evaluates with one template, so that evaluation asks
what training taught.
"""

from __future__ import annotations

INSTRUCTION_PREFIX = (
    "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
)
RESPONSE_PREFIX = (
    "Below is a Python script with a self-contained function that solves the problem and passes corresponding tests:"
)
# The "system" format (the project's first): a system prompt and the bare problem, a fenced answer.
STUDENT_SYSTEM = "You are an expert Python programmer. Answer with a correct, self-contained solution."


def user_turn(task: str) -> str:
    """The user message for a task (a problem statement, or a benchmark's prompt)."""
    return f"{INSTRUCTION_PREFIX}\n```\n{task.strip()}\n```\n"


def response_prefix() -> str:
    """What the assistant turn starts with; evaluation prefills it and the model continues."""
    return f"{RESPONSE_PREFIX}\n```python\n"


def messages(task: str, fmt: str = "evalplus") -> list[dict[str, str]]:
    """The prompt turns of a training example in format `fmt` (evalplus | system)."""
    if fmt == "system":
        return [{"role": "system", "content": STUDENT_SYSTEM}, {"role": "user", "content": task.strip()}]
    return [{"role": "user", "content": user_turn(task)}]


def response(solution: str, fmt: str = "evalplus") -> str:
    """The assistant turn a student learns: the solution in a python fence (after the prefix in evalplus)."""
    body = f"```python\n{solution.strip()}\n```"
    return f"{RESPONSE_PREFIX}\n{body}" if fmt == "evalplus" else body
