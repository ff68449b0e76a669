"""Melody conditioning for musicgen-melody checkpoints: the stem separator from local files, the chroma prefix.

musicgen-melody prepends to the audio tokens a chroma of the melody's vocals + other stems (separated by demucs'
htdemucs), projected to the LM's width: a prefix of P embedding steps (see StepDecoder.set_prefix). audiocraft's
ChromaStemConditioner gets htdemucs by name through demucs' loader, which downloads from a URL and unpickles a class
with its arguments. Here the separator is read from the checkpoint's torch hub cache with the allow-listed
weights-only `torch.load` used for every checkpoint, rebuilt from its plain kwargs and state dict, and handed to the
conditioner while audiocraft's builder constructs it (`providing_separator`).
"""

import contextlib
import inspect
import math
import random
import typing as tp
from fractions import Fraction
from pathlib import Path

import torch

from engine.checkpoint import CheckpointError, safe_load

# The one model of demucs' "htdemucs" bag (demucs/remote/htdemucs.yaml), as torch hub names its cached download.
HTDEMUCS_FILE = "955717e8-8726e21a.th"
HTDEMUCS_URL = "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/" + HTDEMUCS_FILE
WINDOW_SECONDS = 30.0  # the chroma covers a 30 s training window, as MusicGen's windowed extension gives it
# demucs separates with a random time shift (python's `random`); a fixed one makes a melody's prefix reproducible.
_SHIFT_SEED = 0


def separator_path() -> Path:
    """Where the separator is read from: the torch hub cache of TORCH_HOME (see engine.hub)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / HTDEMUCS_FILE


def needs_separator(cfg) -> bool:
    """Whether an LM config has a chroma conditioner, which audiocraft builds around htdemucs."""
    conditioners = cfg.get("conditioners") or {}
    return any(isinstance(c, tp.Mapping) and c.get("model") == "chroma_stem" for c in conditioners.values())


def load_separator(path: tp.Optional[Path] = None):
    """htdemucs as demucs' pretrained "htdemucs" gives it (a bag of one model), from demucs' package layout
    {'klass', 'args', 'kwargs', 'state'} read without executing pickled code."""
    from demucs.apply import BagOfModels
    from demucs.htdemucs import HTDemucs

    fix_separation_shift()
    path = path or separator_path()
    if not path.is_file():
        raise CheckpointError(f"This melody checkpoint needs the htdemucs stem separator at {path}; fetch it with "
                              "`python -m weights.fetch --model melody` (or copy that file there)")
    pkg = safe_load(path, extra_globals=[HTDemucs, Fraction])
    if pkg.get("klass") is not HTDemucs:
        raise CheckpointError(f"{path} is not an htdemucs package (klass={pkg.get('klass')!r})")
    accepted = inspect.signature(HTDemucs).parameters
    kwargs = {key: value for key, value in dict(pkg["kwargs"]).items() if key in accepted}
    model = HTDemucs(*pkg.get("args", ()), **kwargs)
    try:
        model.load_state_dict(pkg["state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the separator's weights do not fit its kwargs: {exc}") from None
    return BagOfModels([model]).eval()


def save_separator(model, path: Path) -> None:
    """Writes an HTDemucs in demucs' package layout (what `load_separator` and demucs itself read)."""
    args, kwargs = model._init_args_kwargs
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"klass": type(model), "args": tuple(args), "kwargs": dict(kwargs), "state": model.state_dict(),
                "training_args": {}}, path)


@contextlib.contextmanager
def providing_separator(separator) -> tp.Iterator[None]:
    """While audiocraft builds an LM, its ChromaStemConditioner gets `separator` instead of a hub download."""
    from demucs import pretrained

    original = pretrained.get_model

    def get_model(name: str, repo=None):
        if name != "htdemucs" or repo is not None:
            raise CheckpointError(f"unexpected demucs model request {name!r}: only htdemucs is provided locally")
        return separator

    pretrained.get_model = get_model
    try:
        yield
    finally:
        pretrained.get_model = original


def prefix_steps(lm) -> int:
    """How many cache positions a row's prefix takes (0 without melody conditioning): size a StepDecoder's
    `max_steps` as prefix_steps + window steps. musicgen-melody: 235 chroma frames for its 30 s window."""
    conditioners = lm.condition_provider.conditioners
    if "self_wav" not in conditioners:
        return 0
    if not conditioners["self_wav"].match_len_on_eval:
        raise ValueError("melody models must be loaded by engine.model.load_model (chroma padded to 30 s)")
    return int(conditioners["self_wav"].chroma_len)


def looped_window(wav: torch.Tensor, sample_rate: int, offset_seconds: float) -> torch.Tensor:
    """The melody [..., T] looped over the 30 s window that starts `offset_seconds` into the output, as
    MusicGen._generate_tokens conditions each window of a generation longer than 30 s."""
    start = int(offset_seconds * sample_rate)
    positions = torch.arange(start, start + int(WINDOW_SECONDS * sample_rate), device=wav.device)
    return wav[..., positions % wav.shape[-1]]


class _FixedShift:
    """Stands in for the `random` module inside the demucs modules that draw from it when separating: apply_model's
    time shift (`randint`) and the transformer's positional shift (`randrange`, always 0 for htdemucs, whose
    `sin_random_shift` is 0, but a draw from the process-wide RNG all the same). Each draw is what a Random seeded
    with _SHIFT_SEED draws first (for the time shift, what `random.seed(0)` gave before), from a Random of its own,
    so no process-wide RNG is read or reseeded and threads never disturb each other. demucs draws one time shift
    per model per separation, and htdemucs is a bag of one model, so that one draw is all a separation needs."""

    @staticmethod
    def randint(low: int, high: int) -> int:
        return random.Random(_SHIFT_SEED).randint(low, high)

    @staticmethod
    def randrange(stop: int) -> int:
        return random.Random(_SHIFT_SEED).randrange(stop)


def fix_separation_shift() -> None:
    """Makes demucs' separation reproducible without touching process-wide RNG state (idempotent; called when a
    separator is loaded, before any melody is analysed)."""
    import demucs.apply
    import demucs.transformer

    demucs.apply.random = demucs.transformer.random = _FixedShift()


Piece = tp.Generator[None, None, torch.Tensor]


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
    bounded pieces: each `next()` does one stretch of the work (a resampling, one segment of the stem separator,
    the chroma), so a caller can run them as separate jobs; the generator's return value is the prefix.

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
    yield
    stems = yield from _separate(separator, mix, conditioner.autocast)
    with conditioner.autocast:
        stems = stems[:, conditioner.stem_indices].sum(1)
        stems = convert_audio(stems, separator.samplerate, conditioner.sample_rate, 1)
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
        offset = _FixedShift.randint(0, max_shift)
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
        with autocast:
            chunk_out = apply_model(model, TensorChunk(mix, offset, segment_length), shifts=0, split=False,
                                    device=device)
        chunk_length = chunk_out.shape[-1]
        out[..., offset:offset + segment_length] += (weight[:chunk_length] * chunk_out).to(mix.device)
        sum_weight[offset:offset + segment_length] += weight[:chunk_length].to(mix.device)
        yield
    out /= sum_weight
    return out
