"""Per-sample LoRA gradients from one backward per batch, and the Adam update directions built from them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer

from scoder_lib.method.influence.prefix import Prefix, resumed
from scoder_lib.method.train import IGNORE

Row = dict[str, list[int]]  # train.encode's output: input_ids, labels, attention_mask
_LORA_WEIGHT = re.compile(r"(.+)\.lora_(A|B)\.([^.]+)\.weight")  # <layer>.lora_<role>.<adapter>.weight


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
    """The trainable weights in named_parameters order, each with the Linear layer that owns it, the
    LoRA layer (peft's wrapper of a base Linear) it belongs to and its role there ("A" or "B")."""

    names: tuple[str, ...]
    modules: tuple[Any, ...]
    sizes: tuple[int, ...]
    layers: tuple[Any, ...]
    roles: tuple[str, ...]
    adapter: str

    @property
    def total(self) -> int:
        return sum(self.sizes)


def layout_of(model: Any) -> Layout:

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    owners = {
        f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad
    }
    others = [n for n in trainable if n not in owners or not _LORA_WEIGHT.fullmatch(n)]
    variants = [n for n, m in model.named_modules() if getattr(m, "lora_variant", None)]
    if others or variants or not trainable:
        # Per-sample gradients come from each LoRA layer's input and output gradient: exact for plain
        # LoRA; DoRA, biases, embeddings or a full fine-tune would need more (and LESS uses LoRA).
        raise ValueError(
            f"influence needs a plain LoRA checkpoint; unsupported trainable parameters: {(others or variants)[:3]}"
        )
    parts = [_LORA_WEIGHT.fullmatch(n).groups() for n in trainable]  # type: ignore[union-attr]
    adapters = {adapter for _, _, adapter in parts}
    if len(adapters) != 1:
        raise ValueError(f"influence needs one LoRA adapter, found {sorted(adapters)}")
    layers = tuple(model.get_submodule(layer) for layer, _, _ in parts)
    if not all(isinstance(m, LoraLayer) for m in layers):
        raise ValueError("influence needs peft LoRA layers (lora_A / lora_B inside a LoraLayer)")
    return Layout(
        tuple(trainable),
        tuple(owners[n] for n in trainable),
        tuple(owners[n].weight.numel() for n in trainable),
        layers,
        tuple(role for _, role, _ in parts),
        adapters.pop(),
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


class _MergedLoraLinear(torch.autograd.Function):
    """y = x (W + s B A)^T + b as one matmul, for the input gradient only (the weights get none here).

    PEFT's forward runs the base matmul, then A, B, a scaling and an add, each a pass over the
    activations (a LoRA layer took 0.60 s against 0.44 for a frozen one on a batch of 4 x 350 tokens):
    merged, the suffix's forward and backward cost what frozen layers cost. The merged weight is
    rebuilt in the backward (r x in x out multiply-adds, about 2% of the layer's) rather than kept,
    so the memory is that of one layer's weight at a time.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        scale: float,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(weight, a, b)
        ctx.scale = scale
        return F.linear(x, torch.addmm(weight, b, a, alpha=scale), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        weight, a, b = ctx.saved_tensors
        return grad @ torch.addmm(weight, b, a, alpha=ctx.scale), None, None, None, None, None


class _Taps:
    """Within: each LoRA layer keeps its input and output for one forward, and runs merged where it can.

    Merged (`_MergedLoraLinear`) when the base is a torch Linear of the adapter's dtype; otherwise
    (a quantized or Conv1D base) PEFT's own forward runs. Either way the output is the same function
    of the input, up to float rounding, and its gradient is all the per-sample formula needs.
    """

    def __init__(self, layout: Layout, merge: bool = True):
        self.merge = merge
        self.layers = list(dict.fromkeys(layout.layers))  # each once, in layout order
        self.adapter = layout.adapter
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def __enter__(self) -> _Taps:
        for k, layer in enumerate(self.layers):
            _check_plain(layer, self.adapter)
            layer.forward = self._forward(k, layer)  # an instance attribute: hooks still run around it
        return self

    def __exit__(self, *exc: object) -> None:
        for layer in self.layers:
            layer.__dict__.pop("forward", None)

    def _forward(self, k: int, layer: Any) -> Any:
        own = type(layer).forward.__get__(layer)
        a, b = layer.lora_A[self.adapter].weight, layer.lora_B[self.adapter].weight
        base = layer.get_base_layer()

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if k in self.outputs:
                raise RuntimeError("a LoRA layer ran twice in one forward: per-sample gradients unsupported")
            if (
                self.merge
                and type(base) is torch.nn.Linear
                and not args
                and not kwargs
                and x.dtype == base.weight.dtype == a.dtype
            ):
                y = _MergedLoraLinear.apply(
                    x, base.weight, a.detach(), b.detach(), layer.scaling[self.adapter], base.bias
                )
            else:
                y = own(x, *args, **kwargs)
            if not y.requires_grad:  # the first layer after a frozen prefix: nothing below needs a gradient
                y.requires_grad_(True)
            self.inputs[k], self.outputs[k] = x.detach(), y
            return y

        return forward


def _check_plain(layer: Any, adapter: str) -> None:
    """The per-sample formula assumes y = base(x) + s B A x: this adapter alone, unmerged, no dropout."""
    if layer.merged or layer.disable_adapters or list(layer.active_adapters) != [adapter]:
        raise ValueError(f"influence needs the adapter {adapter!r} active alone and unmerged")
    if layer.training and not isinstance(layer.lora_dropout[adapter], torch.nn.Identity):
        raise ValueError("influence needs the model in eval mode (LoRA dropout off): call model.eval()")


def grad_blocks(
    model: Any, layout: Layout, batch: Batch, prefix: Prefix | None = None, merge: bool = True
) -> Iterator[tuple[int, torch.Tensor]]:
    """Per-sample gradients from one backward, weight by weight: (offset in the layout, B x size).

    For a LoRA layer y = W x + s B A x, with g_t = dL_b/dy_t from one autograd.grad of the summed
    per-sample means (to the layer outputs, so no weight gradient is formed) and x_t its input, sample
    b's gradients are, summed over its tokens t, s g_t (x) (A x_t) for B and s (B^T g_t) (x) x_t for A
    (LoGra's factorisation). Padded positions are zeroed. One weight's block at a time: a projection
    can consume it before the next one is formed. merge=False runs PEFT's own LoRA forward (for tests
    and benchmarks: the same gradients up to float rounding, slower).
    """

    with _Taps(layout, merge) as taps:
        loss = _sum_of_means(model, batch, prefix)
    hooked = sorted(taps.outputs)
    grads = dict(zip(hooked, torch.autograd.grad(loss, [taps.outputs[k] for k in hooked], allow_unused=True)))
    mask = batch.attention_mask[..., None].to(torch.float32)
    index = {id(layer): k for k, layer in enumerate(taps.layers)}
    offset, masked = 0, (-1, None)
    for layer, role, size in zip(layout.layers, layout.roles, layout.sizes):
        k = index[id(layer)]
        if grads.get(k) is None:  # a layer that never reaches the loss has zero gradient
            yield offset, torch.zeros(len(mask), size, device=mask.device)
        else:
            if masked[0] != k:  # A and B of a layer are neighbours in the layout: mask once
                masked = (k, grads[k] * mask)
            a, b = layer.lora_A[layout.adapter].weight.detach(), layer.lora_B[layout.adapter].weight.detach()
            g, x, s = masked[1].to(a.dtype), taps.inputs[k].to(a.dtype), layer.scaling[layout.adapter]
            if role == "A":  # B x r x in
                per_sample = torch.bmm((g @ b).transpose(1, 2), x)
            else:  # B x out x r
                per_sample = torch.bmm(g.transpose(1, 2), x @ a.t())
            yield offset, per_sample.mul_(s).reshape(len(per_sample), -1)
        offset += size


def batched_grads(
    model: Any, layout: Layout, batch: Batch, prefix: Prefix | None = None, merge: bool = True
) -> torch.Tensor:
    """B x P per-sample gradients from one backward (`grad_blocks`, concatenated)."""
    return torch.cat([block for _, block in grad_blocks(model, layout, batch, prefix, merge)], dim=1)


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
