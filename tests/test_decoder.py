"""The step decoder equals audiocraft's LM: logits within 1e-4 (fp32), identical greedy tokens."""

import threading

import pytest
import torch

from engine.conditions import text_condition
from engine.decoder import StepDecoder
from engine.pattern import DelayedFrames
from engine.streams import Conditioning, SamplingParams


def _reference_inputs(lm, text: str, frames: int, seed: int = 0):
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout, ConditioningAttributes

    attributes = [ConditioningAttributes(text={"description": text})]
    null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
    condition_tensors = lm.condition_provider(lm.condition_provider.tokenize(attributes + null))
    generator = torch.Generator().manual_seed(seed)
    delays = list(lm.pattern_provider.delays)
    pattern = DelayedFrames(1, delays, lm.special_token_id, capacity=frames + 8)
    pattern.codes[:, :, :frames] = torch.randint(0, lm.card, (1, lm.num_codebooks, frames), generator=generator)
    sequence = pattern.sequence_values(0, frames).expand(2, -1, -1)
    return condition_tensors, sequence


def _compare_logits(lm, text: str, frames: int, tolerance: float) -> None:
    condition_tensors, sequence = _reference_inputs(lm, text, frames)
    with torch.no_grad():
        reference = lm(sequence, conditions=[], condition_tensors=condition_tensors)
    decoder = StepDecoder(lm, max_rows=2, max_steps=frames + 8)
    decoder.set_condition(0, *text_condition(lm, text))
    decoder.set_condition(1, *text_condition(lm, None))
    with torch.no_grad():
        prefill = decoder.forward(slice(0, 2), sequence)
        decoder.reset(slice(0, 2))
        stepped = torch.cat([decoder.forward(slice(0, 2), sequence[:, :, s:s + 1]) for s in range(frames)], dim=2)
    assert (prefill - reference).abs().max().item() < tolerance
    assert (stepped - reference).abs().max().item() < tolerance


def test_logits_match_audiocraft_on_the_demo_model(engine):
    _compare_logits(engine.model.musicgen.lm, "jazz piano trio", frames=60, tolerance=1e-4)


@pytest.mark.slow
def test_logits_match_audiocraft_on_a_musicgen_small_sized_model(engine):
    """musicgen-small's dimensions (1024 wide, 24 layers, 16 heads), random weights, built by audiocraft."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from weights.demo import lm_config

    torch.manual_seed(0)
    lm = builders.get_lm_model(OmegaConf.create(lm_config(1024, 24, 16))).eval()
    _compare_logits(lm, "heavy metal", frames=24, tolerance=1e-4)


def test_rows_at_different_positions_share_one_forward(engine):
    """Two streams at different lengths batched together give the logits each gets alone."""
    lm = engine.model.musicgen.lm
    _, long_seq = _reference_inputs(lm, "a", 30, seed=1)
    _, short_seq = _reference_inputs(lm, "b", 12, seed=2)
    alone = StepDecoder(lm, max_rows=2, max_steps=64)
    together = StepDecoder(lm, max_rows=4, max_steps=64)
    for decoder, rows in ((alone, (0, 1)), (together, (0, 1))):
        decoder.set_condition(rows[0], *text_condition(lm, "a"))
        decoder.set_condition(rows[1], *text_condition(lm, None))
    together.set_condition(2, *text_condition(lm, "b"))
    together.set_condition(3, *text_condition(lm, None))
    with torch.no_grad():
        together.forward(slice(0, 2), long_seq[:, :, :29])
        together.forward(slice(2, 4), short_seq[:, :, :11])
        batched = together.forward(slice(0, 4), torch.cat([long_seq[:, :, 29:30], short_seq[:, :, 11:12]]))
        alone.forward(slice(0, 2), long_seq[:, :, :29])
        single = alone.forward(slice(0, 2), long_seq[:, :, 29:30])
    assert (batched[:2] - single).abs().max().item() < 1e-5


def _stream_tokens(engine, text: str, frames: int, params: SamplingParams, seed: int) -> torch.Tensor:
    done = threading.Event()
    collected = []

    def on_frames(stream):
        collected.append(stream.take_frames())
        if stream.done():
            engine.scheduler.remove_stream(stream)
            done.set()

    stream = engine.new_stream(Conditioning([text], [1.0]), params, seed, target_frames=frames)
    stream.on_frames = on_frames
    engine.scheduler.call(lambda: engine.scheduler.add_stream(stream)).result()
    assert done.wait(60)
    return torch.cat(collected, dim=-1)


def test_greedy_tokens_equal_audiocraft_generate(engine):
    from audiocraft.modules.conditioners import ConditioningAttributes

    lm = engine.model.musicgen.lm
    frames = 60
    ours = _stream_tokens(engine, "lo-fi beat", frames, SamplingParams(top_k=1, guidance=3.0), seed=0)
    with torch.no_grad():
        reference = engine.scheduler.call(lambda: lm.generate(
            None, [ConditioningAttributes(text={"description": "lo-fi beat"})], max_gen_len=frames,
            use_sampling=False, cfg_coef=3.0)).result()
    assert torch.equal(ours, reference[0])


def test_seeded_stream_is_reproducible_whatever_runs_beside_it(engine):
    params = SamplingParams(temperature=1.0, top_k=50)
    alone = _stream_tokens(engine, "techno", 40, params, seed=5)
    other = threading.Thread(target=_stream_tokens, args=(engine, "ambient", 80, params, 6))
    other.start()
    beside = _stream_tokens(engine, "techno", 40, params, seed=5)
    other.join()
    assert torch.equal(alone, beside)


def test_unsupported_features_are_found_in_every_layer(engine):
    """A feature only the last layer has (here grouped key/values) is refused, not silently decoded wrong."""
    import copy

    from engine.decoder import UnsupportedModel, check_supported

    lm = copy.deepcopy(engine.model.musicgen.lm)
    check_supported(lm)
    lm.transformer.layers[-1].self_attn.kv_repeat = 2
    with pytest.raises(UnsupportedModel, match="kv_repeat"):
        check_supported(lm)
