"""Every parameter rule and limit, written once: the field types every transport builds its messages from, the
engine's own models of them (sampling, a batch request), and the one way a broken rule becomes a message.

The rules are pydantic's (strict: no "3" for 3 and no true for 1; `allow_inf_nan=False`: JSON's 1e400 is
refused, not read as infinity); bounds are `Field`s on `Annotated` types, so that predict.py's Cog schema, the
engine's models and each protocol's message models read the same numbers. A protocol narrows a type where its
spec does (jam's topk starts at 1, Lyria's temperature stops at 3) by annotating it again. `describe` turns a
`ValidationError` into one sentence naming the field as the client spelled it, the bounds and what was sent, in
the words the protocols have always used ("temperature must be within [0, 10], got 11"), so no client ever sees
pydantic's own dump.
"""

import functools
import typing as tp
from pathlib import Path

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from engine.codec.input_audio import NORMALIZATION_STRATEGIES, OUTPUT_FORMATS
from engine.config import MAX_PROMPT_CHARS, MAX_STYLES

# the ranges in which every value gives finite audio
MAX_TEMPERATURE = 10.0
MAX_GUIDANCE = 20.0
MAX_TOP_K = 2048  # the codebooks' size (the Replicate schema's bound; the streaming protocols' too)
MAX_SEED = 2**32 - 1  # a torch seed; -1 (or none) asks for a random one
MAX_INT32 = 2**31 - 1  # the seeds of Lyria and of the gary plugins are 32-bit signed integers
MAX_DURATION_SECONDS = 300  # a batch prediction, by windowed extension beyond 30 s
MAX_RAMP_SECONDS = 60.0  # a glide of the styles (engine.work.steering)
MAX_CHUNK_SECONDS = 10.0  # a jam session's chunk
MAX_EXACT_INTEGER = 2**53  # beyond it an integer has no exact float; no parameter needs more

# what every model here and in the protocols shares; each adds `extra` as its spec says, and `frozen` where the
# model is a value
STRICT = ConfigDict(strict=True, allow_inf_nan=False)


def _whole(value: tp.Any) -> tp.Any:
    """JSON has one kind of number: 40.0 is the integer 40 (a float with a fraction stays a float, and is
    refused where an integer is wanted)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = tp.Annotated[int, BeforeValidator(_whole)]


def integer(low: tp.Optional[int] = None, high: tp.Optional[int] = None) -> tp.Any:
    """An integer within [low, high] (either end open when None)."""
    return tp.Annotated[Integer, Field(ge=low, le=high)]


def number(low: tp.Optional[float] = None, high: tp.Optional[float] = None, low_open: bool = False) -> tp.Any:
    """A finite number within [low, high] (or (low, high] when `low_open`)."""
    return tp.Annotated[float, Field(gt=low) if low_open else Field(ge=low), Field(le=high)]


# -- the shared fields ----------------------------------------------------------------------------------------
Temperature = number(0.0, MAX_TEMPERATURE)  # 0 decodes greedily
TopK = integer(0)  # 0: no top-k; sampling clips it to the codebook's size
TopP = number(0.0, 1.0)  # 0: no top-p
Guidance = number(0.0, MAX_GUIDANCE)
Seed = integer(-1, MAX_SEED)  # -1: a random seed
StyleText = tp.Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
StyleWeight = number(0.0)


def _named(style: str) -> str:
    if not style.strip():
        raise ValueError("styles must name at least one non-empty style")
    return style


# a session's styles, each a decoder row (engine.config.MAX_STYLES); a list is read as a tuple
Styles = tp.Annotated[tuple[tp.Annotated[StyleText, AfterValidator(_named)], ...],
                      Field(min_length=1, max_length=MAX_STYLES, strict=False)]
StyleWeights = tp.Annotated[tuple[StyleWeight, ...], Field(strict=False)]
RampSeconds = number(0.0, MAX_RAMP_SECONDS)
ChunkSeconds = number(0.0, MAX_CHUNK_SECONDS, low_open=True)
Duration = integer(1, MAX_DURATION_SECONDS)
ContinuationStart = integer(0)  # seconds into input_audio
ContinuationEnd = integer(-1)  # -1 (or none): the end of the clip
NormalizationStrategy = tp.Literal[NORMALIZATION_STRATEGIES]
OutputFormat = tp.Literal[OUTPUT_FORMATS]


# -- which model: the base checkpoint or a LoRA adapter served beside it (engine.runtime.adapters) ----------------
BASE_MODEL = "base"
ModelName = tp.Annotated[str, Field(max_length=200)]  # what a client may send; model_choice reads it
MAX_MODEL_NAME = 64
_MODEL_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def model_choice(model: tp.Optional[str], base_names: tp.Iterable[str] = ()) -> tp.Optional[str]:
    """The rule of every protocol's model parameter: the adapter it names, or None for the base model. None, "",
    "base" and `base_names` (a protocol's names of the loaded checkpoint) mean the base; a "models/" or "owner/"
    prefix is dropped (Lyria's `models/NAME`, a hub path); what remains is an adapter file's name without
    `.safetensors`: letters, digits, '.', '_' and '-', at most 64. ParamError says what is wrong."""
    if model is None:
        return None
    if not isinstance(model, str):
        raise ParamError(f"model must be a string, got {_shown(model)}")
    name = model.strip().rsplit("/", 1)[-1].removesuffix(".safetensors")
    if name in ("", BASE_MODEL) or name in set(base_names) or model.strip() in set(base_names):
        return None
    if len(name) > MAX_MODEL_NAME or not set(name) <= _MODEL_NAME_CHARS or name.startswith("."):
        raise ParamError(f"model {_shown(model)} is not a model name (letters, digits, '.', '_' and '-', at most "
                         f"{MAX_MODEL_NAME})")
    return name


class ParamError(ValueError):
    """Fields that break their rules: the text names the first; `unknown` lists the names a model with
    `extra="forbid"` refused, for the protocol's own wording of that."""

    def __init__(self, text: str, unknown: tp.Sequence[str] = ()) -> None:
        super().__init__(text)
        self.unknown = list(unknown)


class RequestError(ValueError):
    """A request the model cannot serve; the message names the input to change."""


# -- the engine's models ----------------------------------------------------------------------------------------
Model = tp.TypeVar("Model", bound=type)
ModelT = tp.TypeVar("ModelT", bound=BaseModel)


def answers_with(error: type[ValueError]) -> tp.Callable[[Model], Model]:
    """A pydantic dataclass whose construction raises `error`, `describe`d (the field named in one sentence),
    in place of pydantic's own report: its text may reach a client."""

    def wrap(cls: Model) -> Model:
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args: tp.Any, **kwargs: tp.Any) -> None:
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise error(describe(exc, cls)) from None

        cls.__init__ = __init__
        return cls

    return wrap


@answers_with(ParamError)
@dataclass(frozen=True, config=STRICT)
class SamplingParams:
    """How a stream samples; validated on construction, so every one that exists gives finite audio."""

    temperature: Temperature = 1.0
    top_k: TopK = 250
    top_p: TopP = 0.0
    guidance: Guidance = 3.0


@answers_with(RequestError)
@dataclass(frozen=True, config=STRICT)
class BatchRequest:
    """The Replicate inputs as plain values (no Cog types, so the engine does not depend on Cog), validated on
    construction by the rules predict.py's schema shows (RequestError names the input); engine.work.batch.prepare
    checks what needs the model."""

    prompt: tp.Optional[StyleText] = None
    input_audio: tp.Annotated[tp.Optional[Path], Field(strict=False)] = None  # a path, as str or Path
    duration: Duration = 8
    continuation: bool = False
    continuation_start: ContinuationStart = 0
    continuation_end: tp.Optional[ContinuationEnd] = None
    multi_band_diffusion: bool = False
    normalization_strategy: NormalizationStrategy = "loudness"
    top_k: TopK = 250
    top_p: TopP = 0.0
    temperature: Temperature = 1.0
    classifier_free_guidance: Guidance = 3.0
    output_format: OutputFormat = "wav"
    seed: tp.Optional[Seed] = None
    model: tp.Optional[ModelName] = None  # a LoRA adapter's name (model_choice)

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              guidance=self.classifier_free_guidance)


def validate(model: type[ModelT], raw: tp.Any, prefix: str = "") -> ModelT:
    """`raw` as `model`; ParamError `describe`s what is wrong (see `describe` for `prefix`)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ParamError(describe(exc, model, prefix), unknown_fields(exc)) from None


# -- one value checked alone --------------------------------------------------------------------------------------
_adapters: dict[int, tuple[tp.Any, TypeAdapter]] = {}


def checked(kind: tp.Any, value: tp.Any, name: str) -> tp.Any:
    """`value` validated as `kind` (one of the types above); ParamError `describe`s what is wrong, naming `name`."""
    if id(kind) not in _adapters:  # the kinds are module constants: one adapter each, kept with its kind
        _adapters[id(kind)] = (kind, TypeAdapter(kind, config=STRICT))
    try:
        return _adapters[id(kind)][1].validate_python(value)
    except ValidationError as exc:
        raise ParamError(describe(exc, kind, prefix=name)) from None


def limits(kind: tp.Any, cast: tp.Callable[[tp.Any], tp.Any] = lambda bound: bound) -> dict[str, tp.Any]:
    """`kind`'s bounds as keyword arguments (ge, gt, le) for a schema that states them itself (Cog's `Input`)."""
    found: dict[str, tp.Any] = {}
    for c in FieldInfo.from_annotation(kind).metadata:
        for key in ("ge", "gt", "le"):
            if getattr(c, key, None) is not None:
                found[key] = cast(getattr(c, key))
    return found


# -- errors as sentences ------------------------------------------------------------------------------------------
def unknown_fields(error: ValidationError) -> list[str]:
    """The names a model with `extra="forbid"` refused (top level), for the protocol's own wording."""
    return [str(e["loc"][-1]) for e in error.errors() if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]


def describe(error: ValidationError, root: tp.Any, prefix: str = "") -> str:
    """The first of `error`'s problems as one sentence naming the field: `prefix` and the path into `root` (the
    model or type validated), each field by the name the client gave it (the field's own or an alias of it)."""
    detail = error.errors()[0]
    name, info = _locate(root, detail["loc"])
    name = prefix + name if name.startswith("[") else ".".join(p for p in (prefix, name) if p)
    return _sentence(detail, name or "value", info)


def _locate(root: tp.Any, loc: tuple) -> tuple[str, tp.Optional[FieldInfo]]:
    """The path as a client reads it ("weightedPrompts[0].weight") and the field it ends at (None: unknown)."""
    name, annotation = "", root
    info: tp.Optional[FieldInfo] = None if _fields(root) else FieldInfo.from_annotation(root)
    for part in loc:
        annotation = _inner(annotation)
        if isinstance(part, int):
            name += f"[{part}]"
            args = tp.get_args(annotation)
            annotation = args[0] if args else tp.Any
            info = FieldInfo.from_annotation(annotation)
            continue
        info = next((f for k, f in (_fields(annotation) or {}).items() if part in _spellings(k, f)), None)
        name = f"{name}.{part}" if name else str(part)
        annotation = info.annotation if info is not None else tp.Any
    return name, info


def _spellings(key: str, info: FieldInfo) -> set:
    """The names a model reads the field by: its own, its alias and its validation aliases (AliasChoices')."""
    aliases = getattr(info.validation_alias, "choices", [info.validation_alias])
    return {key, info.alias, *(a for a in aliases if isinstance(a, str))}


def _fields(annotation: tp.Any) -> tp.Optional[dict[str, FieldInfo]]:
    return getattr(annotation, "__pydantic_fields__", None) if isinstance(annotation, type) else None


def _inner(annotation: tp.Any) -> tp.Any:
    """Optional[X] -> X, Annotated[X, ...] -> X."""
    while True:
        args = [a for a in tp.get_args(annotation) if a is not type(None)]
        if tp.get_origin(annotation) is tp.Annotated:
            annotation = args[0]
        elif tp.get_origin(annotation) is tp.Union and len(args) == 1:
            annotation = args[0]
        else:
            return annotation


def _constraints(info: tp.Optional[FieldInfo]) -> list:
    """A field's bounds, also those inside its Optional[...]."""
    if info is None:
        return []
    found = list(info.metadata)
    annotation = info.annotation
    for arg in tp.get_args(annotation) if tp.get_origin(annotation) is tp.Union else ():
        if tp.get_origin(arg) is tp.Annotated:
            found += FieldInfo.from_annotation(arg).metadata
    return found


def _g(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _bounds(info: tp.Optional[FieldInfo]) -> tp.Optional[str]:
    """"within [0, 10]", or one end alone with the kind ("a number >= 0")."""
    low = high = None
    low_open = False
    for c in _constraints(info):  # annotated_types' Ge, Gt and Le, as pydantic keeps them
        if getattr(c, "ge", None) is not None:
            low = c.ge
        elif getattr(c, "gt", None) is not None:
            low, low_open = c.gt, True
        elif getattr(c, "le", None) is not None:
            high = c.le
    if low is None and high is None:
        return None
    kind = "an integer" if _inner(info.annotation) is int else "a number"
    if high is None:
        return f"{kind} {'>' if low_open else '>='} {_g(low)}"
    if low is None:
        return f"{kind} <= {_g(high)}"
    return f"within {'(' if low_open else '['}{_g(low)}, {_g(high)}]"


def _shown(value: tp.Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT_INTEGER:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_INTEGER = "{name} must be an integer, got {shown}"
_NUMBER = "{name} must be a number, got {shown}"
_OBJECT = "{name} must be an object"
_SENTENCES = {  # pydantic's error type -> the sentence a client reads
    "int_type": _INTEGER, "int_from_float": _INTEGER, "int_parsing": _INTEGER,
    "float_type": _NUMBER, "float_parsing": _NUMBER, "finite_number": _NUMBER,
    "bool_type": "{name} must be true or false", "string_type": "{name} must be a string",
    "string_too_long": "{name} is longer than {max_length} characters",
    "literal_error": "{name} must be one of {expected}, got {shown}",
    "dict_type": _OBJECT, "model_type": _OBJECT, "dataclass_type": _OBJECT, "model_attributes_type": _OBJECT,
    "list_type": "{name} must be a list", "tuple_type": "{name} must be a list",
    "too_long": "{name}: {actual_length} given; at most {max_length}",
    "too_short": "{name}: at least {min_length} needed",
    "missing": "{name} is required", "extra_forbidden": "unknown field {name}",
}
_RANGES = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _sentence(detail: dict, name: str, info: tp.Optional[FieldInfo]) -> str:
    kind, value, ctx = detail["type"], detail.get("input"), detail.get("ctx") or {}
    huge = isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT_INTEGER
    bounds = _bounds(info)
    if kind in _RANGES or (huge and bounds):
        return f"{name} must be {bounds}, got {_shown(value) if huge else value}"
    if kind == "enum":
        return f"{name} {_shown(value)} is not a {_inner(info.annotation).__name__ if info else 'known'} value"
    if kind == "value_error":  # a validator's own sentence, which names its field itself
        return str(ctx.get("error", detail["msg"]))
    if kind in _SENTENCES:
        return _SENTENCES[kind].format(name=name, shown=_shown(value), **ctx)
    return f"{name}: {detail['msg']}"
