"""A training dataset as the fine-tuner (sakemin/cog-musicgen-fine-tuner) takes it, prepared for the model.

The input is one file: a zip, tar or tar.gz of audio files (each with an optional `<name>.txt` caption beside it),
or a single audio file. Every audio file is decoded (any format ffmpeg reads), resampled and mixed to the model's
rate and channels, optionally stripped of its vocals (the local htdemucs separator), cut into segments of at most
30 s, and leftovers under 5 s are dropped, as the fine-tuner does. Captions come from the `.txt` beside a file,
else `one_same_description` (which, as in the fine-tuner, replaces every caption), and with `auto_labeling` the
tempo and key librosa computes are appended.

Every problem is a `DatasetError` naming what is wrong and, where it is one file, which file; nothing is trained
on a dataset that has one.
"""

import logging
import os
import tarfile
import typing as tp
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.codec.input_audio import AudioInputError, decode
from engine.training.labels import describe_music

logger = logging.getLogger(__name__)

SEGMENT_SECONDS = 30.0  # MusicGen's training window; the fine-tuner cuts files into 30 s chunks
MIN_SEGMENT_SECONDS = 5.0  # the fine-tuner drops chunks of 5 s or less
# The most bytes a dataset may hold, packed or unpacked (an archive that expands past it is refused before it is
# written out). 27 min of 44.1 kHz stereo WAV is ~290 MB; 2 GB leaves room for hours of compressed audio.
MAX_DATASET_BYTES = int(float(os.environ.get("MUSICGEN_TRAIN_MAX_DATASET_MB", "2048")) * 1024 * 1024)
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".mp4")
IGNORED_PARTS = ("__MACOSX", ".DS_Store")  # what macOS zips add; the fine-tuner removes them too


class DatasetError(ValueError):
    """A dataset that cannot be trained on; the message names the problem (and the file, where it is one)."""


@dataclass(frozen=True)
class DatasetOptions:
    """How captions are made and whether vocals are removed (the fine-tuner's inputs of the same names)."""

    one_same_description: tp.Optional[str] = None
    auto_labeling: bool = True
    drop_vocals: bool = False
    max_bytes: int = MAX_DATASET_BYTES


@dataclass
class Segment:
    """<= 30 s of one file at the model's rate and channels, and its caption."""

    source: str  # the file's path inside the dataset
    start_seconds: float
    wav: torch.Tensor  # [channels, samples]
    caption: str


def unpack(dataset: Path, into: Path, max_bytes: int = MAX_DATASET_BYTES) -> list[Path]:
    """The audio files of `dataset` (an archive, unpacked into `into`, or one audio file), sorted by name."""
    dataset = Path(dataset)
    if not dataset.is_file():
        raise DatasetError(f"dataset_path {dataset.name} is not a file")
    size = dataset.stat().st_size
    if size > max_bytes:
        raise DatasetError(f"the dataset is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB "
                           "(MUSICGEN_TRAIN_MAX_DATASET_MB)")
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(dataset):
        _unzip(dataset, into, max_bytes)
    elif _is_tar(dataset):
        _untar(dataset, into, max_bytes)
    elif dataset.suffix.lower() in AUDIO_SUFFIXES:
        return [dataset]
    else:
        raise DatasetError(f"dataset_path {dataset.name} is not a zip, tar or tar.gz archive nor an audio file "
                           f"({', '.join(AUDIO_SUFFIXES)})")
    files = sorted(path for path in into.rglob("*") if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES
                   and not any(part in IGNORED_PARTS or part.startswith("._") for part in path.parts))
    if not files:
        raise DatasetError(f"{dataset.name} holds no audio files (looked for {', '.join(AUDIO_SUFFIXES)})")
    return files


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _check_total(total: int, max_bytes: int, name: str) -> None:
    if total > max_bytes:
        raise DatasetError(f"{name} unpacks to more than {max_bytes / 2**20:.0f} MB, the dataset limit "
                           "(MUSICGEN_TRAIN_MAX_DATASET_MB)")


def _unzip(archive: Path, into: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            _check_total(sum(m.file_size for m in members), max_bytes, archive.name)
            for member in members:
                target = (into / member.filename).resolve()
                if not target.is_relative_to(into.resolve()):
                    raise DatasetError(f"{archive.name}: {member.filename} points outside the archive")
            zf.extractall(into)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{archive.name} is a damaged zip archive: {exc}") from None


def _untar(archive: Path, into: Path, max_bytes: int) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            _check_total(sum(m.size for m in members), max_bytes, archive.name)
            tar.extractall(into, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"{archive.name} is a damaged tar archive: {exc}") from None


def caption_of(audio: Path) -> tp.Optional[str]:
    """The first line of the `<name>.txt` beside an audio file (as the fine-tuner reads it), or None."""
    text = audio.with_suffix(".txt")
    if not text.is_file():
        return None
    lines = text.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines[0].strip() if lines and lines[0].strip() else None


def check_captions(files: list[Path], options: DatasetOptions, root: Path) -> None:
    """Every file needs a caption unless one description or auto-labelling gives it one."""
    if options.one_same_description or options.auto_labeling:
        return
    missing = [str(_relative(path, root)) for path in files if caption_of(path) is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"no caption for {shown}: put a <name>.txt beside each audio file, or set "
                           "one_same_description, or turn on auto_labeling")


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return Path(path.name)


def load_segments(files: list[Path], root: Path, sample_rate: int, channels: int, options: DatasetOptions,
                  separator: tp.Any = None) -> list[Segment]:
    """Decodes, converts and cuts every file; `separator` (htdemucs) removes the vocals when given."""
    from audiocraft.data.audio_utils import convert_audio

    check_captions(files, options, root)
    segments: list[Segment] = []
    for path in files:
        name = str(_relative(path, root))
        try:
            wav, rate = decode(path)
        except AudioInputError as exc:
            raise DatasetError(f"{name} could not be read as audio: {exc}") from None
        seconds = wav.shape[-1] / rate
        if seconds < MIN_SEGMENT_SECONDS:
            raise DatasetError(f"{name} is {seconds:.1f} s long; every file must be at least "
                               f"{MIN_SEGMENT_SECONDS:.0f} s")
        if separator is not None:
            wav, rate = remove_vocals(separator, wav, rate)
        wav = convert_audio(wav, rate, sample_rate, channels)
        base = options.one_same_description or caption_of(path) or ""
        step = int(SEGMENT_SECONDS * sample_rate)
        for start in range(0, wav.shape[-1], step):
            piece = wav[:, start:start + step]
            if piece.shape[-1] <= MIN_SEGMENT_SECONDS * sample_rate:
                logger.info("dropping the last %.1f s of %s (under %.0f s)", piece.shape[-1] / sample_rate, name,
                            MIN_SEGMENT_SECONDS)
                continue
            caption = base
            if options.auto_labeling:
                caption = ", ".join(part for part in (base, describe_music(piece, sample_rate)) if part)
            segments.append(Segment(name, start / sample_rate, piece.contiguous(), caption))
    logger.info("dataset: %d files, %d segments, %.1f s of audio", len(files), len(segments),
                sum(s.wav.shape[-1] for s in segments) / sample_rate)
    return segments


@torch.no_grad()
def remove_vocals(separator: tp.Any, wav: torch.Tensor, rate: int) -> tuple[torch.Tensor, int]:
    """Drums + bass + other of htdemucs' separation (the fine-tuner's drop_vocals), at the separator's rate."""
    from audiocraft.data.audio_utils import convert_audio
    from demucs.apply import apply_model

    device = next(separator.parameters()).device
    mix = convert_audio(wav, rate, separator.samplerate, separator.audio_channels).to(device)
    stems = apply_model(separator, mix[None], device=device)[0]  # [sources, channels, samples]
    kept = [i for i, source in enumerate(separator.sources) if source != "vocals"]
    return stems[kept].sum(0).cpu(), int(separator.samplerate)
