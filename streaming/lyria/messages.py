"""Lyria RealTime's messages as pydantic models, field by field those of Google's SDK (google-genai `types.py`:
LiveMusicGenerationConfig, LiveMusicClientContent, WeightedPrompt, Scale, MusicGenerationMode), with its ranges.

Names are accepted in camelCase (the wire's) and snake_case, as protobuf JSON allows, and a null is the field's
default (protobuf JSON again). musicGenerationConfig refuses unknown fields (every message carries the whole
config: a misspelt one would silently fall back to its default); the prompts ignore them, as they always have.
Controls MusicGen cannot obey exactly become text cues added to every prompt, read from the tables below: each
enum is its table's keys.
"""

import enum
import typing as tp
from dataclasses import dataclass

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from engine.api import SamplingParams
from engine.api import params as rules

CLOSE_INVALID = 1007  # invalid payload: the reason names the field
MIN_INT32 = -rules.MAX_INT32 - 1  # Lyria's seed is an int32: every one of them is a seed here

# Scale -> the cue added to the prompts (None: none)
SCALES: dict[str, tp.Optional[str]] = {
    "SCALE_UNSPECIFIED": None, "C_MAJOR_A_MINOR": "C major / A minor", "D_FLAT_MAJOR_B_FLAT_MINOR": "D flat major",
    "D_MAJOR_B_MINOR": "D major / B minor", "E_FLAT_MAJOR_C_MINOR": "E flat major / C minor",
    "E_MAJOR_D_FLAT_MINOR": "E major", "F_MAJOR_D_MINOR": "F major / D minor",
    "G_FLAT_MAJOR_E_FLAT_MINOR": "G flat major", "G_MAJOR_E_MINOR": "G major / E minor",
    "A_FLAT_MAJOR_F_MINOR": "A flat major / F minor", "A_MAJOR_G_FLAT_MINOR": "A major",
    "B_FLAT_MAJOR_G_MINOR": "B flat major / G minor", "B_MAJOR_A_FLAT_MINOR": "B major",
}
# MusicGenerationMode -> its cue (UNSPECIFIED is read as Lyria's default, QUALITY)
MODES: dict[str, tp.Optional[str]] = {
    "MUSIC_GENERATION_MODE_UNSPECIFIED": None, "QUALITY": None, "DIVERSITY": "experimental",
    "VOCALIZATION": "with vocals",
}
Scale = enum.StrEnum("Scale", {name: name for name in SCALES})
MusicGenerationMode = enum.StrEnum("MusicGenerationMode", {name: name for name in MODES})
QUALITY = MusicGenerationMode.QUALITY


class LyriaFatal(Exception):
    """Close the connection with `code` and `reason`."""

    def __init__(self, reason: str, code: int = CLOSE_INVALID) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason[:120]  # close reasons must fit in a control frame (123 bytes)


class LyriaModel(BaseModel):
    """What Lyria's messages share: strict values, camelCase or snake_case names, null as the default."""

    model_config = ConfigDict(**rules.STRICT, frozen=True, alias_generator=to_camel, validate_by_alias=True,
                              serialize_by_alias=True)

    @model_validator(mode="before")
    @classmethod
    def _wire_names(cls, data: tp.Any) -> tp.Any:
        """A null is dropped (the default); a snake_case name is read as the wire's camelCase, so that an error
        names the field as the wire does (musicGenerationConfig.topK, whichever way it was sent)."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {(fields[k].alias if k in fields else k): v for k, v in data.items() if v is not None}


def _default_mode(mode: MusicGenerationMode) -> MusicGenerationMode:
    return QUALITY if mode is MusicGenerationMode.MUSIC_GENERATION_MODE_UNSPECIFIED else mode


class GenerationConfig(LyriaModel):
    """musicGenerationConfig with Lyria's defaults and ranges; every message carries the whole config."""

    model_config = ConfigDict(extra="forbid")

    temperature: rules.number(0.0, 3.0) = 1.1
    top_k: rules.integer(1, 1000) = 40
    seed: tp.Optional[rules.integer(MIN_INT32, rules.MAX_INT32)] = None  # None: the server picks one
    guidance: rules.number(0.0, 6.0) = 4.0
    bpm: tp.Optional[rules.integer(60, 200)] = None
    density: tp.Optional[rules.number(0.0, 1.0)] = None
    brightness: tp.Optional[rules.number(0.0, 1.0)] = None
    scale: tp.Annotated[Scale, Field(strict=False)] = Scale.SCALE_UNSPECIFIED  # the wire's names for enum values
    mute_bass: bool = False
    mute_drums: bool = False
    only_bass_and_drums: bool = False
    music_generation_mode: tp.Annotated[MusicGenerationMode, Field(strict=False), AfterValidator(_default_mode)] = \
        QUALITY

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
        if SCALES[self.scale]:
            cues.append(f"in {SCALES[self.scale]}")
        if self.density is not None:
            cues.append("sparse" if self.density < 0.34 else "dense" if self.density > 0.66 else "")
        if self.brightness is not None:
            cues.append("dark" if self.brightness < 0.34 else "bright" if self.brightness > 0.66 else "")
        if self.only_bass_and_drums:
            cues.append("only bass and drums")
        else:
            cues += ["no bass"] * self.mute_bass + ["no drums"] * self.mute_drums
        cues.append(MODES[self.music_generation_mode] or "")
        return [c for c in cues if c]

    def approximated(self) -> list[str]:
        """camelCase names of the controls set here that are honoured only as text cues."""
        default = GenerationConfig()
        names = ("bpm", "density", "brightness", "scale", "mute_bass", "mute_drums", "only_bass_and_drums",
                 "music_generation_mode")
        return [to_camel(n) for n in names if getattr(self, n) != getattr(default, n)]

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)

    def with_seed(self, seed: tp.Optional[int]) -> "GenerationConfig":
        """This config with another seed: what a chunk reports when the seed in force is not the one last sent."""
        return self if seed == self.seed else self.model_copy(update={"seed": seed})


def engine_seed(seed: tp.Optional[int]) -> tp.Optional[int]:
    """A Lyria int32 seed as the engine's unsigned 32-bit one, one to one (two's complement: -1 is 2^32 - 1);
    None stays None (the server picks)."""
    return None if seed is None else seed % (rules.MAX_SEED + 1)


class WeightedPrompt(LyriaModel):
    text: rules.StyleText = ""  # an empty one is filtered out, as Lyria does
    weight: rules.StyleWeight = 1.0  # the weights are normalised to sum 1


class ClientContent(LyriaModel):
    weighted_prompts: list[WeightedPrompt]


def parse(model: type[LyriaModel], raw: tp.Any, name: str) -> tp.Any:
    """`raw` as `model`; LyriaFatal names the field (camelCase, under `name`) and what is wrong with it."""
    if not isinstance(raw, dict):
        raise LyriaFatal(f"{name} must be an object")
    try:
        return rules.validate(model, raw, prefix=name)
    except rules.ParamError as exc:
        raise LyriaFatal(f"{name} has unknown field {exc.unknown[0]}" if exc.unknown else str(exc)) from None


def parse_config(raw: tp.Any) -> GenerationConfig:
    return parse(GenerationConfig, raw, "musicGenerationConfig")


@dataclass(frozen=True)
class Prompts:
    texts: tuple[str, ...]
    weights: tuple[float, ...]  # normalised to sum 1

    def to_json(self) -> dict:
        return {"weightedPrompts": [{"text": t, "weight": w} for t, w in zip(self.texts, self.weights, strict=True)]}
