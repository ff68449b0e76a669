"""The /ws/jam session parameters (Magenta RealTime's jam API; WebRTC's offers and updates are the same): one
model, built from the engine's rules (engine.params), and the settings it makes. No protocol state: a broken rule
raises `ParamError` naming the field, which the protocol sends back as its own error."""

import typing as tp

from pydantic import BaseModel, ConfigDict

from engine.api import SamplingParams, SessionSettings
from engine.api import params as rules

PROTOCOL_FRAME_RATE = 25.0
MAX_DECODE_FRAMES = 50
PACES = ("realtime", "asap")


class JamParams(BaseModel):
    """A session's parameters as `start` and `update` name them, with the seed's defaults; an unknown name is
    refused (a typo would otherwise be silently ignored). Styles and weights are the protocol's comma-separated
    strings, read by `_styles`."""

    model_config = ConfigDict(**rules.STRICT, extra="forbid", frozen=True)

    styles: str = "warmup"
    style_weights: tp.Optional[str] = None  # None or "": equal weights
    temperature: rules.Temperature = 1.1
    topk: rules.integer(1, rules.MAX_TOP_K) = 40  # at least the most likely token
    guidance_weight: rules.Guidance = 3.0
    pace: tp.Literal[PACES] = "asap"
    max_decode_frames: rules.integer(1, MAX_DECODE_FRAMES) = MAX_DECODE_FRAMES
    seed: tp.Optional[rules.Seed] = None  # None or -1: the server picks one; start only
    style_ramp_seconds: rules.RampSeconds = 0.0
    # a LoRA adapter served beside the base model, by name (engine.params.model_choice; None or "base": the base
    # model); chosen at start, for the session's life
    model: tp.Optional[rules.ModelName] = None


PARAMS = tuple(JamParams.model_fields)
DEFAULTS = JamParams().model_dump(exclude={"style_weights", "seed"})


def _styles(params: JamParams) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The comma-separated styles and weights, checked by the engine's rules (engine.params.Styles)."""
    styles = tuple(s.strip() for s in params.styles.split(",") if s.strip())
    if not styles:
        raise rules.ParamError("styles is empty: name at least one style")
    rules.checked(rules.Styles, styles, "styles")
    if not params.style_weights:
        return styles, tuple(1.0 for _ in styles)
    try:
        weights = tuple(float(w) for w in params.style_weights.split(","))
    except ValueError:
        raise rules.ParamError(f"style_weights must be comma-separated numbers, got {params.style_weights!r}") from None
    if len(weights) != len(styles):
        raise rules.ParamError(f"style_weights has {len(weights)} values for {len(styles)} styles")
    rules.checked(rules.StyleWeights, weights, "style_weights")
    if sum(weights) <= 0:
        raise rules.ParamError("style_weights are all zero: at least one style needs weight")
    return styles, weights


def parse_params(params: dict) -> JamParams:
    """A parameter dict as the model; ParamError names the first field that breaks its rule."""
    try:
        return rules.validate(JamParams, params)
    except rules.ParamError as exc:
        if exc.unknown:
            raise rules.ParamError(f"unknown parameter(s): {', '.join(sorted(exc.unknown))}") from None
        raise


def settings_from(params: dict) -> tuple[SessionSettings, str]:
    """Validated session settings and pace from a parameter dict (absent ones take the defaults)."""
    model = parse_params(params)
    return settings_of(model), model.pace


def settings_of(model: JamParams) -> SessionSettings:
    """The engine's settings from the protocol's parameters (frames at the protocol's 25 per second)."""
    styles, weights = _styles(model)
    sampling = SamplingParams(temperature=model.temperature, top_k=model.topk, guidance=model.guidance_weight)
    return SessionSettings(styles=styles, weights=weights, params=sampling,
                       chunk_seconds=model.max_decode_frames / PROTOCOL_FRAME_RATE,
                       ramp_seconds=model.style_ramp_seconds, model=model.model)
