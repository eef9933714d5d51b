"""Per-sample LoRA gradients from one backward per batch, and the Adam update directions built from them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from scoder_lib.method.influence.prefix import Prefix, resumed
from scoder_lib.method.train import IGNORE

Row = dict[str, list[int]]  # train.encode's output: input_ids, labels, attention_mask


def adam_direction(
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.Tensor:
    """The update Adam would take for `grad` from the saved state (rows of `grad` = samples).

        m' = b1 m + (1 - b1) g          v' = b2 v + (1 - b2) g^2
        m^ = m' / (1 - b1^(t+1))        v^ = v' / (1 - b2^(t+1))
        direction = m^ / (sqrt(v^) + eps)

    with t the checkpoint's Adam step (the moments have seen t updates; this is update t+1), as in
    torch.optim.Adam and the LESS paper. LESS's code omits the bias correction and puts eps inside
    the square root; after L2 normalisation the two differ only where v is tiny.
    """
    b1, b2 = betas
    m = exp_avg * b1 + grad * (1 - b1)
    v = exp_avg_sq * b2 + grad * grad * (1 - b2)
    m_hat = m / (1 - b1 ** (step + 1))
    v_hat = v / (1 - b2 ** (step + 1))
    return m_hat / (v_hat.sqrt() + eps)


@dataclass(frozen=True)
class Layout:
    """The trainable weights in named_parameters order, each with the Linear layer that owns it."""

    names: tuple[str, ...]
    modules: tuple[Any, ...]
    sizes: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.sizes)


def layout_of(model: Any) -> Layout:

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    owners = {
        f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad
    }
    others = [n for n in trainable if n not in owners]
    variants = [n for n, m in model.named_modules() if getattr(m, "lora_variant", None)]
    if others or variants or not trainable:
        # Per-sample gradients come from each Linear's input and output gradient: exact for plain
        # LoRA; DoRA, biases, embeddings or a full fine-tune would need more (and LESS uses LoRA).
        raise ValueError(
            f"influence needs a plain LoRA checkpoint; unsupported trainable parameters: {(others or variants)[:3]}"
        )
    return Layout(
        tuple(trainable), tuple(owners[n] for n in trainable), tuple(owners[n].weight.numel() for n in trainable)
    )


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # B x L, right-padded (positions then match the unpadded sample's)
    attention_mask: torch.Tensor
    rows: torch.Tensor  # for each predicted response token: its sample ...
    cols: torch.Tensor  # ... and the position whose logits predict it
    targets: torch.Tensor
    counts: torch.Tensor  # response tokens per sample


def collate(encoded: list[Row], pad_id: int, device: Any = "cpu") -> Batch:

    width = max(len(r["input_ids"]) for r in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, r in enumerate(encoded):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    valid = labels[:, 1:] != IGNORE  # position t predicts token t+1
    rows, cols = valid.nonzero(as_tuple=True)
    parts = (ids, mask, rows, cols, labels[:, 1:][rows, cols], valid.sum(1))
    return Batch(*(t.to(device) for t in parts))


def _sum_of_means(model: Any, batch: Batch, prefix: Prefix | None = None) -> torch.Tensor:
    """sum over samples of each sample's mean response-token loss: d/d(sample b) = its own gradient.

    Logits only at the predicting positions: the 49k-word head is a fifth of SmolLM2's forward.
    With a prefix, the decoder starts from its saved states (the frozen layers are not run again).
    """

    causal = model.get_base_model()
    if getattr(causal.config, "final_logit_softcapping", None):
        raise ValueError("logit soft-capping is not supported by the response-only head")
    with resumed(model, prefix):
        hidden = causal.get_decoder()(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state
    logits = causal.get_output_embeddings()(hidden[batch.rows, batch.cols]).float()
    nll = F.cross_entropy(logits, batch.targets, reduction="none")
    return (nll / batch.counts[batch.rows]).sum()


class _Taps:
    """Forward hooks keeping each trainable Linear's input and output for one forward pass."""

    def __init__(self, modules: Sequence[Any]):
        self.modules, self.inputs, self.outputs, self._handles = modules, {}, {}, []

    def __enter__(self) -> _Taps:
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()

    def _hook(self, i: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], output: Any) -> None:
            if i in self.outputs:
                raise RuntimeError("a LoRA layer ran twice in one forward: per-sample gradients unsupported")
            self.inputs[i], self.outputs[i] = args[0].detach(), output

        return hook


def grad_blocks(
    model: Any, layout: Layout, batch: Batch, prefix: Prefix | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Per-sample gradients from one backward, weight by weight: (offset in the layout, B x size).

    For a Linear y = W x, sample b's gradient is sum_t dL_b/dy_t (x) x_t: the output gradients come
    from one autograd.grad of the summed per-sample means (to the layer outputs, so no weight
    gradient is formed), the inputs from forward hooks. For lora_B that is sum_t delta_t (x) (A x_t)
    scaled, for lora_A sum_t (B^T delta_t scale) (x) x_t. Padded positions are zeroed. One weight's
    block at a time: a projection can consume it before the next one is formed.
    """

    with _Taps(layout.modules) as taps:
        loss = _sum_of_means(model, batch, prefix)
    hooked = sorted(taps.outputs)
    grads = dict(zip(hooked, torch.autograd.grad(loss, [taps.outputs[i] for i in hooked], allow_unused=True)))
    mask = batch.attention_mask[..., None].to(torch.float32)
    offset = 0
    for i, size in enumerate(layout.sizes):
        if grads.get(i) is not None:  # a layer that never reaches the loss has zero gradient
            per_sample = torch.bmm((grads[i] * mask).transpose(1, 2), taps.inputs[i])
            yield offset, per_sample.reshape(len(per_sample), -1)
        else:
            yield offset, torch.zeros(len(mask), size, device=mask.device)
        offset += size


def batched_grads(model: Any, layout: Layout, batch: Batch, prefix: Prefix | None = None) -> torch.Tensor:
    """B x P per-sample gradients from one backward (`grad_blocks`, concatenated)."""
    return torch.cat([block for _, block in grad_blocks(model, layout, batch, prefix)], dim=1)


def loop_grads(model: Any, layout: Layout, encoded: list[Row]) -> torch.Tensor:
    """n x P gradients one sample at a time with the model's own loss (LESS's way; the reference)."""

    params = [m.weight for m in layout.modules]
    out = torch.empty(len(encoded), layout.total, device=params[0].device)
    for i, r in enumerate(encoded):
        loss = model(
            input_ids=torch.tensor([r["input_ids"]], device=out.device),
            labels=torch.tensor([r["labels"]], device=out.device),
            use_cache=False,
        ).loss
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out[i] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
    return out
