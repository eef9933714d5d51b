"""Decontamination against the evaluation benchmarks, in two stages.

1. Substring (Magicoder/OSS-Instruct): a benchmark prompt or solution, normalized (comments dropped,
   whitespace collapsed, lower-cased), found inside the normalized snippet.
2. N-gram overlap (our addition): a snippet sharing a large share of its token n-grams with one
   benchmark text, counted twice: on raw tokens, and on tokens whose identifiers are abstracted to
   "V", which catches copies with renamed variables and functions. Containment is measured against
   the smaller of the two texts, so a snippet holding a whole benchmark solution is caught too.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from scoder_lib.core.config import Config, DecontamOptions
from scoder_lib.core.logs import get_logger
from scoder_lib.data.benchmarks import benchmark_texts, configured_tasks
from scoder_lib.data.codetokens import code_tokens, ngram_hashes, normalize

log = get_logger(__name__)
# Abstracted n-grams match more innocently (`for V in range ( len ( V ) )`): demand more overlap.
ABSTRACT_MARGIN = 0.3


@dataclass(frozen=True)
class Hit:
    stage: str  # substring | ngram | ngram_abstract
    benchmark: str
    task_id: str
    score: float


@dataclass
class _Item:
    benchmark: str
    task_id: str
    norm: str
    raw: set[int]
    abstract: set[int]


class Decontaminator:
    """An index over benchmark texts; `check(text)` returns the strongest hit or None."""

    def __init__(self, texts: Sequence[tuple[str, str, str]], opts: DecontamOptions):
        self.opts = opts
        self.items: list[_Item] = []
        self.raw_index: dict[int, list[int]] = defaultdict(list)
        self.abs_index: dict[int, list[int]] = defaultdict(list)
        for bench, task_id, text in texts:
            self._add(bench, task_id, text)
        self.raw_sizes = [len(i.raw) for i in self.items]
        self.abs_sizes = [len(i.abstract) for i in self.items]
        log.info(
            "decontamination index: %d benchmark texts, %d raw and %d abstract n-grams",
            len(self.items),
            len(self.raw_index),
            len(self.abs_index),
        )

    def _add(self, bench: str, task_id: str, text: str) -> None:
        n = self.opts.ngram
        item = _Item(
            bench,
            task_id,
            normalize(text),
            ngram_hashes(code_tokens(text), n),
            ngram_hashes(code_tokens(text, abstract=True), n),
        )
        k = len(self.items)
        self.items.append(item)
        for h in item.raw:
            self.raw_index[h].append(k)
        for h in item.abstract:
            self.abs_index[h].append(k)

    @staticmethod
    def _best(grams: set[int], index: dict[int, list[int]], sizes: list[int]) -> tuple[int, float]:
        counts: Counter[int] = Counter()
        for h in grams:
            counts.update(index.get(h, ()))
        best, score = -1, 0.0
        for k, shared in counts.items():
            s = shared / max(min(len(grams), sizes[k]), 1)
            if s > score:
                best, score = k, s
        return best, score

    def check(self, text: str) -> Hit | None:
        n = self.opts.ngram
        raw = ngram_hashes(code_tokens(text), n)
        k, score = self._best(raw, self.raw_index, self.raw_sizes) if raw else (-1, 0.0)
        norm = f" {normalize(text)} "
        if k >= 0:
            # Substring stage on candidates that share an n-gram (a full scan would be 100x slower).
            for cand in {k} | {c for h in raw for c in self.raw_index.get(h, ())}:
                item = self.items[cand]
                if len(item.norm) >= self.opts.min_substring_chars and f" {item.norm} " in norm:
                    return Hit("substring", item.benchmark, item.task_id, 1.0)
        if score >= self.opts.ngram_overlap:
            return Hit("ngram", self.items[k].benchmark, self.items[k].task_id, round(score, 3))
        abstract = ngram_hashes(code_tokens(text, abstract=True), n)
        k2, score2 = self._best(abstract, self.abs_index, self.abs_sizes)
        if score2 >= min(self.opts.ngram_overlap + ABSTRACT_MARGIN, 1.0):
            return Hit("ngram_abstract", self.items[k2].benchmark, self.items[k2].task_id, round(score2, 3))
        return None


def build(cfg: Config) -> Decontaminator:
    """The index over every benchmark the profile decontaminates against."""
    texts = []
    for name in cfg.preprocess.decontam.benchmarks:
        for task in configured_tasks(cfg, name):
            texts += [(name, task.task_id, t) for t in benchmark_texts(task)]
    return Decontaminator(texts, cfg.preprocess.decontam)
