"""The frozen prefix: decoder layers below the first LoRA layer, run once per sample for all checkpoints.

With LoRA on the last L of N layers, the hidden states entering layer N-L depend on the sample
only: the base weights are frozen and shared by every checkpoint. `prefix_states` computes them
(no autograd) by running the decoder up to that layer; `resumed` then runs the decoder's own
forward with those layers replaced by stand-ins that hand the saved states on, so embeddings,
position ids, the padding and causal masks and the rotary tables are all the model's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Prefix:
    depth: int  # layers run once (the first adapted layer's index)
    states: Any  # what layer depth-1 returned for the batch: its output, as the model passes it on


def decoder_of(model: Any) -> Any:
    """The PeftModel's decoder stack (the module holding `layers`)."""
    decoder = model.get_base_model().get_decoder()
    if not isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList):
        raise ValueError(f"{type(decoder).__name__} has no `layers` list: frozen-prefix reuse unsupported")
    return decoder


def prefix_depth(model: Any, trainable: tuple[Any, ...]) -> int:
    """Index of the first decoder layer that holds a trainable module or any LoRA weight (0: none frozen;
    all of them when LoRA sits outside the layers, e.g. on the head only)."""
    layers = decoder_of(model).layers
    owned = {id(m) for m in trainable}
    for i, layer in enumerate(layers):
        names = (n for n, _ in layer.named_parameters())
        if any(id(m) in owned for m in layer.modules()) or any("lora_" in n for n in names):
            return i
    return len(layers)


class _Stop(Exception):
    """Raised by the capture hook: the rest of the forward is not needed."""


def prefix_states(model: Any, depth: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Prefix | None:
    """The output of decoder layer depth-1 for a batch (None when depth is 0: nothing to reuse)."""
    if depth <= 0:
        return None
    decoder, captured = decoder_of(model), []

    def capture(module: Any, args: Any, output: Any) -> None:
        captured.append(output)
        raise _Stop

    handle = decoder.layers[depth - 1].register_forward_hook(capture)
    try:
        with torch.no_grad(), contextlib.suppress(_Stop):
            decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    return Prefix(depth, captured[0])


class _Replay(torch.nn.Module):
    """Stands in for a prefix layer: returns the saved output of the last one, whatever it is given."""

    def __init__(self, states: Any):
        super().__init__()
        self.states = states

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.states


@contextlib.contextmanager
def resumed(model: Any, prefix: Prefix | None) -> Iterator[None]:
    """Within: the decoder's forward skips the first prefix.depth layers and starts from prefix.states."""
    if prefix is None:
        yield
        return
    decoder = decoder_of(model)
    layers = decoder.layers
    replay = _Replay(prefix.states)
    decoder.layers = torch.nn.ModuleList([replay] * prefix.depth + list(layers[prefix.depth :]))
    try:
        yield
    finally:
        decoder.layers = layers
