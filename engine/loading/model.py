"""The loaded MusicGen: LM, codec, optional MultiBand Diffusion, and the facts callers need about them."""

import json
import logging
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.loading.checkpoint import CheckpointFiles, load_codec, load_lm, load_mbd, resolve
from engine.loading.hub import configure_offline_caches

logger = logging.getLogger(__name__)

MAX_WINDOW_SECONDS = 30.0  # MusicGen's positional embeddings are trained on 30 s windows
EXTEND_STRIDE_SECONDS = 18.0  # audiocraft's default stride for windowed extension


@dataclass
class LoadedModel:
    """Everything the engine owns about the model; built once per process by `load_model`."""

    musicgen: tp.Any  # audiocraft.models.MusicGen
    mbd: tp.Any  # audiocraft MultiBandDiffusion or None
    files: CheckpointFiles
    device: str

    @property
    def sample_rate(self) -> int:
        return int(self.musicgen.sample_rate)

    @property
    def frame_rate(self) -> float:
        return float(self.musicgen.frame_rate)

    @property
    def channels(self) -> int:
        return int(self.musicgen.audio_channels)

    @property
    def supports_melody(self) -> bool:
        return "self_wav" in self.musicgen.lm.condition_provider.conditioners

    @property
    def is_demo(self) -> bool:
        return (self.files.directory / "demo.json").is_file()

    @property
    def name(self) -> str:
        """The checkpoint's public name: its directory for audiocraft's release layout (`.../NAME/state_dict.bin`),
        else the fine-tuner's file name without its suffix. Never the path: what describe() says is served to
        anyone who can reach /health or a session's status, and a filesystem path tells them about the host."""
        lm = self.files.lm
        return lm.parent.name if lm.name == "state_dict.bin" else lm.stem

    def describe(self) -> dict:
        """`lm_dim` and `lm_layers` say which MusicGen size this is (small 1024 x 24, medium 1536 x 48, large
        2048 x 48), for clients that list checkpoints by size; `checkpoint` is its name (`name`), not its path."""
        lm = self.musicgen.lm
        return {"checkpoint": self.name, "lm_dim": int(lm.dim), "lm_layers": len(lm.transformer.layers),
                "device": self.device, "sample_rate": self.sample_rate,
                "frame_rate": self.frame_rate, "channels": self.channels, "melody": self.supports_melody,
                "mbd": self.mbd is not None, "demo_noise": self.is_demo}


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(source: tp.Union[str, Path, None] = None, device: tp.Optional[str] = None) -> LoadedModel:
    """Loads a checkpoint (path, URL, or the default one) with every hub lookup served from local files."""
    files = resolve(source)
    configure_offline_caches(files.directory)
    device = device or pick_device()
    # audiocraft imports xformers, whose prebuilt extensions do not match this torch; attention runs on torch's
    # SDPA, so its "can't load C++/CUDA extensions" warning is noise.
    logging.getLogger("xformers").setLevel(logging.ERROR)
    from audiocraft.models import MusicGen

    lm = load_lm(files.lm, device)
    if files.adapter is not None:
        from engine.lm.lora import load_adapter, merge

        merge(load_adapter(files.adapter, device), lm)  # AdapterError names both fingerprints when it does not fit
        logger.info("merged LoRA adapter %s into %s", files.adapter.name, files.lm)
    codec = load_codec(files.codec, device)
    if "self_wav" in lm.condition_provider.conditioners:
        chroma = lm.condition_provider.conditioners["self_wav"]
        chroma.match_len_on_eval = True
        chroma._use_masking = False
    musicgen = MusicGen(files.lm.parent.name, codec, lm, max_duration=MAX_WINDOW_SECONDS)
    mbd = load_mbd(files.mbd, codec, device) if files.mbd else None
    model = LoadedModel(musicgen=musicgen, mbd=mbd, files=files, device=device)
    logger.info("loaded model %s", model.describe())
    if model.is_demo:
        demo = json.loads((files.directory / "demo.json").read_text())
        logger.warning("%s (built by weights/demo.py with seed %s)", demo["notice"], demo["seed"])
    return model
