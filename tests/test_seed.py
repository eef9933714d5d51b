"""The teacher seed set, the synthesis format, and the OpenAI-compatible teacher over real HTTP."""

from __future__ import annotations

import ast
import json
import os

import pytest

from scoder_lib.core.config import REPO_ROOT, ExecutionOptions, ModelSpec, OpenAIOptions, Sampling
from scoder_lib.core.io import write_json
from scoder_lib.core.params import load_config
from scoder_lib.core.records import SeedSample
from scoder_lib.data.decontam import build
from scoder_lib.llm.base import Backend, Completion, GenRequest, GenResult
from scoder_lib.llm.generator import Generator, make_backend
from scoder_lib.llm.models import load
from scoder_lib.llm.openai_server import OpenAIServer
from scoder_lib.method import replay, seed, synthesis, teacher

SEED_FILE = REPO_ROOT / "data" / "seed" / "seed_v1.jsonl"
COMPACT_FILE = REPO_ROOT / "data" / "seed" / "seed_compact_v2.jsonl"
# (file, prompt version, at least: samples, held out; asserts per sample; longest solution in lines)
SETS = {"v1": (SEED_FILE, "v1", 150, 30, (3, 99), 999), "compact": (COMPACT_FILE, "v2", 400, 80, (3, 5), 15)}


@pytest.fixture(scope="module", params=sorted(SETS))
def seeds(request):
    return request.param, seed.load(SETS[request.param][0])


@pytest.fixture(scope="module")
def seeds_v1():
    return seed.load(SEED_FILE)


def test_seed_set_shape(seeds):
    name, s = seeds
    _, version, n_min, held_min, (lo, hi), max_lines = SETS[name]
    assert len(s.rows) >= n_min and len(s.heldout) >= held_min
    assert len({r.snippet for r in s.rows}) == len(s.rows)  # each from a distinct snippet
    if name == "compact":  # v1 has four twin pairs (kept on one side of the split, see PROVENANCE.md)
        assert len({r.entry_point for r in s.rows}) == len(s.rows)
    for r in s.rows:
        asserts = sum(isinstance(n, ast.Assert) for n in ast.walk(ast.parse(r.tests)))
        assert lo <= asserts <= hi, r.id
        assert r.prompt_version == version and f"def {r.entry_point}(" in r.solution
        assert sum(1 for line in r.solution.splitlines() if line.strip()) <= max_lines, r.id
    assert (REPO_ROOT / "data" / "seed" / "PROVENANCE.md").exists()


def test_compact_responses_are_short_for_a_small_synthesizer(micro_ref):
    """Median response at most 250 SmolLM2 tokens (the micro model shares SmolLM2's tokenizer), and
    tiny's sampling limits cut none of them (a synthesizer that writes like its teacher is not cut off)."""
    _, tok = load(micro_ref)
    lengths = sorted(seed.response_tokens(tok, seed.load(COMPACT_FILE).rows))
    assert lengths[len(lengths) // 2] <= 250 and lengths[-1] <= 400
    cfg = load_config("tiny")
    limits = {
        "yardstick": cfg.seed_stage.compare_sampling.max_new_tokens,
        "iterations": cfg.iterate.sampling.max_new_tokens,
        "final": cfg.final.sampling.max_new_tokens,
    }
    assert seed.cut_at_limits(lengths, limits) == {name: 0.0 for name in limits}


def test_cut_at_limits_counts_responses_longer_than_each_limit(caplog, tmp_path):
    lengths = [100, 200, 300, 320, 321, 398]
    with caplog.at_level("WARNING", logger="scoder.method.seed"):
        shares = seed.cut_at_limits(lengths, {"a": 320, "b": 400, "c": 99})
    assert shares == {"a": 2 / 6, "b": 0.0, "c": 1.0}  # a response of exactly the limit fits
    assert [r.getMessage().split()[0] for r in caplog.records] == ["a", "c"]
    assert seed.cut_at_limits([], {"a": 1}) == {"a": 0.0}
    write_json(tmp_path / seed.RESPONSE_TOKENS, lengths)  # as stage 02 writes them, read by 03 and 05
    assert seed.cut_by_limit(tmp_path, "iterations", 320) == 2 / 6


def test_every_seed_sample_passes_its_tests_in_the_sandbox(seeds):
    _, rows = seeds
    samples = synthesis.verify(
        [seed.as_sample(r) for r in rows.rows], workers=2, timeout_s=10, memory_mb=1024, isolation="auto"
    )
    failed = [(r.id, s.reason) for r, s in zip(rows.rows, samples) if s.status != "passed"]
    assert not failed


def test_no_seed_sample_is_contaminated(seeds, bench_folder):
    folder, fill = bench_folder
    cfg = load_config("tiny")
    cfg = cfg.model_copy(
        update={
            "benchmarks": cfg.benchmarks.model_copy(
                update={"folder": str(folder), "fill_from": [str(p) for p in fill], "download": False}
            )
        }
    )
    dc = build(cfg)
    hits = [(r.id, dc.check(r.problem + "\n" + r.solution)) for r in seeds[1].rows]
    assert not [h for h in hits if h[1]]


def test_malformed_seed_file_names_line_and_field(tmp_path):
    bad = tmp_path / "s.jsonl"
    bad.write_text(json.dumps({"id": "x", "snippet": "def f(): pass"}) + "\n")
    with pytest.raises(seed.SeedSetError, match=r"s.jsonl:1: missing field\(s\) problem"):
        seed.load(bad)


# ----------------------------------------------------------------------------- the output format
def test_parse_round_trips_a_teacher_sample(seeds):
    row = seeds[1].train[0]
    s = synthesis.parse(seed.response(row))
    assert (s.problem, s.solution.strip(), s.tests.strip()) == (row.problem, row.solution.strip(), row.tests.strip())
    assert s.entry_point == row.entry_point and s.status == "failed" and s.reason == "not_executed"


@pytest.mark.parametrize(
    "text,status,reason",
    [
        ("just prose, no sections", "unparsable", "missing_problem"),
        (
            "[Problem]\nAdd.\n[Solution]\n```python\ndef f(:\n```\n[Tests]\n```python\nassert f()\n```",
            "invalid",
            "solution_syntax",
        ),
        (
            "[Problem]\nAdd.\n[Solution]\n```python\ndef f():\n    return 1\n```\n[Tests]\n```python\nprint(f())\n```",
            "invalid",
            "no_asserts",
        ),
        (
            "**[Problem]**\nAdd.\n\n### Solution\n```python\ndef f():\n    return 1\n```\n[Tests]\nassert f() == 1\n",
            "failed",
            "not_executed",
        ),
    ],
)
def test_parse_reasons(text, status, reason):
    s = synthesis.parse(text)
    assert (s.status, s.reason) == (status, reason)


def test_verify_runs_solutions_against_their_own_tests(tmp_path):
    good = synthesis.parse(synthesis.render("Double.", "def d(x):\n    return 2 * x", "assert d(2) == 4"))
    bad = synthesis.parse(synthesis.render("Double.", "def d(x):\n    return x", "assert d(2) == 4"))
    out = synthesis.verify([good, bad], workers=2, timeout_s=5, memory_mb=512, isolation="auto", cache_dir=tmp_path)
    assert [s.status for s in out] == ["passed", "failed"] and "AssertionError" in out[1].reason
    assert synthesis.status_at_least("passed", "parsed") and not synthesis.status_at_least("invalid", "parsed")


def test_prompt_keeps_braces_in_snippets():
    msgs = synthesis.messages("def f():\n    return {'a': 1}\n")
    assert "{'a': 1}" in msgs[1]["content"] and "[Problem]" in msgs[1]["content"]


# ----------------------------------------------------------------------------- the API teacher
class _ScriptedTeacher(Backend):
    """A deterministic stand-in for a proprietary model: answers each snippet with the seed set's
    sample for it (the HTTP client, parsing, sandbox checks and accounting are what is tested)."""

    name = "scripted"
    fingerprint = "scripted-teacher"

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = []
        for r in requests:
            text = next((a for snip, a in self.answers.items() if snip.strip() in r.messages[-1][1]), "no idea")
            prompt_tokens = sum(len(c.split()) for _, c in r.messages)
            out.append(GenResult([Completion(text, "stop", len(text.split()))], prompt_tokens))
        return out


def test_openai_teacher_over_http_with_cost_accounting(seeds_v1, tmp_path, monkeypatch):
    rows = seeds_v1.train[:3]
    answers = {r.snippet: seed.response(r) for r in rows[:2]}  # the third snippet gets a useless answer
    monkeypatch.setenv("TEACHER_KEY", "sk-test-not-a-real-key")
    with OpenAIServer(_ScriptedTeacher(answers), model_name="gpt-teacher") as server:
        spec = ModelSpec(
            name="gpt-teacher",
            backend="openai",
            openai=OpenAIOptions(
                base_url=server.url, api_key_env="TEACHER_KEY", price_per_1m_input_usd=2.5, price_per_1m_output_usd=10.0
            ),
        )
        cfg = load_config("smoke")
        cfg = cfg.model_copy(
            update={
                "seed_stage": cfg.seed_stage.model_copy(
                    update={
                        "teacher": cfg.seed_stage.teacher.model_copy(
                            update={"backend": "openai", "model": spec, "sampling": Sampling(max_new_tokens=1024)}
                        )
                    }
                ),
                "execution": ExecutionOptions(workers=2, timeout_s=10),
            }
        )
        gen = Generator(make_backend(spec, tmp_path), tmp_path)
        new = teacher.extend_with_teacher(cfg, gen, [r.snippet for r in rows], tmp_path)
        totals = gen.backend.totals
    assert [n.problem for n in new] == [r.problem for r in rows[:2]]
    expected_usd = (totals["prompt_tokens"] * 2.5 + totals["completion_tokens"] * 10.0) / 1e6
    assert totals["requests"] == 3 and totals["cost_usd"] == pytest.approx(expected_usd)
    answered = sum(len(seed.response(r).split()) for r in rows[:2]) + len(["no", "idea"])
    assert totals["completion_tokens"] == answered
    assert os.environ["TEACHER_KEY"] not in json.dumps([n.to_json() for n in new])


def test_heldout_split_shares_no_source_file_or_entry_point_with_training(seeds):
    _, s = seeds
    assert s.heldout and not seed.leaks(s)
    files = {seed.source_file(r) for r in s.heldout}
    assert not files & {seed.source_file(r) for r in s.train}


def test_split_by_source_holds_out_whole_files_and_twins():
    rows = [
        SeedSample(
            f"s{i}",
            "train",
            "x",
            "p",
            "s",
            "t",
            "twin" if i in (0, 29) else f"f{i}",
            "v1",
            snippet_source=f"stdlib:m{i // 3}.py:{i}",
        )
        for i in range(30)
    ]
    split = seed.split_by_source(rows, n_heldout=8, seed=0)
    assert sum(v == "heldout" for v in split.values()) >= 8
    assert split["s0"] == split["s29"]  # twins in different files stay together
    assert all(
        len({split[r.id] for r in rows if r.snippet_source.startswith(f"stdlib:m{k}.py")}) == 1 for k in range(10)
    )
    fixed = seed.SeedSet([SeedSample(**{**r.to_json(), "split": split[r.id]}) for r in rows])
    assert not seed.leaks(fixed)


def test_replay_teacher_sells_valid_samples_over_http(tmp_path, monkeypatch, smoke_cfg):
    """The rehearsal's stand-in teacher: real client, real HTTP, answers that pass their own tests."""
    monkeypatch.setenv("REPLAY_KEY", "sk-replay")
    with OpenAIServer(replay.from_seed_file(COMPACT_FILE), "replay-teacher", api_key="sk-replay") as server:
        spec = ModelSpec(
            name="replay-teacher",
            backend="openai",
            openai=OpenAIOptions(
                base_url=server.url, api_key_env="REPLAY_KEY", price_per_1m_input_usd=1.0, price_per_1m_output_usd=2.0
            ),
        )
        gen = Generator(make_backend(spec, tmp_path), tmp_path)
        cfg = smoke_cfg.model_copy(update={"execution": ExecutionOptions(workers=2, timeout_s=10)})
        bought = teacher.extend_with_teacher(
            cfg, gen, [f"def f{i}(x):\n    return x * {i}\n" for i in range(4)], tmp_path
        )
        totals = gen.backend.totals
    assert len(bought) == 4 and totals["requests"] == 4 and totals["cost_usd"] > 0
