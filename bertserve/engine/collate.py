"""One way to turn token-id lists of different lengths into a padded batch, for every engine and trainer."""
from __future__ import annotations

import torch


def pad_batch(input_ids: list[list[int]], pad_id: int, type_ids: list[list[int]] | None = None) -> dict:
    """{"input_ids", "attention_mask"[, "token_type_ids"]} as (n, longest) long tensors, padded on the right."""
    width = max(len(x) for x in input_ids)
    n = len(input_ids)
    batch = {"input_ids": torch.full((n, width), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros((n, width), dtype=torch.long)}
    if type_ids is not None:
        batch["token_type_ids"] = torch.zeros((n, width), dtype=torch.long)
    for row, ids in enumerate(input_ids):
        batch["input_ids"][row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        batch["attention_mask"][row, :len(ids)] = 1
        if type_ids is not None:
            batch["token_type_ids"][row, :len(type_ids[row])] = torch.tensor(type_ids[row], dtype=torch.long)
    return batch
