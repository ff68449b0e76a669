"""What only a GPU can show: CUDA graph replay equals the eager step, the step reads nothing back to the host,
the engine makes audio on CUDA with half-precision weights and KV cache stored once, and the codec thread's own
CUDA stream gives the default stream's results. Skipped without CUDA; benchmarks/gpu/check.py runs this file on
a lent GPU (docs/development.md, "The GPU check")."""

import contextlib

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_engine(demo_dir):
    from engine.config import EngineConfig
    from engine.core import Engine

    engine = Engine.load(demo_dir, device="cuda", config=EngineConfig(max_sessions=2))
    yield engine
    engine.close()


@contextlib.contextmanager
def sync_is_an_error():
    """Any host read of a device value (a device sync) raises inside this block."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _greedy(engine, seconds: int = 1):
    from engine.work.batch import BatchRequest

    return engine.generate(BatchRequest(prompt="lo-fi beat", duration=seconds, seed=3, temperature=0.0)).wait()


def test_graph_replay_gives_the_eager_step(cuda_engine):
    """The decoder's step replayed from a CUDA graph equals its eager forward, logits and caches (float32 weights,
    so the bound is tight); across row ranges, lengths and windows (tests.support.steps.compare_with_eager, as
    tests/engine/lm/test_static_step.py compares on the CPU)."""
    from engine.lm.static_step import CapturableStep
    from tests.support.steps import compare_with_eager, six_row_decoder

    lm = cuda_engine.model.musicgen.lm
    with torch.no_grad():
        step = CapturableStep(six_row_decoder(lm, lm, "cuda"), compiled=False, graphs=True, min_window=16)
        compare_with_eager(lm, lm, step, "cuda")


def test_graph_replayed_predictions_equal_eager_ones(demo_dir):
    """Through the whole engine: a greedy prediction decoded by graph replay equals the eager forward's tokens."""
    from engine.config import EngineConfig
    from engine.core import Engine
    from engine.loading.model import load_model

    model = load_model(demo_dir, device="cuda")
    tokens = {}
    for mode in ("static", "off"):
        engine = Engine(model, EngineConfig(max_sessions=1, weight_format="float32", compile_step=mode))
        try:
            assert engine.describe()["step_mode"] == mode
            tokens[mode] = _greedy(engine).tokens
        finally:
            engine.close()
    assert torch.equal(tokens["static"], tokens["off"])


def test_the_step_reads_nothing_back_to_the_host(cuda_engine):
    """Once captured, a step (graph replay) and the capturable step run eagerly make no device sync."""
    from engine.lm.static_step import CapturableStep
    from tests.support.steps import six_row_decoder

    lm = cuda_engine.model.musicgen.lm
    with torch.no_grad():
        for graphs in (True, False):
            decoder = six_row_decoder(lm, lm, "cuda")
            step = CapturableStep(decoder, compiled=False, graphs=graphs)
            tokens = torch.zeros(2, lm.num_codebooks, dtype=torch.long, device="cuda")
            decoder.forward(slice(0, 2), torch.zeros(2, lm.num_codebooks, 3, dtype=torch.long, device="cuda"))
            step(slice(0, 2), tokens)  # captures (graphs) or warms up
            with sync_is_an_error():
                for _ in range(3):
                    logits = step(slice(0, 2), tokens)
            assert torch.isfinite(logits).all()


def test_the_whole_decode_step_makes_no_device_sync(cuda_engine):
    """Forward, guidance, sampling and the delay-pattern update of two streams (tests.support.steps.whole_step, which
    tests/engine/lm/test_host_reads.py compiles on the CPU), eagerly on CUDA: not one host read of a device value."""
    from engine.lm.decoder import StepDecoder
    from tests.support.steps import two_streams, whole_step

    lm = cuda_engine.model.musicgen.lm
    with torch.no_grad():
        decoder, frames, inputs = two_streams(lm, "cuda")
        assert isinstance(decoder, StepDecoder)
        for step in range(3):
            views = (list(decoder.keys[:, :5]), list(decoder.values[:, :5]), decoder.cross_keys[:, :5],
                     decoder.cross_values[:, :5], decoder.cross_lengths[:5], decoder.lengths[:5])
            if step == 0:
                whole_step(decoder, frames, inputs, views)  # warms up (allocator, kernels' first launch)
            else:
                with sync_is_an_error():
                    sampled = whole_step(decoder, frames, inputs, views)
            decoder.advance_host(slice(0, 5), 1)
    assert sampled.device.type == "cuda" and ((sampled >= 0) & (sampled < lm.card)).all()


def test_graphs_are_captured_at_start_and_none_while_streams_play(cuda_engine):
    """Every (region, bucket, window) graph exists when the engine is built; a prompt longer than the cross
    cache's first size (64 tokens), a prediction and a session beside it capture none."""
    from engine.work.batch import BatchRequest
    from engine.work.session import SessionSettings

    capturable = cuda_engine.scheduler.capturable
    graphs = cuda_engine.describe()["cuda_graphs"]
    assert graphs["graphs"] == sum(len(r.buckets) for r in capturable.regions) * len(capturable.windows)
    assert graphs["capture_seconds"] > 0 and graphs["memory_bytes"] >= 0 and graphs["late_captures"] == 0
    long_prompt = ", ".join(["warm analog drums with a deep bass line"] * 12)
    settings = SessionSettings(styles=(long_prompt,), weights=(1.0,), chunk_seconds=1.0)
    session = cuda_engine.open_session(settings, seed=2)
    try:
        job = cuda_engine.generate(BatchRequest(prompt=long_prompt, duration=1, seed=4))
        session.next_chunk().result(timeout=120)
        assert torch.isfinite(job.wait().wav).all()
    finally:
        session.close()
    assert cuda_engine.describe()["cuda_graphs"]["late_captures"] == 0


def test_auto_sessions_are_sized_from_the_free_memory(demo_dir):
    from engine.config import EngineConfig
    from engine.core import Engine
    from engine.runtime import memory

    engine = Engine.load(demo_dir, device="cuda", config=EngineConfig(max_sessions=None, max_styles=1,
                                                                     compile_step="off"))
    try:
        assert 0 < engine.config.max_sessions <= memory.MAX_AUTO_SESSIONS
        assert engine.describe()["max_sessions"] == engine.config.max_sessions
    finally:
        engine.close()


def test_the_engine_makes_audio_on_cuda(cuda_engine):
    from engine.work.session import SessionSettings

    description = cuda_engine.describe()
    assert description["device"] == "cuda" and description["weight_format"] == "float16"
    result = _greedy(cuda_engine, seconds=2)
    assert result.wav.shape[-1] == 2 * result.sample_rate and torch.isfinite(result.wav).all()
    assert result.wav.abs().max() > 0
    from engine.work.batch import BatchRequest

    stock = cuda_engine.generate(BatchRequest(prompt="lo-fi beat", duration=1, seed=3), reference=True).wait()
    assert torch.isfinite(stock.wav).all()  # audiocraft's own generate on the float16 LM, under its autocast
    session = cuda_engine.open_session(SessionSettings(styles=("jam",), weights=(1.0,), chunk_seconds=1.0), seed=1)
    try:
        chunks = [session.next_chunk().result(timeout=120) for _ in range(2)]
    finally:
        session.close()
    for chunk in chunks:
        assert chunk.audio.device.type == "cpu" and torch.isfinite(chunk.audio).all()
        assert chunk.audio.shape[-1] >= chunk.sample_rate


def test_half_precision_weights_and_cache_are_stored_once(cuda_engine):
    """The LM is stored in float16 on CUDA (its transformer built so by audiocraft's loader, its embeddings, norm and
    heads converted by engine.loading.checkpoint) and the step decoder's weights are the LM's own tensors, not copies;
    the KV cache is float16. The conditioners and the codec stay in float32, which
    is what audiocraft runs them in there (its T5 under a float32 autocast, the codec outside any autocast)."""
    lm = cuda_engine.model.musicgen.lm
    decoder = cuda_engine.scheduler.decoder
    lm_dtypes = {p.dtype for module in (lm.transformer, lm.emb, lm.out_norm, lm.linears) for p in module.parameters()}
    assert lm_dtypes == {torch.float16}
    assert decoder.keys.dtype == decoder.values.dtype == torch.float16
    first = lm.transformer.layers[0]
    assert decoder.transformer.layers[0].qkv.weight.data_ptr() == first.self_attn.in_proj_weight.data_ptr()
    assert decoder.transformer.layers[0].ff1.weight.data_ptr() == first.linear1.weight.data_ptr()
    assert decoder.transformer.embeddings[0].data_ptr() == lm.emb[0].weight.data_ptr()
    codec = cuda_engine.model.musicgen.compression_model
    assert {p.dtype for p in codec.parameters()} == {torch.float32}
    t5 = lm.condition_provider.conditioners["description"]
    assert {p.dtype for p in t5.parameters()} == {torch.float32}


def test_the_codec_stream_gives_the_default_streams_audio(cuda_engine):
    """The codec thread runs its CUDA work on its own stream (so it overlaps LM steps); with the hand-off events,
    its audio equals what the default stream gives for the same tokens."""
    worker = cuda_engine.codec_worker
    assert worker.stream is not None and worker.stream != torch.cuda.default_stream()
    first = _greedy(cuda_engine)
    own, worker.stream = worker.stream, None
    try:
        second = _greedy(cuda_engine)
    finally:
        worker.stream = own
    assert torch.equal(first.tokens, second.tokens)
    assert torch.allclose(first.wav, second.wav, atol=1e-6)


def test_graph_replay_serves_per_row_adapters_and_sees_a_slot_written_after_capture(cuda_engine):
    """LoRA adapters on CUDA graphs (engine.lm.lora.AdapterBank): rows with different adapters replayed from the
    captured step give the eager forward's logits, and an adapter loaded into a slot after the capture is read by
    the same graphs (the bank is written in place: no capture after the start)."""
    from engine.lm.lora import AdapterBank, new_adapter
    from engine.lm.static_step import CapturableStep
    from tests.support.steps import six_row_decoder

    lm = cuda_engine.model.musicgen.lm
    generator = torch.Generator().manual_seed(0)
    adapters = [new_adapter(lm, rank=4, alpha=8.0, b_std=0.3, generator=generator) for _ in range(3)]
    bank = AdapterBank(lm, slots=2, max_rank=4, dtype=torch.float32)
    bank.load(1, adapters[0])
    eager, static = six_row_decoder(lm, lm, "cuda"), six_row_decoder(lm, lm, "cuda")
    for decoder in (eager, static):
        decoder.attach_adapters(bank)
        decoder.set_adapter(slice(0, 2), 1)
        decoder.set_adapter(slice(4, 6), 2)
    step = CapturableStep(static, compiled=False, graphs=True, min_window=16)
    sequence = torch.randint(0, lm.card, (6, lm.num_codebooks, 12), generator=generator).to("cuda")
    worst = 0.0
    with torch.no_grad():
        step.capture_all()
        for decoder in (eager, static):
            decoder.forward(slice(0, 6), sequence[:, :, :8])
        for s in range(4):
            if s == 2:
                bank.load(2, adapters[2])  # after the capture, while the graphs exist
            tokens = sequence[:, :, 8 + s]
            expected = eager.forward(slice(0, 6), tokens.unsqueeze(-1))[:, :, 0]
            worst = max(worst, (step(slice(0, 6), tokens) - expected).abs().max().item())
    assert worst < 1e-3
    assert step.stats.late_captures == 0
