"""The capturable decode step (engine.lm.static_step) gives the eager forward's logits and leaves the same caches,
eagerly, compiled with torch.compile(fullgraph=True), and replayed from a CUDA graph where CUDA exists."""

import pytest
import torch

from engine.lm.conditions import text_condition
from engine.lm.decoder import StepDecoder
from engine.lm.static_step import CapturableStep
from tests.support.steps import STEP_TEXTS, compare_with_eager, six_row_decoder


@pytest.mark.parametrize("compiled,min_window", [(False, None), (False, 16), (True, 16)],
                         ids=["eager-whole-cache", "eager-windows", "compiled-windows"])
def test_static_step_gives_the_eager_logits(engine, compiled, min_window):
    """With min_window 16 in a 48-step cache the steps cross windows of 16, 32 and 48 keys."""
    lm = engine.model.musicgen.lm
    with torch.no_grad():
        compare_with_eager(lm, lm, CapturableStep(six_row_decoder(lm, lm), compiled=compiled, min_window=min_window))


def test_the_step_takes_any_rows_of_its_bucket_and_leaves_the_others_as_they_were(engine):
    """Two streams' rows given out of order in a 16-row decoder (buckets 8 and 16): their logits are the eager
    forward's, and the rows not given (a third stream's, free ones) keep every byte of their caches and their
    lengths, though the step computes them in its bucket."""
    lm = engine.model.musicgen.lm
    twins = [StepDecoder(lm, max_rows=16, max_steps=48) for _ in range(2)]
    streams = [(slice(0, 2), 5), (slice(2, 4), 7), (slice(9, 11), 3)]  # rows, prefill length; rows 0-1 never step
    generator = torch.Generator().manual_seed(1)
    prefills = [torch.randint(0, lm.card, (2, lm.num_codebooks, n), generator=generator) for _, n in streams]
    for decoder in twins:
        for index, (rows, _) in enumerate(streams):
            for offset, text in enumerate((STEP_TEXTS[2 * index], None)):
                decoder.set_condition(rows.start + offset, *text_condition(lm, text))
            decoder.forward(rows, prefills[index])
    eager, static = twins
    step = CapturableStep(static, compiled=False, min_window=16)
    assert step.regions[0].buckets == (8, 16)
    idle = (static.keys[:, 0:2].clone(), static.values[:, 0:2].clone(), static.keys[:, 11:].clone())
    worst = 0.0
    with torch.no_grad():
        for order in ([9, 10, 2, 3], [9, 10, 2, 3], [2, 3], [3, 2, 10, 9]):
            tokens = torch.randint(0, lm.card, (len(order), lm.num_codebooks), generator=generator)
            got = step(order, tokens)
            for rows in (slice(2, 4), slice(9, 11)):
                picked = [order.index(r) for r in range(rows.start, rows.stop) if r in order]
                if picked:
                    expected = eager.forward(rows, tokens[picked].unsqueeze(-1))[:, :, 0]
                    worst = max(worst, (got[picked] - expected).abs().max().item())
    assert worst < 1e-4
    assert static.lengths.tolist() == eager.lengths.tolist() == static.host_lengths
    assert static.host_lengths[:4] == [5, 5, 11, 11] and static.host_lengths[9:11] == [6, 6]
    assert torch.equal(static.keys[:, 0:2], idle[0]) and torch.equal(static.values[:, 0:2], idle[1])
    assert torch.equal(static.keys[:, 11:], idle[2])


def test_static_step_refuses_a_full_cache(engine):
    """Bounds are checked on the host copies of the lengths: the step itself never reads the device."""
    lm = engine.model.musicgen.lm
    decoder = six_row_decoder(lm, lm)
    step = CapturableStep(decoder, compiled=False, min_window=16)
    tokens = torch.zeros(2, lm.num_codebooks, decoder.max_steps - 1, dtype=torch.long)
    with torch.no_grad():
        decoder.forward(slice(0, 2), tokens)
        step(slice(0, 2), tokens[:, :, 0])
        with pytest.raises(ValueError, match="KV cache full"):
            step(slice(0, 2), tokens[:, :, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture/replay needs a CUDA device")
def test_cuda_graph_replay_gives_the_eager_logits(engine):
    import copy

    cpu_lm = engine.model.musicgen.lm
    lm = copy.deepcopy(cpu_lm).cuda()
    with torch.no_grad():
        step = CapturableStep(six_row_decoder(lm, cpu_lm, "cuda"), compiled=False, graphs=True, min_window=16)
        compare_with_eager(lm, cpu_lm, step, "cuda")


def test_step_mode_is_chosen_by_device_and_overridden_by_the_environment():
    from engine.config import ConfigError, EngineConfig
    from engine.lm.static_step import choose_step_mode

    assert choose_step_mode("auto", "cuda")[0] == "static"
    assert choose_step_mode("auto", "cpu")[0] == "off"
    assert choose_step_mode("compile", "cpu") == ("compile", "set by MUSICGEN_COMPILE_STEP")
    assert EngineConfig.from_env({"MUSICGEN_COMPILE_STEP": "static"}).compile_step == "static"
    with pytest.raises(ConfigError, match="MUSICGEN_COMPILE_STEP"):
        EngineConfig.from_env({"MUSICGEN_COMPILE_STEP": "fast"})


def test_the_scheduler_decodes_through_the_static_step(engine):
    """A greedy prediction decoded by the static step equals the eager forward's (the session fixture's engine)."""
    from engine.config import EngineConfig
    from engine.core import Engine
    from engine.work.batch import BatchRequest

    static = Engine(engine.model, EngineConfig(max_sessions=1, weight_format="float32", compile_step="static"))
    try:
        assert static.describe()["step_mode"] == "static" and engine.describe()["step_mode"] == "off"
        request = BatchRequest(prompt="lo-fi beat", duration=1, seed=0, temperature=0.0)
        tokens = static.generate(request).wait().tokens
        assert static.scheduler.capturable is not None
    finally:
        static.close()
    assert torch.equal(tokens, engine.generate(request).wait().tokens)


def test_host_copies_of_the_lengths_follow_every_change(engine):
    """set_prefix, forward, reset and relayout keep the host copies equal to the device lengths."""
    lm = engine.model.musicgen.lm
    decoder = six_row_decoder(lm, lm)
    tokens = torch.zeros(6, lm.num_codebooks, 5, dtype=torch.long)
    with torch.no_grad():
        decoder.forward(slice(0, 6), tokens)
        decoder.forward(slice(2, 4), tokens[:2, :, :3])
        decoder.reset(slice(4, 6))
        decoder.relayout([2, 3, 0, 1, 4, 5])
    assert decoder.host_lengths == decoder.lengths.tolist() == [8, 8, 5, 5, 0, 0]
    assert decoder.host_prefix_lengths == decoder.prefix_lengths.tolist()
