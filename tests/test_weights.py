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


def test_a_fit_no_better_than_equal_weights_out_of_sample_is_not_used(caplog):
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 9, size=(60, 4))  # ratings with no signal: any fit is noise
    with caplog.at_level(logging.WARNING):
        fit = weights.fit_aspect_weights(x[:24], x[24:], list("abcd"), AspectWeights(bootstrap=5), seed=0)
    assert fit.mode == weights.NO_GAIN and not fit.auc_cv > fit.auc_equal
    assert np.allclose(fit.weights, 1 / 4) and not np.allclose(fit.fitted, 1 / 4)  # the fit kept for the report
    assert fit.auc == fit.auc_equal and "equal weights instead" in caplog.text
    unguarded = weights.fit_aspect_weights(
        x[:24], x[24:], list("abcd"), AspectWeights(bootstrap=5, cv_guard=False), seed=0
    )
    assert unguarded.mode == "fit" and np.allclose(unguarded.weights, fit.fitted)


def test_a_fit_that_beats_equal_weights_out_of_sample_is_used():
    rng = np.random.default_rng(5)
    teacher = np.c_[rng.normal(7, 1, 24), rng.uniform(0, 9, (24, 3))]
    cands = np.c_[rng.normal(5, 1, 40), rng.uniform(0, 9, (40, 3))]  # only the first aspect tells them apart
    fit = weights.fit_aspect_weights(teacher, cands, list("abcd"), AspectWeights(bootstrap=5), seed=0)
    assert fit.mode == "fit" and fit.auc_cv > fit.auc_equal
    assert fit.weights is fit.fitted and fit.weights[0] > 0.5
