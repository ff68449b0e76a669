"""Lyria RealTime's musicGenerationConfig and weighted prompts, parsed and validated (camelCase or snake_case,
as protobuf JSON allows); controls MusicGen cannot obey exactly become text cues added to every prompt."""

import re
import typing as tp
from dataclasses import dataclass

from engine.api import SamplingParams
from streaming.wire import WireError, bounded_number

CLOSE_INVALID = 1007  # invalid payload: the reason names the field

SCALES = {
    "SCALE_UNSPECIFIED": None, "C_MAJOR_A_MINOR": "C major / A minor", "D_FLAT_MAJOR_B_FLAT_MINOR": "D flat major",
    "D_MAJOR_B_MINOR": "D major / B minor", "E_FLAT_MAJOR_C_MINOR": "E flat major / C minor",
    "E_MAJOR_D_FLAT_MINOR": "E major", "F_MAJOR_D_MINOR": "F major / D minor",
    "G_FLAT_MAJOR_E_FLAT_MINOR": "G flat major", "G_MAJOR_E_MINOR": "G major / E minor",
    "A_FLAT_MAJOR_F_MINOR": "A flat major / F minor", "A_MAJOR_G_FLAT_MINOR": "A major",
    "B_FLAT_MAJOR_G_MINOR": "B flat major / G minor", "B_MAJOR_A_FLAT_MINOR": "B major",
}
MODES = ("MUSIC_GENERATION_MODE_UNSPECIFIED", "QUALITY", "DIVERSITY", "VOCALIZATION")


class LyriaFatal(Exception):
    """Close the connection with `code` and `reason`."""

    def __init__(self, reason: str, code: int = CLOSE_INVALID) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason[:120]  # close reasons must fit in a control frame (123 bytes)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def normalize_keys(value: tp.Any) -> tp.Any:
    """camelCase or snake_case in, snake_case out (recursively for objects)."""
    if isinstance(value, dict):
        return {snake(k): normalize_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize_keys(v) for v in value]
    return value


@dataclass(frozen=True)
class GenerationConfig:
    """musicGenerationConfig with Lyria's defaults; every message carries the whole config."""

    temperature: float = 1.1
    top_k: int = 40
    seed: tp.Optional[int] = None
    guidance: float = 4.0
    bpm: tp.Optional[int] = None
    density: tp.Optional[float] = None
    brightness: tp.Optional[float] = None
    scale: str = "SCALE_UNSPECIFIED"
    mute_bass: bool = False
    mute_drums: bool = False
    only_bass_and_drums: bool = False
    music_generation_mode: str = "QUALITY"

    def sampling(self) -> SamplingParams:
        """Lyria's temperature 0 means deterministic: greedy decoding here."""
        if self.temperature == 0:
            return SamplingParams(temperature=1.0, top_k=1, guidance=self.guidance)
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, guidance=self.guidance)

    def cues(self) -> list[str]:
        """Text added to each prompt for the controls MusicGen has no direct input for."""
        cues = []
        if self.bpm is not None:
            cues.append(f"{self.bpm} bpm")
        if SCALES.get(self.scale):
            cues.append(f"in {SCALES[self.scale]}")
        if self.density is not None:
            cues.append("sparse" if self.density < 0.34 else "dense" if self.density > 0.66 else "")
        if self.brightness is not None:
            cues.append("dark" if self.brightness < 0.34 else "bright" if self.brightness > 0.66 else "")
        if self.only_bass_and_drums:
            cues.append("only bass and drums")
        else:
            cues += ["no bass"] * self.mute_bass + ["no drums"] * self.mute_drums
        if self.music_generation_mode == "VOCALIZATION":
            cues.append("with vocals")
        elif self.music_generation_mode == "DIVERSITY":
            cues.append("experimental")
        return [c for c in cues if c]

    def approximated(self) -> list[str]:
        """Names of the controls set here that are honoured only as text cues."""
        default = GenerationConfig()
        names = ("bpm", "density", "brightness", "scale", "mute_bass", "mute_drums", "only_bass_and_drums",
                 "music_generation_mode")
        return [n for n in names if getattr(self, n) != getattr(default, n)]

    def to_json(self) -> dict:
        out = {"temperature": self.temperature, "topK": self.top_k, "guidance": self.guidance,
               "scale": self.scale, "muteBass": self.mute_bass, "muteDrums": self.mute_drums,
               "onlyBassAndDrums": self.only_bass_and_drums, "musicGenerationMode": self.music_generation_mode}
        for key, name in (("seed", "seed"), ("bpm", "bpm"), ("density", "density"), ("brightness", "brightness")):
            if getattr(self, name) is not None:
                out[key] = getattr(self, name)
        return out


def _number(config: dict, name: str, low: float, high: float, integer: bool = False) -> tp.Optional[float]:
    if name not in config or config[name] is None:
        return None
    try:
        return bounded_number(config[name], f"musicGenerationConfig.{camel(name)}", low, high, integer=integer)
    except WireError as exc:
        raise LyriaFatal(str(exc)) from None


def _bool(config: dict, name: str) -> bool:
    value = config.get(name, False)
    if not isinstance(value, bool):
        raise LyriaFatal(f"musicGenerationConfig.{camel(name)} must be true or false")
    return value


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def parse_config(raw: tp.Any) -> GenerationConfig:
    if not isinstance(raw, dict):
        raise LyriaFatal("musicGenerationConfig must be an object")
    config = normalize_keys(raw)
    known = {f for f in GenerationConfig.__dataclass_fields__}
    unknown = sorted(set(config) - known)
    if unknown:
        raise LyriaFatal(f"musicGenerationConfig has unknown field {camel(unknown[0])}")
    scale = config.get("scale") or "SCALE_UNSPECIFIED"
    if scale not in SCALES:
        raise LyriaFatal(f"musicGenerationConfig.scale {scale!r} is not a Scale value")
    mode = config.get("music_generation_mode") or "QUALITY"
    if mode not in MODES:
        raise LyriaFatal(f"musicGenerationConfig.musicGenerationMode {mode!r} is not a MusicGenerationMode")
    defaults = GenerationConfig()
    temperature = _number(config, "temperature", 0, 3)
    top_k = _number(config, "top_k", 1, 1000, integer=True)
    guidance = _number(config, "guidance", 0, 6)
    seed = _number(config, "seed", 0, 2**31 - 1, integer=True)
    return GenerationConfig(
        temperature=defaults.temperature if temperature is None else temperature,
        top_k=defaults.top_k if top_k is None else int(top_k),
        seed=None if seed is None else int(seed),
        guidance=defaults.guidance if guidance is None else guidance,
        bpm=_number(config, "bpm", 60, 200, integer=True), density=_number(config, "density", 0, 1),
        brightness=_number(config, "brightness", 0, 1), scale=scale, mute_bass=_bool(config, "mute_bass"),
        mute_drums=_bool(config, "mute_drums"), only_bass_and_drums=_bool(config, "only_bass_and_drums"),
        music_generation_mode="QUALITY" if mode == "MUSIC_GENERATION_MODE_UNSPECIFIED" else mode)


@dataclass(frozen=True)
class Prompts:
    texts: tuple[str, ...]
    weights: tuple[float, ...]  # normalised to sum 1

    def to_json(self) -> dict:
        return {"weightedPrompts": [{"text": t, "weight": w} for t, w in zip(self.texts, self.weights, strict=True)]}
