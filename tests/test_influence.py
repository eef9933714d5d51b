"""Gradient influence (LESS): per-sample gradients, projection, Adam directions, scores, caching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from scoder_lib.core.config import InfluenceOptions, LoraOptions, TrainOptions
from scoder_lib.method.influence import features as inf_features
from scoder_lib.method.influence import gradients as inf_grads
from scoder_lib.method.influence import projection as inf_proj
from scoder_lib.method.influence import scores as inf_scores
from scoder_lib.method.train import Example, _build_model, encode, sft


def _examples(n: int, offset: int = 0) -> list[Example]:
    """Prompts and responses of different lengths, so batches are padded."""
    return [
        Example.of(
            [{"role": "user", "content": f"Task {i}: " + "explain " * (i % 5)}],
            f"def f{i}(x):\n    return x * {i}\n" + "    # step\n" * (i % 4),
        )
        for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="module")
def run(micro_ref, tmp_path_factory):
    """A real LoRA run on the micro model: all layers and modules, dropout on, 2 checkpoints."""
    opts = TrainOptions(
        epochs=2,
        batch_size=4,
        learning_rate=3e-3,
        num_checkpoints=2,
        max_seq_len=256,
        lora=LoraOptions(r=4, dropout=0.1),
    )
    return sft(_examples(8), micro_ref.path, tmp_path_factory.mktemp("influence") / "run", opts, micro_ref.fingerprint)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).norm(dim=1) / b.norm(dim=1)


# ----------------------------------------------------------------------------- per-sample gradients
def test_batched_grads_equal_one_sample_at_a_time(run):
    loaded = inf_features.load_checkpoint(run.final)
    assert not loaded.model.training  # LoRA dropout (0.1 here) must be off for features
    rows = [encode(loaded.tok, e, 256) for e in _examples(6, offset=3)]
    assert len({len(r["input_ids"]) for r in rows}) > 3  # padding matters
    batched = inf_grads.batched_grads(loaded.model, loaded.layout, inf_grads.collate(rows, loaded.tok.pad_token_id))
    alone = inf_grads.loop_grads(loaded.model, loaded.layout, rows)
    assert _rel_err(batched, alone).max() < 1e-4
    per_param = alone.split(list(loaded.layout.sizes), dim=1)
    assert all(p.norm() > 0 for p in per_param)  # lora_A and lora_B both carry gradient


def test_batched_grads_with_lora_on_some_layers_and_modules(micro_ref):
    opts = TrainOptions(lora=LoraOptions(r=3, last_layers=1, target_modules=["q_proj", "down_proj"]))
    model = _build_model(micro_ref.path, opts, None).eval()
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at 0, which would leave A's gradient 0
            torch.nn.init.normal_(p, std=0.1)
    layout = inf_grads.layout_of(model)
    assert len(layout.names) == 4 and all(".layers.1." in n for n in layout.names)

    tok = AutoTokenizer.from_pretrained(micro_ref.path)
    rows = [encode(tok, e, 256) for e in _examples(5)]
    batched = inf_grads.batched_grads(model, layout, inf_grads.collate(rows, tok.pad_token_id))
    assert _rel_err(batched, inf_grads.loop_grads(model, layout, rows)).max() < 1e-4


# ----------------------------------------------------------------------------- projection
def _vectors(n: int, p: int, seed: int) -> np.ndarray:
    """Unit vectors with cosines spread over [0, 1): random ones and noisy copies of a few."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((4, p))
    mix = rng.uniform(0, 1, (n, 1))
    x = mix * base[rng.integers(0, 4, n)] + (1 - mix) * rng.standard_normal((n, p))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_projection_preserves_inner_products_and_cosines():
    """JL check with a stated failure probability. For unit u, v with cosine c and R's entries
    +-1/sqrt(D), <Ru, Rv> is unbiased with variance (1 + c^2 - 2 sum u_i^2 v_i^2)/D <= (1 + c^2)/D,
    and the projected cosine's variance is about (1 - c^2)^2/D <= 1/D. With a Gaussian tail and a
    union bound over the m = 820 pairs and norms of 40 vectors at failure probability 1e-3, every
    error is within z = sqrt(2 ln(2m/1e-3)) = 5.35 standard deviations: |cos error| <= 5.35/sqrt(D)
    = 0.118 at D = 2048 (observed max: 3.0-3.8/sqrt(D) over seeds 0-4)."""
    dim, n = 2048, 40
    x = _vectors(n, 5000, seed=1)
    y = inf_proj.Projector(dim, seed=3).project(x).astype(np.float64)
    z = math.sqrt(2 * math.log(2 * (n * (n + 1) // 2) / 1e-3))
    exact = x @ x.T
    assert np.all(np.abs(y @ y.T - exact) <= z * np.sqrt((1 + exact**2) / dim))
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    assert np.abs(yn @ yn.T - exact).max() <= z / math.sqrt(dim)
    upper = np.triu_indices(n, 1)
    assert exact[upper].max() > 0.8  # similar pairs are in the test, not only orthogonal ones
    # the error has the predicted size (a wrong scale or a repeated block would show here)
    rms = math.sqrt(np.mean((y @ y.T - exact)[upper] ** 2))
    assert 0.7 / math.sqrt(dim) < rms < 1.5 / math.sqrt(dim)


def test_projection_is_seeded_and_chunk_invariant():
    x = np.random.default_rng(0).standard_normal((5, 5000)).astype(np.float32)
    proj = inf_proj.Projector(256, seed=7)
    y = proj.project(x)
    assert np.array_equal(y, inf_proj.Projector(256, seed=7).project(x))
    assert not np.allclose(y, inf_proj.Projector(256, seed=8).project(x))
    # pieces (list or by-name mapping) equal the concatenated vector, chunk boundaries included
    pieces = [x[:, :1000], x[:, 1000:2100], x[:, 2100:4096], x[:, 4096:]]
    assert np.array_equal(proj.project(pieces), y)
    assert np.array_equal(proj.project({f"p{i}": p for i, p in enumerate(pieces)}), y)
    # and both equal the product with the dense matrix, whose entries are +-1/sqrt(D)
    dense = proj.matrix(5000)
    assert np.allclose(x @ dense, y, atol=1e-4)
    assert set(np.unique(dense * math.sqrt(256))) == {-1.0, 1.0} and abs(dense.mean()) * 16 < 0.01


# ----------------------------------------------------------------------------- Adam and scores
def test_adam_direction_by_hand():
    # b1 = b2 = 0.5, step t = 1: bias corrections 1 - 0.5^2 = 0.75.
    # g = 3, m = 1, v = 5: m' = 0.5 + 1.5 = 2, m^ = 8/3; v' = 2.5 + 4.5 = 7, v^ = 28/3.
    # g = -2, m = 0, v = 0: m' = -1, m^ = -4/3; v' = 2, v^ = 8/3.
    g, m, v = torch.tensor([[3.0, -2.0]]), torch.tensor([1.0, 0.0]), torch.tensor([5.0, 0.0])
    out = inf_grads.adam_direction(g, m, v, step=1, betas=(0.5, 0.5), eps=0.1)
    expected = [(8 / 3) / (math.sqrt(28 / 3) + 0.1), (-4 / 3) / (math.sqrt(8 / 3) + 0.1)]
    assert torch.allclose(out[0], torch.tensor(expected), atol=1e-6)
    # the first Adam step from zero moments is sign(g) (up to eps), as bias correction intends
    first = inf_grads.adam_direction(torch.tensor([[0.3, -4.0]]), torch.zeros(2), torch.zeros(2), step=0)
    assert torch.allclose(first, torch.tensor([[1.0, -1.0]]), atol=1e-6)


def test_influence_scores_weigh_checkpoints_and_aggregate():
    rng = np.random.default_rng(0)
    target = inf_proj.l2_normalise(rng.standard_normal((1, 64)))
    targets = np.repeat(target, 3, axis=0)
    cands = inf_proj.l2_normalise(rng.standard_normal((5, 64)))
    cands[2] = target[0]  # a candidate identical to the targets
    scores = inf_scores.influence_scores([cands], [targets], [1.0])
    assert scores.argmax() == 2 and scores[2] == pytest.approx(1.0)
    # lr weighting: sum over checkpoints of lr * score
    two = inf_scores.influence_scores([cands, cands], [targets, targets], [0.25, 0.5])
    assert np.allclose(two, 0.75 * scores)
    # mean vs max over targets
    t2 = inf_proj.l2_normalise(rng.standard_normal((4, 64)))
    sims = cands @ t2.T
    assert np.allclose(inf_scores.influence_scores([cands], [t2], [2.0], "mean"), 2 * sims.mean(1))
    assert np.allclose(inf_scores.influence_scores([cands], [t2], [2.0], "max"), 2 * sims.max(1))
    with pytest.raises(ValueError):
        inf_scores.influence_scores([cands], [t2], [1.0, 2.0])


# ----------------------------------------------------------------------------- features end to end
OPTS = InfluenceOptions(projection_dim=256, projection_seed=5, batch_size=3)


def test_features_batched_equal_loop_and_are_unit(run):
    ex = _examples(7)
    fast = inf_features.gradient_features(run.final, ex, kind="adam", opts=OPTS, max_seq_len=256)
    slow = inf_features.gradient_features(run.final, ex, kind="adam", opts=OPTS, max_seq_len=256, batched=False)
    assert fast.shape == (7, 256) and np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert np.abs(fast - slow).max() < 1e-4
    sgd = inf_features.gradient_features(run.final, ex, kind="sgd", opts=OPTS, max_seq_len=256)
    assert np.abs(sgd - fast).max() > 0.05  # the Adam transform changes the direction
    # an example whose prompt alone does not fit gets a zero row
    long = Example.of([{"role": "user", "content": "word " * 400}], "ok")
    feats = inf_features.gradient_features(run.final, ex[:2] + [long], kind="sgd", opts=OPTS, max_seq_len=256)
    assert np.allclose(feats[:2], sgd[:2], atol=1e-5) and not feats[2].any()


class _Interrupted(Exception):
    pass


def test_features_cache_and_resume_after_interruption(run, tmp_path, monkeypatch):
    ex = _examples(8)
    reference = inf_features.gradient_features(run.final, ex, kind="sgd", opts=OPTS, max_seq_len=256)
    monkeypatch.setattr(inf_features, "_shard_rows", lambda n_params, batch: 3)  # shards of 3, 3, 2
    real, calls, resuming = inf_proj.Projector.project, [], False

    def failing(self, vectors):
        calls.append(1)
        if len(calls) == 2 and not resuming:
            raise _Interrupted  # the stage dies while the second shard is computed
        return real(self, vectors)

    monkeypatch.setattr(inf_proj.Projector, "project", failing)
    with pytest.raises(_Interrupted):
        inf_features.gradient_features(run.final, ex, kind="sgd", opts=OPTS, max_seq_len=256, cache_dir=tmp_path)
    calls.clear()
    resuming = True
    resumed = inf_features.gradient_features(run.final, ex, kind="sgd", opts=OPTS, max_seq_len=256, cache_dir=tmp_path)
    assert len(calls) == 2 and np.allclose(resumed, reference, atol=1e-6)  # shard 1 was read back
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy"]  # shards folded into one file

    def no_model(*a, **kw):
        raise AssertionError("the cache should have served this")

    monkeypatch.setattr(inf_features, "load_checkpoint", no_model)
    again = inf_features.gradient_features(run.final, ex, kind="sgd", opts=OPTS, max_seq_len=256, cache_dir=tmp_path)
    assert np.array_equal(again, resumed)


def test_influence_over_checkpoints(run, tmp_path):
    opts = OPTS.model_copy(update={"max_target_samples": 3})
    scores = inf_scores.influence(
        run.checkpoints, _examples(5, offset=10), _examples(6), opts=opts, max_seq_len=256, cache_dir=tmp_path
    )
    assert scores.shape == (5,) and np.isfinite(scores).all()
    lrs = [inf_scores.checkpoint_lr(c) for c in run.checkpoints]
    assert all(lr > 0 for lr in lrs) and np.abs(scores).max() <= sum(lrs) + 1e-9
