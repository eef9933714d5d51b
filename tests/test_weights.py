"""The aspect-weight fit: teacher samples against the candidates it ranks, and what it does with too few."""

from __future__ import annotations

import logging

import numpy as np

from scoder_lib.core.config import AspectWeights
from scoder_lib.method import weights


def test_too_few_candidates_give_equal_weights_and_say_so(caplog):
    rng = np.random.default_rng(0)
    teacher = rng.normal(6, 1, size=(24, 3))
    few = rng.normal(3, 1, size=(weights.MIN_PER_CLASS - 1, 3))  # a handful of eligible candidates
    with caplog.at_level(logging.WARNING):
        fit = weights.fit_aspect_weights(teacher, few, ["a", "b", "c"], AspectWeights(bootstrap=5), seed=0)
    assert np.allclose(fit.weights, 1 / 3) and fit.mode.startswith("equal")
    assert "equal weights instead of a fit" in caplog.text


def test_enough_candidates_are_fitted_against():
    rng = np.random.default_rng(1)
    teacher = np.c_[rng.normal(7, 1, 24), rng.normal(5, 1, 24)]
    cands = np.c_[rng.normal(4, 1, weights.MIN_PER_CLASS), rng.normal(5, 1, weights.MIN_PER_CLASS)]
    fit = weights.fit_aspect_weights(teacher, cands, ["sep", "flat"], AspectWeights(bootstrap=5), seed=0)
    assert fit.mode == "fit" and fit.weights[0] > 0.7  # the aspect that separates carries the weight
