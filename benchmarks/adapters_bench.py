"""Serving many fine-tunes at once: 8 live sessions with 8 different LoRA adapters vs 8 sessions with none, one process.

    .venv/bin/python -m benchmarks.adapters_bench                 # musicgen-small dims, rank 16, on this CPU
    .venv/bin/python -m benchmarks.adapters_bench --device cuda   # the capturable step replayed from CUDA graphs

Each session is a stream of one style: a conditional and an unconditional row, 16 rows in all, all decoded by one
step per frame as the engine does (the eager forward on a CPU, the capturable step from CUDA graphs on CUDA: the
step modes engine.lm.static_step.choose_step_mode picks). With adapters every session's rows pick their own slot of
an AdapterBank of 8 rank-16 adapters over the default targets (engine.lm.lora); without, the rows run the base model:
on a CPU the same decoder with every row on slot 0 (its eager forward then skips the bank, as an engine with no
adapter in use does), on CUDA a second decoder without a bank (a captured graph always runs the bank's matmuls).
Rounds alternate the two so drift on a shared machine spreads over both; the aggregate realtime factor is
sessions x frames a second / frame rate, and the figure is the ratio of the medians (target >= 0.8). Only the LM's
step is measured: the codec's work per frame is the same with or without an adapter.
"""

import argparse
import json
import logging
import statistics
import time
import typing as tp

import torch

from benchmarks.engine_bench import SMALL, build_model, cpu_description
from engine.lm.conditions import text_condition
from engine.lm.decoder import StepDecoder
from engine.lm.lora import AdapterBank, new_adapter
from engine.lm.precision import activation_dtype, choose_weight_format
from engine.lm.static_step import CapturableStep, choose_step_mode

logger = logging.getLogger("adapters_bench")
FRAME_RATE = 50


def run(device: str, sessions: int, rank: int, context: int, steps: int, rounds: int) -> dict:
    model = build_model(SMALL, device=device)
    lm = model.musicgen.lm
    weight_format, _ = choose_weight_format("auto", device)
    mode, _ = choose_step_mode("auto", device)
    rows = 2 * sessions
    generator = torch.Generator().manual_seed(0)
    bank = AdapterBank(lm, slots=sessions, max_rank=rank, dtype=activation_dtype(weight_format))
    for slot in range(1, sessions + 1):
        bank.load(slot, new_adapter(lm, rank=rank, alpha=rank, b_std=0.01, generator=generator))

    def prepared(with_bank: bool) -> tuple[StepDecoder, tp.Optional[CapturableStep]]:
        decoder = StepDecoder(lm, max_rows=rows, max_steps=context + steps * (rounds * 2 + 1) + 8,  # + the warm-up
                              weight_format=weight_format)
        for row in range(rows):
            embeds, mask = text_condition(lm, None if row % 2 else f"style {row}")
            decoder.set_condition(row, embeds.to(device), mask.to(device))
        if with_bank:
            decoder.attach_adapters(bank)
            for s in range(sessions):
                decoder.set_adapter(slice(2 * s, 2 * s + 2), s + 1)
        step = CapturableStep(decoder, compiled=False) if mode != "off" else None
        if step is not None:
            step.capture_all()
        decoder.lengths[:] = context
        decoder.host_lengths[:] = [context] * rows
        return decoder, step

    served = prepared(True)
    plain = prepared(False) if mode != "off" else served
    tokens = torch.randint(0, lm.card, (rows, lm.num_codebooks), generator=generator).to(device)

    def frames_per_second(with_adapters: bool) -> float:
        decoder, step = served if with_adapters else plain
        if mode == "off":  # one decoder: the rows pick their adapters, or none
            for s in range(sessions):
                decoder.set_adapter(slice(2 * s, 2 * s + 2), s + 1 if with_adapters else 0)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            if step is not None:
                step(slice(0, rows), tokens)
            else:
                decoder.forward(slice(0, rows), tokens.unsqueeze(-1))
        sync()
        return steps / (time.perf_counter() - started)

    rates: dict[str, list[float]] = {"none": [], "adapters": []}
    with torch.no_grad():
        frames_per_second(True)  # warm-up
        for _ in range(rounds):
            for name in ("none", "adapters"):
                rates[name].append(frames_per_second(name == "adapters"))
    rtf = {name: sessions * statistics.median(r) / FRAME_RATE for name, r in rates.items()}
    adapter_bytes = bank.nbytes // sessions
    return {"device": torch.cuda.get_device_name() if device.startswith("cuda") else cpu_description()["cpu"],
            "weight_format": weight_format, "step_mode": mode, "sessions": sessions, "rank": rank,
            "context": context, "steps_per_round": steps, "rounds": rounds,
            "aggregate_rtf_none": round(rtf["none"], 3), "aggregate_rtf_adapters": round(rtf["adapters"], 3),
            "ratio": round(rtf["adapters"] / rtf["none"], 3),
            "adapter_mb_in_bank": round(adapter_bytes / 2**20, 1),
            "base_weights_mb": round(served[0].weight_bytes / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--context", type=int, default=500, help="cached steps each row attends over")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds alternating none / adapters")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    result = run(args.device, args.sessions, args.rank, args.context, args.steps, args.rounds)
    logger.info("%s", json.dumps(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
