"""A decode step reads nothing back from the device: counted on the LM thread of a running engine, and proven by
compiling the whole step (pattern input, forward, guidance, sampling, pattern update) with fullgraph=True."""

import torch

from benchmarks.host_reads import measure
from tests.support.steps import two_streams, whole_step


def test_a_prediction_and_two_live_sessions_read_the_host_at_most_once_per_step(engine):
    """Before the device-side step: 9.0 reads per step for a prediction and 13.0 for two sessions (same counter)."""
    figures = measure(engine, prediction_seconds=2.0, session_chunks=2)
    for case in ("prediction", "two_sessions"):
        assert figures[case]["steps"] >= 50, figures
        assert figures[case]["reads_per_step"] <= 1.0, figures


def test_the_whole_decode_step_compiles_into_one_graph_and_samples_as_eagerly(engine):
    lm = engine.model.musicgen.lm
    compiled = torch.compile(whole_step, fullgraph=True, dynamic=False)  # fails on any data-dependent read
    with torch.no_grad():
        runs = [two_streams(lm), two_streams(lm)]
        for _ in range(4):
            out = []
            for (decoder, frames, inputs), fn in zip(runs, (whole_step, compiled), strict=True):
                views = (list(decoder.keys[:, :5]), list(decoder.values[:, :5]), decoder.cross_keys[:, :5],
                         decoder.cross_values[:, :5], decoder.cross_lengths[:5], decoder.lengths[:5])
                out.append(fn(decoder, frames, inputs, views))
                decoder.advance_host(slice(0, 5), 1)
            assert torch.equal(out[0], out[1])
    for eager, graph in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(eager.codes, graph.codes) and eager.step == graph.step
    assert runs[1][2].draws.tolist() == [4, 4]
