"""One collate function for every dataset in the zoo.

Tensors are stacked, strings and dicts are kept as lists, and, when a text tokenizer is given, captions are
encoded into ``text_tokens`` (B, L) here -- in the DataLoader workers, so the training loop never waits on BPE.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


class Collator:
    """Picklable collate callable (DataLoader workers need to pickle it)."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate_samples(samples, self.tokenizer)


def collate_samples(samples: Sequence[dict[str, Any]], tokenizer=None) -> dict[str, Any]:
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            batch[key] = torch.tensor(values)
        else:  # str, dict, list: keep per-sample python objects
            batch[key] = values
    if tokenizer is not None and "caption" in batch:
        batch["text_tokens"] = tokenizer.encode(batch["caption"])
    return batch
