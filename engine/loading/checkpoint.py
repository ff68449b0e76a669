"""Loads MusicGen checkpoints safely: tensors and plain config only, never arbitrary pickled code.

Accepted layouts:
- audiocraft's release layout: a directory with ``state_dict.bin`` (LM) and ``compression_state_dict.bin`` (codec);
- the fine-tuner's single torch file ``{'xp.cfg': ..., 'model': lm_state}``: LM weights only; the codec comes from a
  ``compression_state_dict.bin`` beside the file, else from the directory of the default checkpoint.
- a LoRA adapter file (``*.safetensors``, engine.lm.lora's format, what `method: lora` training writes): the
  default checkpoint with the adapter merged in; an adapter trained on other base weights is refused, with both
  fingerprints.
A ``mbd_musicgen_32khz.th`` beside the LM enables MultiBand Diffusion decoding.
"""

import logging
import shutil
import tarfile
import tempfile
import typing as tp
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.loading.paths import default_checkpoint
from engine.loading.safe_load import CheckpointError, safe_load
from engine.loading.separator import load_separator, needs_separator, providing_separator

logger = logging.getLogger(__name__)

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
MBD_FILE = "mbd_musicgen_32khz.th"
ADAPTER_SUFFIX = ".safetensors"  # engine.lm.lora.SUFFIX


def _config(pkg: dict, path: Path):
    from omegaconf import DictConfig, OmegaConf

    raw = pkg.get("xp.cfg")
    if isinstance(raw, str):
        return OmegaConf.create(raw)
    if isinstance(raw, (dict, DictConfig)):
        return OmegaConf.create(OmegaConf.to_container(raw) if isinstance(raw, DictConfig) else raw)
    raise CheckpointError(f"{path} has no 'xp.cfg' training config, so the model cannot be rebuilt")


@dataclass(frozen=True)
class CheckpointFiles:
    """Where the parts of one checkpoint are; `directory` also holds its offline hub caches."""

    directory: Path
    lm: Path
    codec: Path
    mbd: tp.Optional[Path]
    adapter: tp.Optional[Path] = None  # a LoRA adapter merged into the LM once it is loaded



def resolve(source: tp.Union[str, Path, None]) -> CheckpointFiles:
    """Turns a path, URL or None (the default checkpoint) into the files to load."""
    if source is None or str(source) == "":
        path = default_checkpoint()
    elif str(source).startswith(("http://", "https://")):
        path = _download(str(source))
    else:
        path = Path(source)
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist; build the demo with `python -m weights.demo` "
                              "or fetch one with `python -m weights.fetch`")
    if path.is_file() and path.suffix == ADAPTER_SUFFIX:
        base = resolve(None)
        return CheckpointFiles(base.directory, base.lm, base.codec, base.mbd, adapter=path)
    if path.is_file() and tarfile.is_tarfile(path):
        path = _extract(path)
    if path.is_dir():
        lm = path / LM_FILE
        if not lm.is_file():
            raise CheckpointError(f"{path} has no {LM_FILE}; expected audiocraft's release layout "
                                  f"({LM_FILE} + {CODEC_FILE})")
        directory = path
    else:
        lm, directory = path, path.parent
    codec = directory / CODEC_FILE
    if not codec.is_file():
        codec = default_checkpoint() / CODEC_FILE
        if not codec.is_file():
            raise CheckpointError(f"No {CODEC_FILE} beside {lm} nor in the default checkpoint: "
                                  "the LM needs the codec it was trained with")
        directory = default_checkpoint()
    mbd = lm.parent / MBD_FILE
    return CheckpointFiles(directory=directory, lm=lm, codec=codec, mbd=mbd if mbd.is_file() else None)


def _download(url: str) -> Path:
    target = Path(tempfile.mkdtemp(prefix="musicgen-weights-")) / (Path(url.split("?")[0]).name or "weights")
    logger.info("downloading weights from %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        raise CheckpointError(f"Could not download weights from {url}: {exc}") from None
    return target


def _extract(archive: Path) -> Path:
    out = Path(tempfile.mkdtemp(prefix="musicgen-weights-"))
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    entries = list(out.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else out


def lm_dtype(device: str) -> str:
    """The dtype the LM is built in: float32 on a CPU, float16 elsewhere, as audiocraft's loaders build it (and its
    generate then runs under float16 autocast). On CUDA the weights are thus stored once, in half precision: the
    step decoder's half-precision copy of each weight is the same tensor (`.to` of an equal dtype is a no-op)."""
    return "float32" if str(device).startswith("cpu") else "float16"


def prepare_lm_config(cfg, device: str) -> None:
    """Sets the device and dtype the LM is built with (engine.loading.checkpoint.lm_dtype); the benchmarks' random
    models are built through this too."""
    cfg.device = device
    cfg.dtype = lm_dtype(device)


def store_in_compute_dtype(lm, device: str) -> None:
    """Off the CPU, the LM's token embeddings, output norm and heads in the dtype its transformer was built in.
    audiocraft builds only the transformer in float16 and keeps these in float32 (running them under float16
    autocast, which casts the heads' weights at every call); the step decoder then had to keep a float16 copy
    beside the float32 originals. Stored once in float16, the decoder's embeddings are the LM's own tensors, and
    audiocraft's own generate computes what its autocast computed. On the CPU nothing changes."""
    dtype = getattr(torch, lm_dtype(device))
    if dtype == torch.float32:
        return
    for module in (lm.emb, lm.out_norm, lm.linears):
        if module is not None:
            module.to(dtype)


def load_lm(path: Path, device: str):
    """Builds the LM from its config and loads weights; both release and fine-tuner layouts."""
    from audiocraft.models import builders

    pkg = safe_load(path)
    cfg = _config(pkg, path)
    state = pkg.get("best_state", pkg.get("model"))
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has neither 'best_state' nor 'model' weights")
    if "model" in state and isinstance(state["model"], dict):  # solver states nest the LM weights once more
        state = state["model"]
    prepare_lm_config(cfg, device)
    for key in ("merge_text_conditions_p", "drop_desc_p"):
        if cfg.get("conditioners") and cfg.conditioners.get("args") and key in cfg.conditioners.args:
            del cfg.conditioners.args[key]
    if cfg.get("conditioners") and "self_wav" in cfg.conditioners:
        chroma = cfg.conditioners.self_wav.get("chroma_stem", {})
        if "cache_path" in chroma:
            del chroma["cache_path"]
    if needs_separator(cfg):  # melody: audiocraft's chroma conditioner gets htdemucs from local files
        with providing_separator(load_separator().to(device)):
            lm = builders.get_lm_model(cfg)
    else:
        lm = builders.get_lm_model(cfg)
    try:
        lm.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit the model its config describes: {exc}") from None
    store_in_compute_dtype(lm, device)
    lm.eval()
    lm.cfg = cfg
    return lm


def load_codec(path: Path, device: str):
    from audiocraft.models import builders

    pkg = safe_load(path)
    if "pretrained" in pkg:
        from audiocraft.models.encodec import CompressionModel

        return CompressionModel.get_pretrained(pkg["pretrained"], device=device)
    cfg = _config(pkg, path)
    cfg.device = device
    codec = builders.get_compression_model(cfg)
    codec.load_state_dict(pkg["best_state"])
    return codec.eval()


def load_mbd(path: Path, codec, device: str):
    """MultiBand Diffusion decoder bands from one file, sharing the LM's codec."""
    from audiocraft.models import builders
    from audiocraft.models.multibanddiffusion import DiffusionProcess, MultiBandDiffusion
    from audiocraft.modules.diffusion_schedule import NoiseSchedule
    from omegaconf import OmegaConf

    pkg = safe_load(path)
    processes = []
    for band in range(pkg["n_bands"]):
        entry = pkg[band]
        cfg = entry["cfg"]
        cfg = OmegaConf.create(cfg) if isinstance(cfg, str) else OmegaConf.create(OmegaConf.to_container(cfg))
        model = builders.get_diffusion_model(cfg)
        model.load_state_dict(entry["model_state"])
        processor = builders.get_processor(cfg=cfg.processor, sample_rate=pkg["sample_rate"])
        processor.load_state_dict(entry["processor_state"])
        model.to(device).eval()
        processor.to(device)
        schedule = NoiseSchedule(**cfg.schedule, sample_processor=processor, device=device)
        processes.append(DiffusionProcess(model=model, noise_schedule=schedule))
    return MultiBandDiffusion(DPs=processes, codec_model=codec)
