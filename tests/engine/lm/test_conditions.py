"""Prompt lengths are counted by the text conditioner's tokenizer alone: the counts its tokenize() gives, with no
tensor built or moved to the model's device (on a GPU that copy waits for all queued work, and the count runs on
the event loop and Cog's thread)."""

import pytest
import torch

from engine.lm.conditions import count_tokens

TEXTS = ["", "jazz", "lo-fi hip hop beat with warm piano", "jazz " * 600, "ünïcode ✓ 80s, 120 bpm!"]


def test_token_counts_equal_the_conditioners_and_move_nothing_to_a_device(engine, monkeypatch):
    lm = engine.model.musicgen.lm
    conditioner = lm.condition_provider.conditioners["description"]
    expected = [int(conditioner.tokenize([text])["input_ids"].shape[-1]) for text in TEXTS]
    assert expected[3] == 601

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a tensor was moved while counting tokens: .to{args}{kwargs}")

    monkeypatch.setattr(torch.Tensor, "to", refuse)
    assert [count_tokens(lm, text) for text in TEXTS] == expected
    with pytest.raises(ValueError, match="601 text tokens; the text encoder takes at most 512"):
        engine.check_prompt(TEXTS[3])
    engine.check_prompt(TEXTS[2])


def test_the_condition_cache_evicts_the_least_recently_used(engine, monkeypatch):
    """A jam that comes back to a style finds it cached: a full cache drops the style used longest ago, not all."""
    from engine.runtime import scheduler

    computed = []
    monkeypatch.setattr(scheduler, "CONDITION_CACHE_SIZE", 2)
    monkeypatch.setattr(scheduler.conditions, "text_condition", lambda lm, text: computed.append(text) or text)

    def look_up(*texts: str) -> None:
        for text in texts:
            engine.lm_worker.call(lambda text=text: engine.scheduler._condition(text)).result(timeout=30)

    engine.lm_worker.call(engine.scheduler._condition_cache.clear).result(timeout=30)
    look_up("lru a", "lru b", "lru a", "lru c")  # a was used after b: b goes
    look_up("lru a")
    assert computed == ["lru a", "lru b", "lru c"]
    look_up("lru b")
    assert computed[-1] == "lru b"
    engine.lm_worker.call(engine.scheduler._condition_cache.clear).result(timeout=30)
