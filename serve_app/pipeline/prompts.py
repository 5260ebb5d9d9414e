"""Prompts to text embeddings: tokenized once per batch, embeddings cached by token ids.

Tokenizing gives both what the text encoder reads (CLIP's 77-token window, truncated and
padded as diffusers' ``encode_prompt`` asks the tokenizer to) and whether a prompt was cut.
The cache holds one embedding row per distinct token sequence on the device: a hit costs a
device-side copy and no text-encoder call. CLIP attends causally and the pipeline passes no
attention mask, so a prompt's embedding does not depend on what else shares its batch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

TokenIds = tuple[int, ...]


@dataclass(frozen=True)
class Tokenized:
    ids: list[TokenIds]  # each exactly the tokenizer's window long
    truncated: list[bool]


def tokenize(tokenizer, prompts: list[str]) -> Tokenized:
    """One tokenizer call for the batch. Equals ``tokenizer(prompts, padding="max_length",
    max_length=window, truncation=True)``: CLIP keeps the start token, the first window - 2
    tokens and the end token, then pads."""
    window = tokenizer.model_max_length
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    ids, truncated = [], []
    for body in tokenizer(prompts, add_special_tokens=False).input_ids:
        cut = len(body) > window - 2
        body = body[: window - 2]
        ids.append((bos, *body, eos, *[pad] * (window - 2 - len(body))))
        truncated.append(cut)
    return Tokenized(ids, truncated)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


@dataclass
class PromptCache:
    """LRU of embeddings (one ``(window, hidden)`` device tensor per token sequence)."""

    capacity: int
    stats: CacheStats = field(default_factory=CacheStats)
    _rows: OrderedDict = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, ids: list[TokenIds]) -> tuple[dict[TokenIds, torch.Tensor], list[TokenIds]]:
        """Rows found, and the distinct sequences still to encode (in first-seen order)."""
        found, missing = {}, []
        for key in ids:
            if key in found or key in missing:
                continue
            row = self._rows.get(key)
            if row is None:
                missing.append(key)
                self.stats.misses += 1
            else:
                self._rows.move_to_end(key)
                found[key] = row
                self.stats.hits += 1
        return found, missing

    def store(self, key: TokenIds, row: torch.Tensor) -> None:
        if self.capacity <= 0:
            return
        self._rows[key] = row
        self._rows.move_to_end(key)
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)

    def describe(self) -> dict:
        return {
            "hits": self.stats.hits,
            "misses": self.stats.misses,
            "entries": len(self._rows),
            "capacity": self.capacity,
        }
