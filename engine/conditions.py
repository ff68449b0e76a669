"""Text conditions through the LM's own conditioner (T5 + projection), one row at a time."""

import torch


def text_condition(lm, text: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [T, D] and mask [T] for one description; None or "" gives the unconditional (null) row."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    attributes = [ConditioningAttributes(text={"description": text or None})]
    provider = lm.condition_provider
    embeds, mask = provider(provider.tokenize(attributes))["description"]
    return embeds[0], mask[0]


def count_tokens(lm, text: str) -> int:
    """How many positions `text` takes in the text conditioner (T5 tokens with the end token), counted by the
    conditioner's own tokenize(); safe from any thread (tokenizing touches no model weights)."""
    return int(lm.condition_provider.conditioners["description"].tokenize([text])["input_ids"].shape[-1])
