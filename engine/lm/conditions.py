"""Text conditions through the LM's own conditioner (T5 + projection), one row at a time."""

import torch


def text_condition(lm, text: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [T, D] and mask [T] for one description; None or "" gives the unconditional (null) row.

    Only the text conditioner runs: a melody model's chroma is a separate prefix (engine.codec.melody), so a description
    is encoded the same way on every family, as audiocraft's provider encodes it in a batch.
    """
    conditioner = lm.condition_provider.conditioners["description"]
    embeds, mask = conditioner(conditioner.tokenize([text or None]))
    return embeds[0], mask[0]


def count_tokens(lm, text: str) -> int:
    """How many positions `text` takes in the text conditioner (T5 tokens with the end token).

    Callers are the event loop and Cog's thread, so this runs the conditioner's tokenizer alone, as its tokenize()
    does (its text normaliser first, when the checkpoint has one) but without building tensors or moving them to
    the model's device: on a GPU that copy would wait for all queued GPU work, stalling every `update`.
    """
    conditioner = lm.condition_provider.conditioners["description"]
    entries = [text]
    if conditioner.normalize_text:
        _, _, entries = conditioner.text_normalizer(entries, return_text=True)
    return len(conditioner.t5_tokenizer(entries[0])["input_ids"])
