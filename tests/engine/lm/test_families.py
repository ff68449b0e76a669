"""Melody and stereo checkpoints on the step decoder: equal to audiocraft's LM (logits within 1e-4 in fp32, greedy
tokens identical), the melody steers the tokens, stereo decodes to two channels. Tiny demos of each family are
built once per session by weights/demo.py through audiocraft's builders."""

import math
import random
import time

import pytest
import torch

from engine.codec.melody import WINDOW_SECONDS, looped_window, melody_condition, prefix_steps
from engine.lm.conditions import text_condition
from engine.lm.decoder import StepDecoder
from engine.lm.pattern import DelayedFrames
from engine.lm.sampling import RowSettings, StepInputs, guided_sample
from engine.runtime.streams import SamplingParams

SR = 44100  # melodies arrive at their own rate; conditioning resamples them as audiocraft does


@pytest.fixture(scope="session")
def family(demo_family):
    """kind -> LoadedModel of that demo family, each loaded on first use."""
    from engine.loading.model import load_model

    models = {}

    def get(kind: str):
        if kind not in models:
            models[kind] = load_model(demo_family(kind), device="cpu")
        return models[kind]

    return get


@pytest.mark.parametrize("kind,channels,melody", [("melody", 1, True), ("stereo", 2, False),
                                                  ("stereo-melody", 2, True)])
def test_each_demo_family_loads_offline(family, kind, channels, melody):
    model = family(kind)
    lm = model.musicgen.lm
    assert (model.channels, model.supports_melody, model.is_demo) == (channels, melody, True)
    assert lm.num_codebooks == 4 * channels and model.musicgen.compression_model.channels == channels
    assert prefix_steps(lm) == (melody_condition(lm, None, SR).shape[0] if melody else 0)
    assert StepDecoder(lm, max_rows=2, max_steps=8 + prefix_steps(lm)).uses_prefix == melody


def test_a_melody_model_refuses_rows_without_a_prefix(family):
    """Without its prefix a melody model sees inputs it was never trained on: a loud error, not wrong music."""
    lm = family("melody").musicgen.lm
    decoder = StepDecoder(lm, max_rows=2, max_steps=8 + prefix_steps(lm))
    decoder.set_condition(0, *text_condition(lm, None))
    with pytest.raises(ValueError, match="set_prefix"):
        decoder.forward(slice(0, 1), torch.zeros(1, lm.num_codebooks, 1, dtype=torch.long))


def _melody(freqs: tuple[float, ...], seconds: float = 2.0) -> torch.Tensor:
    """A mono melody [1, T]: one note per frequency, in turn."""
    t = torch.arange(int(seconds * SR)) / SR
    note = (t * len(freqs) / seconds).long().clamp(max=len(freqs) - 1)
    return 0.5 * torch.sin(2 * math.pi * torch.tensor(freqs)[note] * t)[None]


MELODY = _melody((440.0, 494.0, 523.0, 587.0))


def _rows(lm, text: str, wav, steps: int) -> StepDecoder:
    """A decoder whose rows 0/1 are the conditional/unconditional rows of CFG for `text` (+ `wav` if melody)."""
    prefixes = None
    if "self_wav" in lm.condition_provider.conditioners:  # a melody model: the null prefix when there is no melody
        prefixes = [melody_condition(lm, wav, SR), melody_condition(lm, None, SR)]
    decoder = StepDecoder(lm, max_rows=2, max_steps=steps + (prefixes[0].shape[0] if prefixes else 0))
    decoder.set_condition(0, *text_condition(lm, text))
    decoder.set_condition(1, *text_condition(lm, None))
    if prefixes:
        decoder.set_prefix(slice(0, 2), torch.stack(prefixes))
    return decoder


def _reference_conditions(model, text: str, wav):
    """audiocraft's condition tensors for [text (+ melody), null], as MusicGen.generate_with_chroma builds them."""
    from audiocraft.data.audio_utils import convert_audio
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

    musicgen, lm = model.musicgen, model.musicgen.lm
    melodies = None
    if wav is not None:
        melodies = [convert_audio(wav, SR, musicgen.sample_rate, musicgen.audio_channels)]
    attributes, _ = musicgen._prepare_tokens_and_attributes([text], None, melody_wavs=melodies)
    null = ClassifierFreeGuidanceDropout(p=1.0)(attributes)
    return lm.condition_provider(lm.condition_provider.tokenize(attributes + null))


def _random_sequence(lm, frames: int, seed: int = 0) -> torch.Tensor:
    pattern = DelayedFrames(1, list(lm.pattern_provider.delays), lm.special_token_id, capacity=frames + 8)
    generator = torch.Generator().manual_seed(seed)
    pattern.codes[:, :, :frames] = torch.randint(0, lm.card, (1, lm.num_codebooks, frames), generator=generator)
    return pattern.sequence_values(0, frames).expand(2, -1, -1)


@pytest.mark.parametrize("kind,with_melody", [("melody", True), ("melody", False), ("stereo", False),
                                              ("stereo-melody", True)])
def test_logits_match_audiocraft(family, kind, with_melody):
    """Prefill, single steps, and a re-prefill after `reset` (window roll-over: the prefix stays)."""
    model = family(kind)
    lm = model.musicgen.lm
    wav = MELODY if with_melody else None
    frames, kept = 40, 16
    condition_tensors = _reference_conditions(model, "jazz piano", wav)
    sequence = _random_sequence(lm, frames)
    with torch.no_grad():
        reference = lm(sequence, conditions=[], condition_tensors=condition_tensors)
        reference_kept = lm(sequence[:, :, -kept:], conditions=[], condition_tensors=condition_tensors)
        decoder = _rows(lm, "jazz piano", wav, frames + 8)
        if "self_wav" in condition_tensors:
            ours = torch.stack([melody_condition(lm, wav, SR), melody_condition(lm, None, SR)])
            assert (ours - condition_tensors["self_wav"][0]).abs().max().item() < 1e-5
        prefill = decoder.forward(slice(0, 2), sequence)
        decoder.reset(slice(0, 2))
        stepped = torch.cat([decoder.forward(slice(0, 2), sequence[:, :, s:s + 1]) for s in range(frames)], dim=2)
        decoder.reset(slice(0, 2))
        rolled = decoder.forward(slice(0, 2), sequence[:, :, -kept:])
    assert reference.shape == (2, lm.num_codebooks, frames, lm.card)
    assert (prefill - reference).abs().max().item() < 1e-4
    assert (stepped - reference).abs().max().item() < 1e-4
    assert (rolled - reference_kept).abs().max().item() < 1e-4


def _generate(decoder: StepDecoder, lm, frames: int, guidance: float = 3.0,
              params: SamplingParams | None = None, seed: int = 0) -> torch.Tensor:
    """Tokens [K, frames] from rows 0/1 with CFG: greedy, or sampled with `params` and `seed`."""
    delays = list(lm.pattern_provider.delays)
    pattern = DelayedFrames(1, delays, lm.special_token_id, capacity=frames + max(delays) + 2)
    pattern.end = frames
    pattern.load_prompt(torch.zeros(1, lm.num_codebooks, 0, dtype=torch.long))
    chosen = params or SamplingParams(temperature=0.0, guidance=guidance)
    settings = StepInputs([RowSettings(0, (1.0,), guidance, chosen.temperature, chosen.top_k, chosen.top_p, seed)],
                          [0], torch.device("cpu"))
    inputs = pattern.sequence_values(0, pattern.step)
    with torch.no_grad():
        while pattern.step < frames + max(delays) + 1:
            logits = decoder.forward(slice(0, 2), inputs.expand(2, -1, -1))[:, :, -1]
            tokens = guided_sample(logits, settings)
            pattern.accept(tokens.view(1, -1))
            inputs = pattern.sequence_values(pattern.step - 1, pattern.step)
    return pattern.codes[0, :, :frames]


@pytest.mark.parametrize("kind,with_melody", [("melody", True), ("melody", False), ("stereo", False),
                                              ("stereo-melody", True)])
def test_greedy_tokens_equal_audiocraft_generate(family, kind, with_melody):
    model = family(kind)
    musicgen, lm = model.musicgen, model.musicgen.lm
    frames = 50
    wav = MELODY if with_melody else None
    ours = _generate(_rows(lm, "lo-fi beat", wav, frames + 8), lm, frames)
    musicgen.set_generation_params(use_sampling=False, top_k=1, duration=frames / musicgen.frame_rate, cfg_coef=3.0)
    with torch.no_grad():
        if with_melody:
            _, reference = musicgen.generate_with_chroma(["lo-fi beat"], [wav], SR, return_tokens=True)
        else:
            _, reference = musicgen.generate(["lo-fi beat"], return_tokens=True)
    assert reference.shape == (1, lm.num_codebooks, frames)
    assert torch.equal(ours, reference[0])


def test_melody_steers_seeded_tokens(family):
    lm = family("melody").musicgen.lm
    params = SamplingParams(temperature=1.0, top_k=50)

    def tokens(wav):
        return _generate(_rows(lm, "ambient", wav, 48), lm, 40, params=params, seed=7)

    first = tokens(MELODY)
    assert torch.equal(first, tokens(MELODY.clone()))
    assert not torch.equal(first, tokens(_melody((330.0, 392.0, 262.0, 349.0))))


def test_melody_pieces_are_audiocraft_s_conditioner_and_reseed_no_process_wide_rng(family):
    """The chroma prefix, computed in pieces (one separator segment each), is audiocraft's ChromaStemConditioner
    output to the bit; demucs' time shift is fixed without touching python's `random`: a thread drawing from it
    meanwhile gets exactly the sequence its own seed gives, and every analysis of a melody is the same."""
    import threading

    from audiocraft.data.audio_utils import convert_audio
    from audiocraft.modules.conditioners import WavCondition

    from engine.codec.melody import melody_pieces

    lm = family("melody").musicgen.lm
    conditioner = lm.condition_provider.conditioners["self_wav"]
    wav = _melody((330.0, 392.0, 262.0, 349.0), seconds=9.0)
    pieces, steps = melody_pieces(lm, wav, SR), 0
    with pytest.raises(StopIteration) as finished:
        while True:
            next(pieces)
            steps += 1
    mono = convert_audio(wav, SR, conditioner.sample_rate, 1)[None]
    with torch.no_grad():
        expected = conditioner(conditioner.tokenize(WavCondition(mono, torch.tensor([mono.shape[-1]]),
                                                                 sample_rate=[conditioner.sample_rate],
                                                                 path=[None])))[0][0]
    assert torch.equal(finished.value.value, expected) and steps >= 3  # resampling, segments, chroma

    drawn: list[float] = []
    stop = threading.Event()

    def draw() -> None:  # another thread's own sequence, drawn while the separator runs (bounded: a list)
        random.seed(11)
        while not stop.is_set() and len(drawn) < 100_000:
            drawn.append(random.random())
            if len(drawn) % 100 == 0:
                time.sleep(0.001)

    drawer = threading.Thread(target=draw)
    drawer.start()
    try:
        prefixes = [melody_condition(lm, wav, SR) for _ in range(3)]
    finally:
        stop.set()
        drawer.join()
    own = random.Random(11)
    assert drawn == [own.random() for _ in drawn] and len(drawn) > 100
    assert all(torch.equal(prefix, prefixes[0]) for prefix in prefixes)


def test_long_generations_loop_the_melody_per_window():
    """Beyond 30 s each window's chroma is of the melody looped from the window's offset, as audiocraft's windowed
    extension recomputes it (melody_condition(..., duration_seconds > 30, offset_seconds))."""
    rate = 10
    wav = torch.arange(25.0)[None]  # a 2.5 s "melody" at 10 Hz
    window = looped_window(wav, rate, offset_seconds=18.0)
    assert window.shape == (1, int(WINDOW_SECONDS * rate))
    assert torch.equal(window[0, :5], torch.tensor([5.0, 6.0, 7.0, 8.0, 9.0]))  # 180 % 25 = 5
    assert torch.equal(window[0, 20:22], torch.tensor([0.0, 1.0]))


def test_stereo_tokens_decode_to_two_distinct_channels(family):
    from engine.codec.stream import StreamingCodecDecoder

    model = family("stereo")
    lm = model.musicgen.lm
    frames = 60
    codes = _generate(_rows(lm, "rock", None, frames + 8), lm, frames, params=SamplingParams(top_k=50), seed=3)
    codec = StreamingCodecDecoder(model.musicgen.compression_model)
    audio = torch.cat([codec.push(codes[:, i:i + 20]) for i in range(0, frames, 20)] + [codec.flush()], dim=-1)
    assert model.channels == 2 and audio.shape == (2, frames * 640)
    assert (audio[0] - audio[1]).abs().max() > 1e-3 * audio.abs().max() > 0


def test_melody_needs_its_separator_file(family, tmp_path):
    """The separator is part of the checkpoint: missing, the load fails naming the file and the fix."""
    import shutil

    from engine.loading.model import load_model
    from engine.loading.safe_load import CheckpointError

    source = family("melody").files.directory
    copy = tmp_path / "melody"
    shutil.copytree(source, copy)
    shutil.rmtree(copy / "torch")
    (copy / "torch").mkdir()
    with pytest.raises(CheckpointError, match="htdemucs stem separator.*weights.fetch --model melody"):
        load_model(copy, device="cpu")


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_separator_with_pickled_code_is_refused(tmp_path):
    """htdemucs is read like every checkpoint: its class may be named, nothing may be called."""
    from demucs.htdemucs import HTDemucs

    from engine.loading.safe_load import CheckpointError
    from engine.loading.separator import load_separator
    from weights.demo import TINY_HTDEMUCS

    model = HTDemucs(**TINY_HTDEMUCS)
    path = tmp_path / "htdemucs.th"
    torch.save({"klass": HTDemucs, "args": (), "kwargs": TINY_HTDEMUCS, "state": model.state_dict()}, path)
    assert load_separator(path).sources == TINY_HTDEMUCS["sources"]
    torch.save({"klass": HTDemucs, "args": (), "kwargs": TINY_HTDEMUCS, "state": model.state_dict(),
                "training_args": _Exploit(str(tmp_path / "pwned"))}, path)
    with pytest.raises(CheckpointError, match="not allowed: .*system"):
        load_separator(path)
    assert not (tmp_path / "pwned").exists()


def test_the_static_step_follows_a_melody_prefix_and_stereo_codebooks(family):
    """The capturable step places audio after the chroma prefix and decodes 8 interleaved codebooks as the eager
    forward does, and refuses rows without a prefix as it does."""
    from engine.lm.static_step import CapturableStep

    lm = family("stereo-melody").musicgen.lm
    prefix = melody_condition(lm, None, SR)
    tokens = torch.randint(0, lm.card, (2, lm.num_codebooks, 12), generator=torch.Generator().manual_seed(0))
    eager, static = (StepDecoder(lm, max_rows=2, max_steps=prefix.shape[0] + 16) for _ in range(2))
    step = CapturableStep(static, compiled=False, min_window=16)
    with pytest.raises(ValueError, match="set_prefix"):
        step(slice(0, 2), tokens[:, :, 0])
    with torch.no_grad():
        for decoder in (eager, static):
            decoder.set_condition(0, *text_condition(lm, "organ"))
            decoder.set_condition(1, *text_condition(lm, None))
            decoder.set_prefix(slice(0, 2), prefix)
            decoder.forward(slice(0, 2), tokens[:, :, :4])
        for s in range(4, 12):
            expected = eager.forward(slice(0, 2), tokens[:, :, s:s + 1])[:, :, 0]
            assert (step(slice(0, 2), tokens[:, :, s]) - expected).abs().max().item() < 1e-4
    assert static.host_lengths == static.lengths.tolist() == [prefix.shape[0] + 12] * 2
