"""Token lengths without a tokenizer: the committed seed set's texts, in characters, over a measured ratio.

Every prompt the study sends is built from a snippet (synthesis, rating) or a problem (students), so
the seed set's rows give their length distribution; a trained synthesizer's outputs are taken to
be as long as the teacher's responses, cut at max_new_tokens.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from scoder_lib.core.config import Config, TrainOptions
from scoder_lib.core.io import iter_jsonl
from scoder_lib.evaluation.context import each_assert
from scoder_lib.llm import student_format
from scoder_lib.pipeline.bill.constants import CHARS_PER_TOKEN, CHAT_OVERHEAD_TOKENS, PROSE_CHARS_PER_TOKEN

MAX_SAMPLE_CHARS = 3000  # the rater cuts a sample here (method.scoring.MAX_SAMPLE_CHARS)


def tokens(chars: float) -> float:
    """Tokens of code-like text (snippets, responses, problems)."""
    return chars / CHARS_PER_TOKEN.value


def prose_tokens(chars: float) -> float:
    """Tokens of the fixed English text of prompt templates (longer words: more characters per token)."""
    return chars / PROSE_CHARS_PER_TOKEN.value


def _prompt_file(name: str) -> str:
    # Read directly: method.synthesis and method.scoring import torch, and the plan must stay light.
    return (resources.files("scoder_lib") / "prompts" / name).read_text(encoding="utf-8")


def synthesis_template(version: str) -> tuple[str, str]:
    """(system, user) of a synthesis prompt version, as `method.synthesis.prompt_template` reads them."""
    text = _prompt_file(f"synthesis_{version}.md")
    return text.split("<!-- system -->")[1].split("<!-- user -->")[0].strip(), text.split("<!-- user -->")[1].strip()


def rubric_chars(aspects: list[str]) -> tuple[int, int]:
    """(system prompt characters, characters of the asked aspects' questions) of the scoring rubric."""
    text = _prompt_file("scoring_v1.md")
    system = text.split("<!-- system -->")[1].split("<!--")[0].strip()
    questions = {}
    for block in text.split("<!-- aspect: ")[1:]:
        name, _, body = block.partition(" -->")
        questions[name.strip()] = body.strip()
    return len(system), sum(len(questions.get(a, "")) for a in aspects)


def render(problem: str, solution: str, tests: str) -> str:
    """The canonical response text (`method.synthesis.render`): what synthesizers learn to write."""
    return (
        f"[Problem]\n{problem.strip()}\n\n[Solution]\n```python\n{solution.strip()}\n```\n\n"
        f"[Tests]\n```python\n{tests.strip()}\n```"
    )


@dataclass(frozen=True)
class Row:
    """One seed sample's lengths in tokens."""

    split: str
    snippet_chars: int
    prompt: float  # the synthesis prompt (system + user with the snippet + chat template)
    response: float  # the rendered teacher response (+ EOS)
    student_prompt: float  # the student's prompt for its problem (final.student_format)
    student_response: float  # the student's target: its solution (+ EOS)
    response_chars: int
    judge_jobs: int = 1  # sandbox programs that judge an answer to its problem (one per assert)


@dataclass(frozen=True)
class SeedLengths:
    rows: tuple[Row, ...]

    @property
    def train(self) -> list[Row]:
        return [r for r in self.rows if r.split == "train"]

    @property
    def heldout(self) -> list[Row]:
        return [r for r in self.rows if r.split == "heldout"]

    def mean(self, field: str, rows: list[Row] | None = None) -> float:
        return statistics.fmean(getattr(r, field) for r in (rows if rows is not None else self.rows))

    def response_upto(self, max_new: int) -> float:
        """Mean teacher response length cut at max_new tokens: what a trained synthesizer writes."""
        return statistics.fmean(min(r.response, max_new) for r in self.rows)


@lru_cache(maxsize=8)
def _load(path: Path, version: str, student_fmt: str) -> SeedLengths:
    system, user = synthesis_template(version)
    overhead = CHAT_OVERHEAD_TOKENS.value
    frame = prose_tokens(len(system) + len(user.replace("{snippet}", ""))) + overhead
    student_frame = prose_tokens(sum(len(m["content"]) for m in student_format.messages("", student_fmt))) + overhead
    answer_frame = prose_tokens(len(student_format.response("", student_fmt)))
    rows = []
    for d in iter_jsonl(path):
        snippet = d["snippet"].strip("\n")
        response = render(d["problem"], d["solution"], d["tests"])
        rows.append(
            Row(
                split=d["split"],
                snippet_chars=len(snippet),
                prompt=frame + tokens(len(snippet)),
                response=tokens(len(response)) + 1,
                student_prompt=student_frame + tokens(len(d["problem"].strip())),
                student_response=answer_frame + tokens(len(d["solution"].strip())) + 1,
                response_chars=len(response),
                judge_jobs=len(each_assert(d["tests"])),
            )
        )
    return SeedLengths(tuple(rows))


def seed_lengths(cfg: Config) -> SeedLengths:
    """The configured seed file's rows in tokens (read once per file)."""
    return _load(cfg.resolve(cfg.seed_stage.teacher.seed_file), cfg.seed_stage.prompt_version, cfg.final.student_format)


def rating_tokens(snippet_chars: float, sample_chars: float, aspects: list[str]) -> float:
    """Forward tokens of one rating: rubric + snippet + sample (cut at 3,000 characters) + the Z questions."""
    system, questions = rubric_chars(aspects)
    frame = len("Source snippet:\n```python\n\n```\n\nExercise:\n") + len(aspects) * len("\n\nScore: ")
    code = system + snippet_chars + min(sample_chars, MAX_SAMPLE_CHARS)  # the rubric's examples are code-dense
    return tokens(code) + prose_tokens(questions + frame) + CHAT_OVERHEAD_TOKENS.value + 4 * len(aspects)


@dataclass(frozen=True)
class Fit:
    """What training keeps of a set of examples: the share that fits, and tokens per kept example."""

    share: float
    tokens: float


def fit(pairs: list[tuple[float, float]], opts: TrainOptions) -> Fit:
    """`train.encode`'s rule over (prompt, response) token pairs: a prompt that fills max_seq_len is
    skipped; a longer example is dropped, or truncated when `long_examples` says so."""
    limit, truncate = opts.max_seq_len, opts.long_examples == "truncate"
    kept = [min(p + r, limit) for p, r in pairs if p < limit and (truncate or p + r <= limit)]
    if not pairs or not kept:
        return Fit(0.0, 0.0)
    return Fit(len(kept) / len(pairs), statistics.fmean(kept))
