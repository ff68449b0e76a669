"""What this container serves, told the way the DAW plugins ask: the one loaded checkpoint, its name and its
MusicGen size, with the LoRA adapters served beside it (gary4juce's `/api/models`; `model_name` picks one), and the
model routes gary4juce's Darius tab reads before it generates
(magenta-retry's `/model/config`, `/model/assets/status`, `/model/checkpoints`, `/model/select`).

Pure functions of `Engine.describe()` and `Engine.models()`: one checkpoint is loaded per container and nothing here
can load another, so a request for a different one is refused with a message naming the loaded one and the adapters.
"""

import typing as tp
from pathlib import PurePath

from engine.api import params

# MusicGen's released sizes by LM width: small 1024, medium (and melody) 1536, large 2048
SIZES = (("small", 1024), ("medium", 1536), ("large", 2048))


def checkpoint_name(description: dict) -> str:
    """The loaded checkpoint's name: its directory for audiocraft's release layout (`.../NAME/state_dict.bin`),
    else the fine-tuner's file name without its suffix."""
    path = PurePath(description["checkpoint"])
    return path.parent.name if path.name == "state_dict.bin" else path.stem


def size_of(description: dict) -> str:
    """small / medium / large: the smallest released size at least as wide as the loaded LM."""
    dim = int(description.get("lm_dim", 0))
    for name, width in SIZES:
        if dim <= width:
            return name
    return SIZES[-1][0]


def models_listing(description: dict, adapters: tp.Sequence[str] = ()) -> dict:
    """gary4juce's `/api/models` body: the loaded checkpoint under its size, then each adapter served beside it
    (a fine-tune of that checkpoint, so of its size), as single models the plugin lists and sends back by `path`;
    the other sizes empty."""
    name = checkpoint_name(description)
    models: dict[str, list] = {size: [] for size, _ in SIZES}
    for model in (name, *adapters):
        models[size_of(description)].append({"type": "single", "name": model, "path": model})
    return {"success": True, "models": models}


def chosen_adapter(requested: str, description: dict, adapters: tp.Sequence[str]) -> tp.Optional[str]:
    """The adapter `model_name` picks (engine.params.model_choice), None for the loaded checkpoint (its name, or a
    hub-style `owner/NAME`); ValueError with the message the plugin shows for anything else."""
    name = checkpoint_name(description)
    error = (f"model_name {requested[:80]!r} is not served here: this server has one checkpoint, {name!r} "
             f"({size_of(description)})" + (f", and its adapters {', '.join(adapters)}" if adapters else "")
             + "; pick one in the model list")
    try:
        adapter = params.model_choice(requested, base_names=(name,))
    except ValueError:
        raise ValueError(error) from None
    if adapter is not None and adapter not in adapters:
        raise ValueError(error)
    return adapter


def model_config(description: dict, sessions_open: int, healthy: bool, selected: tp.Optional[str] = None) -> dict:
    """`GET /model/config` as magenta-retry answers it: the loaded checkpoint, or the adapter `/model/select` chose
    for bar mode (no fine-tune steps or steering assets exist for MusicGen checkpoints; the model is loaded and its
    start-up warm-up done once the sidecar serves)."""
    return {"size": size_of(description), "repo": selected or checkpoint_name(description), "revision": None,
            "selected_step": None, "assets_repo": None, "loaded": True, "active_jam": sessions_open > 0,
            "local_checkpoint_dir": None, "mean_loaded": False, "centroids_loaded": False, "centroid_count": None,
            "warmup_done": healthy}


def assets_status() -> dict:
    """`GET /model/assets/status`: MusicGen has no steering assets (mean embedding, centroids)."""
    return {"repo_id": None, "mean_loaded": False, "centroids_loaded": False, "centroid_count": None,
            "embedding_dim": None}


def checkpoints(repo_id: tp.Optional[str], revision: tp.Optional[str]) -> dict:
    """`GET /model/checkpoints`: no numbered training steps can be selected here."""
    return {"repo": repo_id, "revision": revision or "main", "steps": [], "latest": None}


def select(body: tp.Any, description: dict, healthy: bool,
           adapters: tp.Sequence[str] = ()) -> tuple[dict, tp.Optional[str]]:
    """`POST /model/select` and the adapter it picks for bar mode's next sessions (None: the loaded checkpoint).
    Accepted when it asks for what is served: its size, no repo, the loaded checkpoint's name or an adapter's
    (`owner/NAME` too; step "none" is the checkpoint, as magenta-retry's stock base), and step
    "none"/"latest"/absent; refused with a message otherwise. Sessions already playing keep their model, so a
    running jam needs no `stop_active`."""
    if not isinstance(body, dict):
        return {"ok": False, "error": "the body must be a JSON object"}, None
    name, size = checkpoint_name(description), size_of(description)
    dry_run = bool(body.get("dry_run", False))
    wrong = []
    if body.get("size") not in (None, "", size):
        wrong.append(f"size {str(body['size'])[:20]!r}")
    repo, chosen = body.get("repo_id"), None
    if repo not in (None, ""):
        try:
            if not isinstance(repo, str):
                raise ValueError(repo)
            chosen = chosen_adapter(repo, description, adapters)
        except ValueError:
            wrong.append(f"repo_id {str(repo)[:80]!r}")
    step = body.get("step")
    if step not in (None, "", "none", "latest"):
        wrong.append(f"step {str(step)[:20]!r}")
    if wrong:
        served = f", and its adapters {', '.join(adapters)}" if adapters else ""
        return {"ok": False, "dry_run": dry_run, "warmup_done": healthy,
                "error": f"cannot switch to {', '.join(wrong)}: this container serves one checkpoint, {name!r} "
                         f"({size}){served}, and cannot load another"}, None
    if step == "none":
        chosen = None
    return {"ok": True, "dry_run": dry_run, "size": size, "repo": chosen or name, "step": None,
            "warmup_done": healthy}, chosen
