"""Melody conditioning for musicgen-melody checkpoints: the chroma prefix.

musicgen-melody prepends to the audio tokens a chroma of the melody's vocals + other stems (separated by demucs'
htdemucs, engine.loading.separator), projected to the LM's width: a prefix of P embedding steps (see
StepDecoder.set_prefix).
"""

import math
import typing as tp

import torch

from engine.loading.separator import FixedShift

WINDOW_SECONDS = 30.0  # the chroma covers a 30 s training window, as MusicGen's windowed extension gives it
# the kinds of its pieces on the codec thread (engine.runtime.deadlines estimates each one's cost): the first one
# (the melody read at the model's rate, looped to its window), a resampling, one layer of the separator, the
# separator's output (its inverse spectrogram), the chroma
LABEL, RESAMPLE, SEPARATOR, SEPARATOR_OUTPUT, CHROMA = ("melody analysis", "melody resample", "melody separator",
                                                        "melody separator output", "melody chroma")
LABELS = (LABEL, RESAMPLE, SEPARATOR, SEPARATOR_OUTPUT, CHROMA)
def prefix_steps(lm) -> int:
    """How many cache positions a row's prefix takes (0 without melody conditioning): size a StepDecoder's
    `max_steps` as prefix_steps + window steps. musicgen-melody: 235 chroma frames for its 30 s window."""
    conditioners = lm.condition_provider.conditioners
    if "self_wav" not in conditioners:
        return 0
    if not conditioners["self_wav"].match_len_on_eval:
        raise ValueError("melody models must be loaded by engine.loading.model.load_model (chroma padded to 30 s)")
    return int(conditioners["self_wav"].chroma_len)


def looped_window(wav: torch.Tensor, sample_rate: int, offset_seconds: float) -> torch.Tensor:
    """The melody [..., T] looped over the 30 s window that starts `offset_seconds` into the output, as
    MusicGen._generate_tokens conditions each window of a generation longer than 30 s."""
    start = int(offset_seconds * sample_rate)
    positions = torch.arange(start, start + int(WINDOW_SECONDS * sample_rate), device=wav.device)
    return wav[..., positions % wav.shape[-1]]


Piece = tp.Generator[str, None, torch.Tensor]  # each `next()` runs one piece and yields the kind of the next


def melody_condition(lm, wav: tp.Optional[torch.Tensor], sample_rate: int,
                     duration_seconds: float = WINDOW_SECONDS, offset_seconds: float = 0.0) -> torch.Tensor:
    """`melody_pieces` run to its end in one call (the null prefix, tests, and a jam session's melody)."""
    pieces = melody_pieces(lm, wav, sample_rate, duration_seconds, offset_seconds)
    while True:
        try:
            next(pieces)
        except StopIteration as finished:
            return finished.value


def melody_pieces(lm, wav: tp.Optional[torch.Tensor], sample_rate: int,
                  duration_seconds: float = WINDOW_SECONDS, offset_seconds: float = 0.0) -> Piece:
    """The prefix [P, D] musicgen-melody prepends for a melody `wav` [C, T] at `sample_rate` (codec thread), in
    bounded pieces: each `next()` does one stretch of the work (a resampling, one layer of the stem separator on one
    segment, the chroma) and yields the kind of the next one (LABELS; the first is LABEL), so a caller can run them
    as separate jobs; the generator's return value is the prefix.

    `wav=None` gives the null prefix: audiocraft's unconditional CFG row and its text-only generation on a melody
    model both use it (a silent one-sample melody). As MusicGen.generate_with_chroma: for a generation of at most
    30 s the chroma of the whole melody is cut or looped to the 30 s window; for a longer one (windowed extension,
    an endless jam) the melody is looped in time to the 30 s window starting at `offset_seconds` of the output,
    which audiocraft recomputes for each window. The computation is audiocraft's ChromaStemConditioner.forward
    (separation by demucs' apply_model with its defaults, one segment per piece), equal to it to the bit; the demucs
    time shift is fixed, so a melody always gives the same prefix.
    """
    from audiocraft.data.audio_utils import convert_audio
    from audiocraft.modules.conditioners import WavCondition

    conditioners = lm.condition_provider.conditioners
    if "self_wav" not in conditioners:
        raise ValueError("This model does not support melody conditioning; use a melody checkpoint")
    conditioner = conditioners["self_wav"]
    device = conditioner.device
    model_rate = int(conditioner.sample_rate)
    if wav is None:
        condition = WavCondition(torch.zeros(1, 1, 1, device=device), torch.tensor([0], device=device),
                                 sample_rate=[model_rate], path=[None])
        with torch.no_grad():
            embeds, _ = conditioner(conditioner.tokenize(condition))
        return embeds[0]
    channels = int(lm.cfg.channels) if getattr(lm, "cfg", None) is not None else 1
    melody = convert_audio(wav.to(device).float(), sample_rate, model_rate, channels)
    melody = melody.mean(0, keepdim=True)[None]  # [1, 1, T]: the conditioning provider's mono collation
    if duration_seconds > WINDOW_SECONDS:
        melody = looped_window(melody, model_rate, offset_seconds)
    yield RESAMPLE
    with torch.no_grad():
        chroma = yield from _stem_chroma(conditioner, melody)
        embeds = conditioner.output_proj(chroma.to(conditioner.output_proj.weight))
    # 'prepend' fusing puts the embeddings (multiplied by their all-ones mask: no masking on eval) before the tokens
    return (embeds * torch.ones_like(embeds[..., :1]))[0]


def _stem_chroma(conditioner, wav: torch.Tensor) -> Piece:
    """ChromaStemConditioner._get_wav_embedding of a melody [1, 1, T] at its rate (no cache, no eval wavs, as the
    engine loads it): the melody's vocals + other stems, their chroma, cut or repeated to the 30 s window."""
    from demucs.audio import convert_audio

    separator = conditioner.demucs
    with conditioner.autocast:
        mix = convert_audio(wav, conditioner.sample_rate, separator.samplerate, separator.audio_channels)
    yield SEPARATOR
    stems = yield from _separate(separator, mix, conditioner.autocast)
    with conditioner.autocast:
        stems = stems[:, conditioner.stem_indices].sum(1)
        stems = convert_audio(stems, separator.samplerate, conditioner.sample_rate, 1)
    yield CHROMA
    with conditioner.autocast:
        chroma = conditioner.chroma(stems)
    frames = chroma.shape[1]
    if frames > conditioner.chroma_len:
        chroma = chroma[:, :conditioner.chroma_len]
    elif frames < conditioner.chroma_len:
        chroma = chroma.repeat(1, math.ceil(conditioner.chroma_len / frames), 1)[:, :conditioner.chroma_len]
    return chroma


def _separate(bag, mix: torch.Tensor, autocast) -> Piece:
    """demucs.apply.apply_model(bag, mix) with its defaults (shifts=1, split=True, overlap=0.25, transition power
    1), one segment of one model per piece; demucs' own apply_model runs each segment."""
    from demucs.apply import TensorChunk, tensor_chunk

    estimates: tp.Union[float, torch.Tensor] = 0.0
    totals = [0.0] * len(bag.sources)
    for model, model_weights in zip(bag.models, bag.weights, strict=True):
        model.eval()
        length = mix.shape[-1]
        max_shift = int(0.5 * model.samplerate)
        padded = tensor_chunk(mix).padded(length + 2 * max_shift)
        offset = FixedShift.randint(0, max_shift)
        shifted = yield from _split(model, TensorChunk(padded, offset, length + max_shift - offset), autocast)
        out = 0.0 + shifted[..., max_shift - offset:]
        out /= 1  # demucs averages over its one shift
        for k, weight in enumerate(model_weights):
            out[:, k, :, :] *= weight
            totals[k] += weight
        estimates += out
    for k in range(estimates.shape[1]):
        estimates[:, k, :, :] /= totals[k]
    return estimates


def _split(model, mix, autocast) -> Piece:
    """apply_model's split branch: overlapping segments, each run alone, blended with triangular weights."""
    from demucs.apply import TensorChunk, apply_model
    from demucs.htdemucs import HTDemucs
    from demucs.utils import center_trim

    batch, channels, length = mix.shape
    out = torch.zeros(batch, len(model.sources), channels, length, device=mix.device)
    sum_weight = torch.zeros(length, device=mix.device)
    segment_length = int(model.samplerate * model.segment)
    stride = int((1 - 0.25) * segment_length)
    device = mix.device
    weight = torch.cat([torch.arange(1, segment_length // 2 + 1, device=device),
                        torch.arange(segment_length - segment_length // 2, 0, -1, device=device)])
    weight = (weight / weight.max()) ** 1.0
    for offset in range(0, length, stride):
        chunk = TensorChunk(mix, offset, segment_length)
        if isinstance(model, HTDemucs) and model.use_train_segment:  # apply_model(split=False), layer by layer
            with autocast:
                padded = chunk.padded(model.valid_length(chunk.shape[-1])).to(device)
            chunk_out = yield from _htdemucs(model, padded, autocast)
            chunk_out = center_trim(chunk_out, chunk.shape[-1])
        else:  # another separator: one segment per piece, by demucs' own code
            with autocast:
                chunk_out = apply_model(model, chunk, shifts=0, split=False, device=device)
        chunk_length = chunk_out.shape[-1]
        out[..., offset:offset + segment_length] += (weight[:chunk_length] * chunk_out).to(mix.device)
        sum_weight[offset:offset + segment_length] += weight[:chunk_length].to(mix.device)
        yield SEPARATOR if offset + stride < length else RESAMPLE  # the next segment, else the stems resampled
    out /= sum_weight
    return out


def _htdemucs(model, mix: torch.Tensor, autocast) -> Piece:
    """HTDemucs.forward in eval mode on a mix of its training length, one piece per layer: the spectrogram, each
    encoder layer (its time and frequency branches), the cross-transformer, each decoder layer, the output. The same
    operations in the same order as demucs' own forward, so the result is its result to the bit (a whole segment
    runs 0.3-1.4 s on this project's CPUs: longer than the gap between a 0.48 s chunk's decodes)."""
    from demucs.htdemucs import rearrange

    with torch.no_grad(), autocast:
        z = model._spec(mix)
        x = model._magnitude(z).to(mix.device)
        B, C, Fq, T = x.shape
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        xt = mix
        meant = xt.mean(dim=(1, 2), keepdim=True)
        stdt = xt.std(dim=(1, 2), keepdim=True)
        xt = (xt - meant) / (1e-5 + stdt)
    yield SEPARATOR
    saved, saved_t, lengths, lengths_t = [], [], [], []
    for idx, encode in enumerate(model.encoder):
        with torch.no_grad(), autocast:
            lengths.append(x.shape[-1])
            inject = None
            if idx < len(model.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = model.tencoder[idx]
                xt = tenc(xt)
                if not tenc.empty:
                    saved_t.append(xt)
                else:
                    inject = xt
            x = encode(x, inject)
            if idx == 0 and model.freq_emb is not None:
                frs = torch.arange(x.shape[-2], device=x.device)
                emb = model.freq_emb(frs).t()[None, :, :, None].expand_as(x)
                x = x + model.freq_emb_scale * emb
            saved.append(x)
        yield SEPARATOR
    if model.crosstransformer:
        with torch.no_grad(), autocast:
            if model.bottom_channels:
                b, c, f, t = x.shape
                x = rearrange(x, "b c f t-> b c (f t)")
                x = model.channel_upsampler(x)
                x = rearrange(x, "b c (f t)-> b c f t", f=f)
                xt = model.channel_upsampler_t(xt)
            x, xt = model.crosstransformer(x, xt)
            if model.bottom_channels:
                x = rearrange(x, "b c f t-> b c (f t)")
                x = model.channel_downsampler(x)
                x = rearrange(x, "b c (f t)-> b c f t", f=f)
                xt = model.channel_downsampler_t(xt)
        yield SEPARATOR
    for idx, decode in enumerate(model.decoder):
        with torch.no_grad(), autocast:
            x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
            offset = model.depth - len(model.tdecoder)
            if idx >= offset:
                tdec = model.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    xt, _ = tdec(pre[:, :, 0], None, length_t)
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), length_t)
        yield SEPARATOR
    with torch.no_grad(), autocast:
        training_length = int(model.segment * model.samplerate)
        S = len(model.sources)
        x = x.view(B, S, -1, Fq, T)
        x = x * std[:, None] + mean[:, None]
        zout = model._mask(z, x)
    yield SEPARATOR_OUTPUT
    with torch.no_grad(), autocast:
        x = model._ispec(zout, training_length)
        xt = xt.view(B, S, -1, training_length)
        xt = xt * stdt[:, None] + meant[:, None]
    return xt + x
