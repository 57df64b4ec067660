"""Pooling: token vectors of the chosen layers -> one vector per text (or token vectors for NONE).

Strategy names are bert-as-service's (case-insensitive), plus REDUCE_MEAN_SQRT_LEN for sentence-transformers
folders that use it. Mean and max ignore padding; with mask_cls_sep they also ignore the special tokens.
"""
from __future__ import annotations

import torch

from bertserve.encode.config import ALIASES, STRATEGIES, canonical_pooling  # noqa: F401 (re-exported)
from bertserve.errors import BadInput

def width_factor(strategy: str) -> int:
    return 2 if strategy == "REDUCE_MEAN_MAX" else 1


def pool(strategy: str, hidden: torch.Tensor, attention_mask: torch.Tensor, content_mask: torch.Tensor | None,
         pooled_output: torch.Tensor | None = None) -> torch.Tensor:
    """Pool `hidden` (batch, length, width) into (batch, width') or, for NONE, masked token vectors.

    attention_mask marks real tokens; content_mask, when given (mask_cls_sep), marks the tokens that mean and
    max may use. A row whose content mask is empty (an empty text) falls back to its attention mask, so an
    empty string still gets a meaningful vector.
    """
    mask = attention_mask.to(hidden.dtype)
    if strategy in ("FIRST_TOKEN",):
        return hidden[:, 0]
    if strategy == "LAST_TOKEN":
        last = attention_mask.sum(1).long() - 1
        return hidden[torch.arange(hidden.shape[0]), last]
    if strategy == "CLS_POOLED":
        return pooled_output
    if strategy == "NONE":
        return hidden * mask.unsqueeze(-1)
    if content_mask is not None:
        content = content_mask.to(hidden.dtype)
        empty = content.sum(1, keepdim=True) == 0
        mask = torch.where(empty, mask, content)
    m = mask.unsqueeze(-1)
    count = mask.sum(1, keepdim=True).clamp(min=1e-9)
    if strategy == "REDUCE_MEAN":
        return (hidden * m).sum(1) / count
    if strategy == "REDUCE_MEAN_SQRT_LEN":
        return (hidden * m).sum(1) / count.sqrt()
    masked_max = hidden.masked_fill(m == 0, float("-inf")).max(1).values
    if strategy == "REDUCE_MAX":
        return masked_max
    if strategy == "REDUCE_MEAN_MAX":
        return torch.cat([(hidden * m).sum(1) / count, masked_max], dim=-1)
    raise BadInput(f"unknown pooling {strategy!r}")
