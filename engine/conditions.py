"""Text conditions through the LM's own conditioner (T5 + projection), one row at a time."""

import torch


def text_condition(lm, text: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [T, D] and mask [T] for one description; None or "" gives the unconditional (null) row."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    attributes = [ConditioningAttributes(text={"description": text or None})]
    provider = lm.condition_provider
    embeds, mask = provider(provider.tokenize(attributes))["description"]
    return embeds[0], mask[0]
