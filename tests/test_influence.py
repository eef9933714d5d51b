"""Gradient influence (LESS): per-sample gradients, the frozen prefix, Adam directions, scores, caching."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from scoder_lib.core.config import InfluenceOptions, LoraOptions, TrainOptions
from scoder_lib.method.influence import checkpoints as inf_checkpoints
from scoder_lib.method.influence import features as inf_features
from scoder_lib.method.influence import gradients as inf_grads
from scoder_lib.method.influence import prefix as inf_prefix
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


def _train(micro_ref, folder, lora: LoraOptions):
    """A real LoRA run on the micro model, 2 checkpoints."""
    opts = TrainOptions(epochs=2, batch_size=4, learning_rate=3e-3, num_checkpoints=2, max_seq_len=256, lora=lora)
    return sft(_examples(8), micro_ref.path, folder, opts, micro_ref.fingerprint)


@pytest.fixture(scope="module")
def run(micro_ref, tmp_path_factory):
    """All layers and modules, dropout on."""
    return _train(micro_ref, tmp_path_factory.mktemp("influence") / "run", LoraOptions(r=4, dropout=0.1))


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
    # PEFT's own LoRA forward (not merged into one matmul) gives the same gradients
    batch = inf_grads.collate(rows, loaded.tok.pad_token_id)
    assert _rel_err(inf_grads.batched_grads(loaded.model, loaded.layout, batch, merge=False), batched).max() < 1e-5
    # with dropout live the per-sample formula would be wrong: refused, not computed
    loaded.model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            inf_grads.batched_grads(loaded.model, loaded.layout, batch)
    finally:
        loaded.model.eval()


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
    batch = inf_grads.collate(rows, tok.pad_token_id)
    batched = inf_grads.batched_grads(model, layout, batch)
    assert _rel_err(batched, inf_grads.loop_grads(model, layout, rows)).max() < 1e-4

    # the frozen prefix (layer 0): its saved states stand in for running it again, exactly
    depth = inf_prefix.prefix_depth(model, layout.modules)
    prefix = inf_prefix.prefix_states(model, depth, batch.input_ids, batch.attention_mask)
    assert depth == 1 and prefix.states.shape == (5, batch.input_ids.shape[1], 64)
    assert _rel_err(inf_grads.batched_grads(model, layout, batch, prefix), batched).max() < 1e-5
    wrong = inf_prefix.Prefix(depth, prefix.states.roll(1, 0))  # another sample's states: other gradients
    assert _rel_err(inf_grads.batched_grads(model, layout, batch, wrong), batched).min() > 0.05
    assert [type(m).__name__ for m in inf_prefix.decoder_of(model).layers] == ["LlamaDecoderLayer"] * 2  # restored


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


@pytest.fixture(scope="module")
def run_last(micro_ref, tmp_path_factory):
    """LoRA on the last layer only (as tiny has it on the last 8 of 30): a frozen prefix."""
    return _train(micro_ref, tmp_path_factory.mktemp("influence") / "last", LoraOptions(r=4, last_layers=1))


def test_features_batched_equal_loop_and_are_unit(run):
    ex = _examples(7)
    fast = inf_features.gradient_features(run.final, ex, kind="adam", opts=OPTS, max_seq_len=256)
    slow = inf_features.gradient_features(run.final, ex, kind="adam", opts=OPTS, max_seq_len=256, batched=False)
    assert fast.shape == (7, 256) and np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert np.abs(fast - slow).max() < 1e-4
    assert inf_checkpoints.load_checkpoint(run.final).depth == 0  # LoRA on every layer: no prefix
    sgd = inf_features.gradient_features(run.final, ex, kind="sgd", opts=OPTS, max_seq_len=256)
    assert np.abs(sgd - fast).max() > 0.05  # the Adam transform changes the direction
    # an example whose prompt alone does not fit gets a zero row
    long = Example.of([{"role": "user", "content": "word " * 400}], "ok")
    feats = inf_features.gradient_features(run.final, ex[:2] + [long], kind="sgd", opts=OPTS, max_seq_len=256)
    assert np.allclose(feats[:2], sgd[:2], atol=1e-5) and not feats[2].any()


def test_checkpoints_share_the_prefix_and_equal_each_alone(run_last, monkeypatch):
    """All checkpoints at once (one model, weights swapped in, the frozen layer run once per sample,
    several shards so weights swap back and forth) = each checkpoint alone with LESS's loop."""
    ex, ckpts = _examples(8), run_last.checkpoints
    monkeypatch.setattr(inf_features, "_shard_rows", lambda job, max_seq_len: 3)
    inf_checkpoints._RESIDENT.clear()
    together = inf_features.checkpoint_features(ckpts, ex, kind="adam", opts=OPTS, max_seq_len=256)
    assert inf_checkpoints._RESIDENT[0].depth == 1
    for ckpt, feats in zip(ckpts, together):
        inf_checkpoints._RESIDENT.clear()  # a fresh model holding only this checkpoint
        alone = inf_features.gradient_features(ckpt, ex, kind="adam", opts=OPTS, max_seq_len=256, batched=False)
        assert np.abs(feats - alone).max() < 1e-4
    assert np.abs(together[0] - together[1]).max() > 0.05  # the checkpoints do differ
    whole = inf_features.checkpoint_features(ckpts, ex, kind="sgd", opts=OPTS, max_seq_len=256, reuse_prefix=False)
    shared = inf_features.checkpoint_features(ckpts, ex, kind="sgd", opts=OPTS, max_seq_len=256)
    assert all(np.abs(a - b).max() < 1e-5 for a, b in zip(whole, shared))


def test_projected_cosines_of_real_gradients_stay_within_jl(run_last):
    """On real per-sample gradients (not only the synthetic vectors of test_influence_projection),
    every projected cosine is within the JL tolerance of the exact one: z/sqrt(D) with z = 5.1 for
    231 pairs at failure probability 1e-3 (observed: 1.1-1.6/sqrt(D)); the ranking of the pairs holds."""
    ex, dim = _examples(22, offset=20), 2048
    for ckpt in run_last.checkpoints:
        exact = inf_features.gradient_features(
            ckpt, ex, kind="sgd", opts=OPTS.model_copy(update={"projection": "none"}), max_seq_len=256
        )
        projected = inf_features.gradient_features(
            ckpt, ex, kind="sgd", opts=OPTS.model_copy(update={"projection_dim": dim}), max_seq_len=256
        )
        upper = np.triu_indices(len(ex), 1)
        cos_exact, cos_projected = (exact @ exact.T)[upper], (projected @ projected.T)[upper]
        assert exact.shape[1] == 4096 and np.ptp(cos_exact) > 0.3  # whole vectors; cosines spread
        z = math.sqrt(2 * math.log(2 * len(cos_exact) / 1e-3))
        assert np.abs(cos_projected - cos_exact).max() <= z / math.sqrt(dim)
        spearman = pd.DataFrame({"exact": cos_exact, "projected": cos_projected}).rank().corr().iloc[0, 1]
        assert spearman > 0.95


class _Interrupted(Exception):
    pass


def test_features_cache_and_resume_after_interruption(run_last, tmp_path, monkeypatch):
    ex, ckpts = _examples(8), run_last.checkpoints
    reference = inf_features.checkpoint_features(ckpts, ex, kind="sgd", opts=OPTS, max_seq_len=256)
    monkeypatch.setattr(inf_features, "_shard_rows", lambda job, max_seq_len: 3)  # shards of 3, 3, 2
    real, calls, resuming = inf_features.l2_normalise, [], False

    def failing(x):
        calls.append(1)
        if len(calls) == 4 and not resuming:
            raise _Interrupted  # the stage dies in the second shard, at its second checkpoint
        return real(x)

    monkeypatch.setattr(inf_features, "l2_normalise", failing)
    run = inf_features.checkpoint_features
    with pytest.raises(_Interrupted):
        run(ckpts, ex, kind="sgd", opts=OPTS, max_seq_len=256, cache_dir=tmp_path)
    calls.clear()
    resuming = True
    resumed = run(ckpts, ex, kind="sgd", opts=OPTS, max_seq_len=256, cache_dir=tmp_path)
    assert len(calls) == 3  # shard 1 at both checkpoints and shard 2 at the first were read back
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(resumed, reference))
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".npy", ".npy"]  # shards folded into one file each

    def no_model(*a, **kw):
        raise AssertionError("the cache should have served this")

    monkeypatch.setattr(inf_checkpoints, "load_checkpoint", no_model)
    monkeypatch.setattr(inf_features, "load_checkpoint", no_model)
    again = run(ckpts, ex, kind="sgd", opts=OPTS, max_seq_len=256, cache_dir=tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(again, resumed))


def test_influence_over_checkpoints(run, tmp_path):
    opts = OPTS.model_copy(update={"max_target_samples": 3})
    scores = inf_scores.influence(
        run.checkpoints, _examples(5, offset=10), _examples(6), opts=opts, max_seq_len=256, cache_dir=tmp_path
    )
    assert scores.shape == (5,) and np.isfinite(scores).all()
    lrs = [inf_scores.checkpoint_lr(c) for c in run.checkpoints]
    assert all(lr > 0 for lr in lrs) and np.abs(scores).max() <= sum(lrs) + 1e-9
