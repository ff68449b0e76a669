"""A decode step reads nothing back from the device: counted on the LM thread of a running engine, and proven by
compiling the whole step (pattern input, forward, guidance, sampling, pattern update) with fullgraph=True."""

import torch

from benchmarks.host_reads import measure
from engine.lm.conditions import text_condition
from engine.lm.decoder import StepDecoder
from engine.lm.pattern import DelayedFrames
from engine.lm.sampling import RowSettings, StepInputs, guided_sample
from engine.lm.static_step import step_function


def test_a_prediction_and_two_live_sessions_read_the_host_at_most_once_per_step(engine):
    """Before the device-side step: 9.0 reads per step for a prediction and 13.0 for two sessions (same counter)."""
    figures = measure(engine, prediction_seconds=2.0, session_chunks=2)
    for case in ("prediction", "two_sessions"):
        assert figures[case]["steps"] >= 50, figures
        assert figures[case]["reads_per_step"] <= 1.0, figures


# two streams on five rows: one of two styles (rows 0-2), one of one style (rows 3-4)
TEXTS = ("drums", "a longer prompt about bass and keys", None, "dub", None)
STREAMS = (RowSettings(0, (0.25, 0.75), 3.0, 1.0, 50, 0.0, 7), RowSettings(3, (1.0,), 5.0, 0.7, 0, 0.9, 8))


def _run(lm, device: str = "cpu") -> tuple[StepDecoder, list[DelayedFrames], StepInputs]:
    decoder = StepDecoder(lm, max_rows=5, max_steps=64, weight_format="float32" if device == "cpu" else "float16")
    for row, text in enumerate(TEXTS):
        decoder.set_condition(row, *text_condition(lm, text))
    delays = list(lm.pattern_provider.delays)
    frames = []
    for settings, prompt in zip(STREAMS, (5, 9), strict=True):
        rows = len(settings.style_weights) + 1
        pattern = DelayedFrames(1, delays, lm.special_token_id, capacity=40, device=torch.device(device))
        codes = torch.randint(0, lm.card, (1, lm.num_codebooks, prompt),
                              generator=torch.Generator().manual_seed(9)).to(device)
        steps = pattern.load_prompt(codes)
        decoder.forward(slice(settings.first_row, settings.first_row + rows),
                        pattern.sequence_values(0, steps).expand(rows, -1, -1))
        frames.append(pattern)
    return decoder, frames, StepInputs(STREAMS, [0, 0], torch.device(device))


def _whole_step(decoder: StepDecoder, frames: list[DelayedFrames], inputs: StepInputs, views: tuple) -> torch.Tensor:
    """What the scheduler does for a run of streams in one step, in the same calls."""
    rows = [len(s.style_weights) + 1 for s in STREAMS]
    tokens = torch.cat([f.next_input().expand(r, -1) for f, r in zip(frames, rows, strict=True)])
    sampled = guided_sample(step_function(decoder, *views, tokens), inputs)
    for index, pattern in enumerate(frames):
        pattern.accept(sampled[index: index + 1])
    return sampled


def test_the_whole_decode_step_compiles_into_one_graph_and_samples_as_eagerly(engine):
    lm = engine.model.musicgen.lm
    compiled = torch.compile(_whole_step, fullgraph=True, dynamic=False)  # fails on any data-dependent read
    with torch.no_grad():
        runs = [_run(lm), _run(lm)]
        for _ in range(4):
            out = []
            for (decoder, frames, inputs), fn in zip(runs, (_whole_step, compiled), strict=True):
                views = (list(decoder.keys[:, :5]), list(decoder.values[:, :5]), decoder.cross_keys[:, :5],
                         decoder.cross_values[:, :5], decoder.cross_lengths[:5], decoder.lengths[:5])
                out.append(fn(decoder, frames, inputs, views))
                decoder.advance_host(slice(0, 5), 1)
            assert torch.equal(out[0], out[1])
    for eager, graph in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(eager.codes, graph.codes) and eager.step == graph.step
    assert runs[1][2].draws.tolist() == [4, 4]
