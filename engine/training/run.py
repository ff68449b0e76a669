"""One fine-tuning run, from the dataset file to the output file: what train.py (Cog's `train:`) calls through
engine/api.py.

1. The base checkpoint is loaded (the same sources as serving: a path, a URL or the default checkpoint), the LM in
   float32 for training.
2. The dataset is unpacked and prepared (engine.training.dataset), and its segments are encoded by the codec once;
   the tokens are reused by every epoch.
3. The LM is trained (engine.training.loop) with `full` or `lora` (engine.lm.lora's adapter, the layer serving uses).
4. `full` writes the fine-tuner's `{'xp.cfg': config, 'model': lm_state}` file (loaded by our setup, and by audiocraft
   as the fine-tuner's predictor loads it: `get_lm_model(cfg)` then `load_state_dict(pkg['model'])`); `lora` writes
   the adapter file (safetensors, the base checkpoint's fingerprint, the training config).
"""

import logging
import tempfile
import typing as tp
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.lm.lora import SingleAdapter, load_adapter, merge, new_adapter, save_adapter
from engine.lm.transformer import Transformer
from engine.loading.model import LoadedModel, load_model, pick_device
from engine.loading.separator import load_separator, separator_path
from engine.training.config import TrainingConfig
from engine.training.dataset import DatasetError, DatasetOptions, load_segments, unpack
from engine.training.forward import TrainingForward
from engine.training.loop import (
    TokenSet,
    TrainingStats,
    autocast_dtype,
    mean_cross_entropy,
    run_updates,
    trainable_tensors,
    write_back,
)

logger = logging.getLogger(__name__)

FULL_FILE = "trained_model.th"
ADAPTER_FILE = "adapter.safetensors"


@dataclass
class TrainingResult:
    """The output file and how the run went (cross-entropy of the training tokens before and after)."""

    path: Path
    method: str
    stats: TrainingStats
    cross_entropy_before: float
    cross_entropy_after: float
    segments: int


def load_for_training(source: tp.Union[str, Path, None], device: tp.Optional[str] = None) -> LoadedModel:
    """The checkpoint with its LM in float32 (serving keeps it in fp16 on a GPU; training needs fp32 masters)."""
    model = load_model(source, device=device or pick_device())
    model.musicgen.lm.float()
    return model


@torch.no_grad()
def encode(model: LoadedModel, segments: list) -> TokenSet:
    """Codec tokens of every segment, computed once: [K, T] each, on the CPU."""
    codec = model.musicgen.compression_model
    codes = []
    for segment in segments:
        wav = segment.wav[None].to(model.device)
        codes.append(codec.encode(wav)[0][0].cpu())
    return TokenSet(codes, [segment.caption for segment in segments])


def vocal_separator(device: str):
    """htdemucs from its local weights (the melody checkpoints' separator), or a DatasetError saying how to get it."""
    path = separator_path()
    if not path.is_file():
        raise DatasetError(f"drop_vocals needs the htdemucs stem separator at {path}, which this image lacks: fetch "
                           "it with `python -m weights.fetch --model melody`, or train with drop_vocals=false")
    return load_separator(path).to(device)


def prepare_tokens(model: LoadedModel, dataset_path: Path, options: DatasetOptions, workdir: Path) -> TokenSet:
    """Unpacks, checks and encodes the dataset (DatasetError names any problem)."""
    files = unpack(dataset_path, workdir / "dataset", options.max_bytes)
    separator = vocal_separator(model.device) if options.drop_vocals else None
    segments = load_segments(files, workdir / "dataset", model.sample_rate, model.channels, options, separator)
    if not segments:
        raise ValueError("the dataset has no segment of 5 s or more")  # unreachable: load_segments refuses short files
    return encode(model, segments)


def fine_tune(dataset_path: Path, config: TrainingConfig, options: DatasetOptions = DatasetOptions(),
              source: tp.Union[str, Path, None] = None, out_dir: tp.Optional[Path] = None,
              device: tp.Optional[str] = None, cancelled: tp.Callable[[], bool] = lambda: False) -> TrainingResult:
    """Trains the base checkpoint on the dataset; returns the output file (in `out_dir`) and the run's figures."""
    config.validate()
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="musicgen-training-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_for_training(source, device)
    lm = model.musicgen.lm
    if model.supports_melody:
        raise ValueError("training a melody checkpoint is not supported yet (its chroma condition is not "
                         "computed for the dataset); train a text-only checkpoint (small, medium, large)")
    torch.manual_seed(config.seed)
    with tempfile.TemporaryDirectory(prefix="musicgen-dataset-") as workdir:
        tokens = prepare_tokens(model, dataset_path, options, Path(workdir))
    logger.info("%d segments, %d frames of tokens cached", len(tokens.codes), tokens.frames)
    transformer = Transformer(lm, "float32")
    on_gpu = torch.device(model.device).type == "cuda"
    forward = TrainingForward(lm, transformer, checkpointing=on_gpu,
                              autocast_dtype=autocast_dtype(torch.device(model.device)))
    before = mean_cross_entropy(forward, tokens)
    if config.method == "lora":
        adapter = new_adapter(lm, config.lora_rank, config.lora_alpha, requires_grad=True,
                              training=dict(config.as_dict(), base=str(model.files.lm), segments=len(tokens.codes)))
        transformer.lora = SingleAdapter(adapter)
        tensors = list(adapter.weights.values())
    else:
        tensors = trainable_tensors(transformer)
    logger.info("training %s: %d trainable parameters, %d updates of batch %d", config.method,
                sum(t.numel() for t in tensors), config.total_updates, config.batch_size)
    stats = run_updates(forward, tensors, tokens, config, cancelled)
    for tensor in tensors:
        tensor.requires_grad_(False)
    after = mean_cross_entropy(forward, tokens)
    logger.info("cross-entropy of the training tokens: %.4f -> %.4f", before, after)
    if config.method == "lora":
        path = save_adapter(adapter, out_dir / ADAPTER_FILE)
        logger.info("wrote %s (%.2f MB)", path, path.stat().st_size / 2**20)
    else:
        write_back(transformer, lm)
        path = save_full(lm, out_dir / FULL_FILE)
    return TrainingResult(path, config.method, stats, before, after, len(tokens.codes))


def save_full(lm, path: Path) -> Path:
    """The fine-tuner's output: {'xp.cfg': the LM's config, 'model': its state dict}, float32 on the CPU."""
    state = {name: tensor.detach().to("cpu", torch.float32) for name, tensor in lm.state_dict().items()}
    torch.save({"xp.cfg": lm.cfg, "model": state}, path)
    logger.info("wrote %s (%.1f MB)", path, path.stat().st_size / 2**20)
    return path


def merge_adapter_file(adapter: Path, out: Path, base: tp.Union[str, Path, None] = None) -> Path:
    """Folds a LoRA adapter into its base checkpoint (engine.lm.lora `merge`, which refuses an adapter made for
    other weights) and writes the full fine-tuner format, for tools that know no adapters (tools/merge_adapter)."""
    model = load_for_training(base, "cpu")
    merge(load_adapter(adapter), model.musicgen.lm)
    return save_full(model.musicgen.lm, Path(out))
