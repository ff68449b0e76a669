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
