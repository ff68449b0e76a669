"""Text conditions through the LM's own conditioner (T5 + projection), one row at a time."""

import torch


def text_condition(lm, text: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [T, D] and mask [T] for one description; None or "" gives the unconditional (null) row.

    Only the text conditioner runs: a melody model's chroma is a separate prefix (engine.melody), so a description
    is encoded the same way on every family, as audiocraft's provider encodes it in a batch.
    """
    conditioner = lm.condition_provider.conditioners["description"]
    embeds, mask = conditioner(conditioner.tokenize([text or None]))
    return embeds[0], mask[0]


def count_tokens(lm, text: str) -> int:
    """How many positions `text` takes in the text conditioner (T5 tokens with the end token), counted by the
    conditioner's own tokenize(); safe from any thread (tokenizing touches no model weights)."""
    return int(lm.condition_provider.conditioners["description"].tokenize([text])["input_ids"].shape[-1])
