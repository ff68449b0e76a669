"""The stem separator musicgen-melody's chroma needs (demucs' htdemucs), from local files, without pickled code.

audiocraft's ChromaStemConditioner gets htdemucs by name through demucs' loader, which downloads from a URL and
unpickles a class with its arguments. Here the separator is read from the checkpoint's torch hub cache with the
allow-listed weights-only `torch.load` used for every checkpoint (engine.loading.safe_load), rebuilt from its plain
kwargs and state dict, and handed to the conditioner while audiocraft's builder constructs it (`providing_separator`).
"""

import contextlib
import inspect
import random
import typing as tp
from fractions import Fraction
from pathlib import Path

import torch

from engine.loading.safe_load import CheckpointError, safe_load

# The one model of demucs' "htdemucs" bag (demucs/remote/htdemucs.yaml), as torch hub names its cached download.
HTDEMUCS_FILE = "955717e8-8726e21a.th"
HTDEMUCS_URL = "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/" + HTDEMUCS_FILE
# demucs separates with a random time shift (python's `random`); a fixed one makes a melody's prefix reproducible.
_SHIFT_SEED = 0


def separator_path() -> Path:
    """Where the separator is read from: the torch hub cache of TORCH_HOME (see engine.loading.hub)."""
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


class FixedShift:
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

    demucs.apply.random = demucs.transformer.random = FixedShift()
