"""The exact fp32 reference backend: the checkpoint's own torch model.

A backend gets padded int64 batches and returns, for each requested hidden-state index (0 the embedding output,
num_layers the last layer), a (batch, length, hidden) float tensor, plus the pooler output when asked.
"""
from __future__ import annotations

import copy

import torch


def truncated(model, depth: int):
    """A view of `model` that stops after `depth` layers, sharing its weights (no work for unused layers)."""
    encoder = getattr(model, "encoder", None) or getattr(model, "transformer", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList) or depth >= len(layers):
        return model
    _install_output_hooks(model)
    short_encoder = copy.copy(encoder)
    short_encoder._modules = dict(encoder._modules)
    short_encoder.layer = torch.nn.ModuleList(list(layers)[:depth])
    short_model = copy.copy(model)
    short_model._modules = dict(model._modules)
    setattr(short_model, "encoder" if hasattr(model, "encoder") else "transformer", short_encoder)
    return short_model


def _install_output_hooks(model) -> None:
    """transformers >= 5 collects hidden states with forward hooks, installed lazily on the first call and marked
    by a flag on the model object. A shallow copy made before that call would install a second set on the shared
    layers, and every hidden state would then be recorded twice (shifting the indices): install them on the
    original first, so copies inherit the flag."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # transformers 4 returns hidden states without hooks
        return
    maybe_install_capturing_hooks(model)


class TorchBackend:
    name = "torch"

    def __init__(self, model, num_layers: int, hidden_indices: tuple[int, ...], need_pooler: bool):
        self.hidden_indices = hidden_indices
        self.need_pooler = need_pooler
        self.num_layers = num_layers
        depth = num_layers if need_pooler else max(max(hidden_indices), 1)
        self.model = truncated(model, depth)
        self.depth = depth
        self.last_only = hidden_indices == (depth,) and depth == num_layers

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs, output_hidden_states=not self.last_only, return_dict=True)
        if self.last_only:
            hidden = {self.num_layers: out.last_hidden_state}
        else:
            hidden = {i: out.hidden_states[i] for i in self.hidden_indices}
        pooled = getattr(out, "pooler_output", None) if self.need_pooler else None
        return hidden, pooled
