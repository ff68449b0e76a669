"""Training figures at musicgen-small's dimensions (random weights, the demo's codec and T5): tokens/s of `lora` and
`full` updates, peak memory, LoRA's trainable parameters and adapter size. The same `measure` runs on a GPU in
benchmarks/gpu/check.py's training section (300 updates at the fine-tuner's batch size of 16).

    flock /tmp/heavy.lock nice python -m benchmarks.train_bench            # CPU: batch 2 of 10 s, 3 updates each
    python -m benchmarks.train_bench --device cuda --batch-size 16 --seconds 30 --updates 300
"""

import argparse
import json
import logging
import resource
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.engine_bench import SMALL, build_model
from engine.lm.lora import SingleAdapter, new_adapter, save_adapter
from engine.lm.transformer import Transformer
from engine.training.config import TrainingConfig
from engine.training.forward import TrainingForward
from engine.training.loop import TokenSet, autocast_dtype, run_updates, trainable_tensors

logger = logging.getLogger("train_bench")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model, method: str, batch_size: int, seconds: float, updates: int, rank: int = 16) -> dict:
    """`updates` optimizer steps of `method` on random tokens of `seconds` per segment; figures of the run."""
    lm = model.musicgen.lm.float()
    device = torch.device(model.device)
    frames = int(seconds * model.frame_rate)
    generator = torch.Generator().manual_seed(0)
    codes = [torch.randint(0, lm.card, (lm.num_codebooks, frames), generator=generator) for _ in range(batch_size)]
    tokens = TokenSet(codes, ["lo-fi beat"] * batch_size)
    transformer = Transformer(lm, "float32")
    forward = TrainingForward(lm, transformer, checkpointing=device.type == "cuda",
                              autocast_dtype=autocast_dtype(device))
    figures: dict = {"method": method, "batch_size": batch_size, "segment_seconds": seconds, "updates": updates,
                     "device": str(device)}
    if method == "lora":
        adapter = new_adapter(lm, rank, float(rank), requires_grad=True)
        transformer.lora = SingleAdapter(adapter)
        tensors = list(adapter.weights.values())
    else:
        tensors = trainable_tensors(transformer)
    figures["trainable_parameters"] = sum(t.numel() for t in tensors)
    config = TrainingConfig(epochs=1, updates_per_epoch=updates, batch_size=batch_size, optimizer="adamw", lr=1e-4,
                            method=method, log_every=max(1, updates // 5))
    run_updates(forward, tensors, tokens, TrainingConfig(**dict(config.as_dict(), updates_per_epoch=1)))  # warm-up
    started = time.perf_counter()
    stats = run_updates(forward, tensors, tokens, config)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    figures.update({"tokens_per_second": round(stats.tokens_per_second, 1), "seconds": round(wall, 2),
                    "seconds_per_update": round(wall / updates, 3), "first_loss": round(stats.first_loss, 4),
                    "last_loss": round(stats.last_loss, 4), "peak_rss_mb": round(peak_rss_mb())})
    if stats.peak_memory_bytes is not None:
        figures["peak_gpu_gib"] = round(stats.peak_memory_bytes / 2**30, 2)
    if method == "lora":
        with tempfile.TemporaryDirectory() as folder:
            path = save_adapter(adapter, Path(folder) / "adapter.safetensors")
            figures["adapter_mb"] = round(path.stat().st_size / 2**20, 2)
    for tensor in tensors:
        tensor.requires_grad_(False)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--methods", default="lora,full")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = []
    for method in args.methods.split(","):
        model = build_model(SMALL, device=args.device)  # a fresh model per method: full changes its weights
        results.append(measure(model, method, args.batch_size, args.seconds, args.updates))
        print(json.dumps(results[-1]), flush=True)
    if len(results) == 2:
        print(json.dumps({"lora_over_full_tokens_per_second": round(results[0]["tokens_per_second"]
                                                                    / results[1]["tokens_per_second"], 2)}))


if __name__ == "__main__":
    main()
