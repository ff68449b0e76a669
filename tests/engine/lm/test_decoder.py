"""The step decoder equals audiocraft's LM: logits within 1e-4 (fp32), identical greedy tokens."""

import threading

import pytest
import torch

from engine.lm.conditions import text_condition
from engine.lm.decoder import StepDecoder
from engine.work.batch import BatchRequest
from engine.work.session import SessionSettings
from tests.support.helpers import FailingGather
from tests.support.steps import reference_inputs


def _compare_logits(lm, text: str, frames: int, tolerance: float) -> None:
    condition_tensors, sequence = reference_inputs(lm, text, frames)
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
    _, long_seq = reference_inputs(lm, "a", 30, seed=1)
    _, short_seq = reference_inputs(lm, "b", 12, seed=2)
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


def _prediction_tokens(engine, prompt: str, seed: int, reference: bool = False, **options) -> torch.Tensor:
    request = BatchRequest(prompt=prompt, duration=1, seed=seed, **options)
    return engine.generate(request, reference=reference).wait().tokens


def test_greedy_tokens_equal_audiocraft_generate(engine):
    """temperature 0 decodes greedily on both paths, as audiocraft does."""
    ours = _prediction_tokens(engine, "lo-fi beat", seed=0, temperature=0.0)
    reference = _prediction_tokens(engine, "lo-fi beat", seed=0, temperature=0.0, reference=True)
    assert ours.shape == reference.shape == (4, 50)
    assert torch.equal(ours, reference)


def test_seeded_prediction_is_reproducible_whatever_runs_beside_it(engine):
    alone = _prediction_tokens(engine, "techno", seed=5, top_k=50)
    other = threading.Thread(target=_prediction_tokens, args=(engine, "ambient", 6), kwargs={"top_k": 50})
    session = engine.open_session(SessionSettings(styles=("dub",), weights=(1.0,), chunk_seconds=0.4), seed=1)
    try:
        chunk = session.next_chunk()
        other.start()
        beside = _prediction_tokens(engine, "techno", seed=5, top_k=50)
        other.join()
        chunk.result(timeout=60)
    finally:
        session.close()
    assert torch.equal(alone, beside)


def test_unsupported_features_are_found_in_every_layer(engine):
    """A feature only the last layer has (here grouped key/values) is refused, not silently decoded wrong."""
    import copy

    from engine.lm.supported import UnsupportedModel, check_supported

    lm = copy.deepcopy(engine.model.musicgen.lm)
    check_supported(lm)
    lm.transformer.layers[-1].self_attn.kv_repeat = 2
    with pytest.raises(UnsupportedModel, match="kv_repeat"):
        check_supported(lm)


def _decoder_state(decoder: StepDecoder) -> list:
    tensors = (decoder.keys, decoder.values, decoder.cross_keys, decoder.cross_values, decoder.lengths,
               decoder.cross_lengths, decoder.prefix_lengths)
    return [t.clone() for t in tensors] + [list(decoder.host_lengths), list(decoder.host_prefix_lengths)]


def test_a_relayout_whose_copy_fails_changes_no_row(engine):
    """Out of memory at any gather of the copy leaves every cache, length and condition as it was; the copy that
    then succeeds moves each row where it was asked to."""
    lm = engine.model.musicgen.lm
    decoder = StepDecoder(lm, max_rows=4, max_steps=32)
    for row, text in enumerate(("a", None, "jazz piano", None)):
        decoder.set_condition(row, *text_condition(lm, text))
    with torch.no_grad():
        decoder.forward(slice(0, 2), reference_inputs(lm, "a", 9, seed=1)[1])
        decoder.forward(slice(2, 4), reference_inputs(lm, "b", 5, seed=2)[1])
    before = _decoder_state(decoder)
    sources = [2, 3, 0, 1]
    with FailingGather(nth=0) as counting:
        decoder.relayout(sources)
    decoder.relayout(sources)  # back as it was (the swap is its own inverse)
    assert counting.calls >= 6
    for nth in range(1, counting.calls + 1):
        with pytest.raises(torch.OutOfMemoryError), FailingGather(nth):
            decoder.relayout(sources)
        for now, then in zip(_decoder_state(decoder), before, strict=True):
            assert torch.equal(now, then) if isinstance(now, torch.Tensor) else now == then, f"gather {nth}"
    decoder.relayout(sources)
    after = _decoder_state(decoder)
    for now, then in zip(after[:4], before[:4], strict=True):  # caches [layers, rows, ...]
        assert torch.equal(now, then[:, sources])
    for now, then in zip(after[4:], before[4:], strict=True):  # lengths, as tensors and host lists
        assert list(now) == [then[source] for source in sources]
