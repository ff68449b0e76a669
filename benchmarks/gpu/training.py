"""The GPU check's training section: musicgen-small dimensions (random weights), `lora` and `full` at the
fine-tuner's batch size (16) of 30 s segments, timed over `updates` updates (300: the fine-tuner's 3 x 100), with
bf16 autocast and gradient checkpointing as train.py runs them. `full` runs as many updates as the budget leaves
(at least 5) and its minutes for 300 are extrapolated from its own seconds per update (the JSON says which).
Run by benchmarks.gpu.check with --training-updates."""

import gc

import torch

from benchmarks.engine_bench import SMALL, build_model
from benchmarks.train_bench import measure

BATCH_SIZE = 16  # the fine-tuner's default
SEGMENT_SECONDS = 30.0


def training_section(figures: dict, device: str, updates: int, report, tiny: bool = False) -> None:
    batch, seconds = (2, 2.0) if tiny else (BATCH_SIZE, SEGMENT_SECONDS)
    with torch.enable_grad():
        for method in ("lora", "full"):
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            steps = updates
            if method == "full" and "lora" in figures:
                per_update = figures["lora"]["seconds_per_update"] * 2.5  # full's backward and optimizer cost more
                steps = max(min(5, updates), min(updates, int((report.left() - 30) / max(per_update, 1e-3))))
            model = build_model(SMALL, device=device)
            result = measure(model, method, batch, seconds, steps)
            result["minutes_for_300_updates"] = round(result["seconds_per_update"] * 300 / 60, 2)
            result["extrapolated"] = steps != 300
            figures[method] = result
            report.write()
            del model
            gc.collect()
