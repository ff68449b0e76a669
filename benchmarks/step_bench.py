"""Decode-step speed: the eager forward vs the capturable step (engine.lm.static_step), eager and compiled, one process.

    .venv/bin/python -m benchmarks.step_bench                      # musicgen-small dims, float32 and bfloat16
    .venv/bin/python -m benchmarks.step_bench --formats bfloat16 --profile

For each weight format, 1 and 4 row pairs (streams of one style: a conditional and an unconditional row) and
contexts of ~100 and ~1000 steps in the engine's 30 s window (1504 steps): decode steps per second of
- eager:    StepDecoder.forward, attending over the rows' filled context only (reads lengths back to the host);
- static_whole_cache: the capturable step run eagerly, attending over the whole cache, masked on the device;
- static:   the same over the smallest power-of-two window (from 128) that holds the context;
- compiled: `static` through torch.compile(fullgraph=True), whose first call per row count and window gives the
            compile seconds.
Rounds alternate the methods so that drift from other work on the machine spreads over all of them; the median
of the rounds and the best (the least disturbed) are reported, with ratios to eager. The caches hold random values
and rows are placed at a context by setting their lengths: only the speed is measured here
(tests/engine/lm/test_static_step.py checks the logits).
"""

import argparse
import functools
import json
import logging
import os
import statistics
import time

import torch

from benchmarks.engine_bench import RESULTS, SMALL, build_model, cpu_description, measure_bandwidth_bytes_per_second
from engine.lm.conditions import text_condition
from engine.lm.decoder import StepDecoder
from engine.lm.static_step import CapturableStep
from engine.loading.model import MAX_WINDOW_SECONDS

logger = logging.getLogger("step_bench")
PAIRS = (1, 4)
CONTEXTS = (100, 1000)
PROFILED_STEPS = 20


def place(decoder: StepDecoder, rows: slice, length: int) -> None:
    """Puts `rows` at `length` cached steps (device lengths and their host copies), as a prefill would."""
    decoder.lengths[rows] = length
    decoder.host_lengths[rows] = [length] * (rows.stop - rows.start)


def _rate(run, decoder: StepDecoder, rows: slice, context: int, steps: int) -> float:
    place(decoder, rows, context)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    return steps / (time.perf_counter() - started)


def bench_format(lm, weight_format: str, window: int, steps: int, rounds: int, bandwidth: float) -> dict:
    rows_max = 2 * max(PAIRS)
    decoder = StepDecoder(lm, max_rows=rows_max, max_steps=window, weight_format=weight_format)
    for row in range(rows_max):
        decoder.set_condition(row, *text_condition(lm, None if row % 2 else f"style {row}"))
    generator = torch.Generator().manual_seed(0)
    for cache in (decoder.keys, decoder.values):
        cache.copy_(torch.randn(cache.shape, generator=generator, dtype=torch.float32).to(cache.dtype))
    steppers = {"static_whole_cache": CapturableStep(decoder, compiled=False, min_window=None),
                "static": CapturableStep(decoder, compiled=False),
                "compiled": CapturableStep(decoder, compiled=True)}
    result: dict = {"weight_bytes": decoder.weight_bytes, "compile_seconds": {}}
    for pairs in PAIRS:
        rows = slice(0, 2 * pairs)
        tokens = torch.randint(0, lm.card, (2 * pairs, lm.num_codebooks), generator=generator)
        runs = {"eager": functools.partial(decoder.forward, rows, tokens.unsqueeze(-1)),
                **{name: functools.partial(step, rows, tokens) for name, step in steppers.items()}}
        for context in CONTEXTS:
            place(decoder, rows, context)
            started = time.perf_counter()
            runs["compiled"]()  # compiles the graph for this row count and window
            result["compile_seconds"][f"{pairs}_pairs_context_{context}"] = time.perf_counter() - started
            for run in runs.values():  # warm-up: allocator, kernels chosen
                _rate(run, decoder, rows, context, 2)
            samples: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(rounds):
                for name, run in runs.items():
                    samples[name].append(_rate(run, decoder, rows, context, steps))
            best = {name: max(values) for name, values in samples.items()}
            median = {name: statistics.median(values) for name, values in samples.items()}
            result[f"{pairs}_pairs_context_{context}"] = {
                "best_steps_per_second": best, "median_steps_per_second": median,
                "best_over_eager": {name: best[name] / best["eager"] for name in runs if name != "eager"},
                "median_over_eager": {name: median[name] / median["eager"] for name in runs if name != "eager"},
                "bandwidth_bound_steps_per_second": bandwidth / decoder.weight_bytes,
                "whole_cache_bytes_read_by_static_whole_cache": _window_bytes(decoder, 2 * pairs),
                "rounds": rounds, "steps_per_round": steps}
            print(json.dumps({weight_format: {f"{pairs}_pairs_context_{context}":
                                              result[f"{pairs}_pairs_context_{context}"]}}), flush=True)
    return result


def _window_bytes(decoder: StepDecoder, n_rows: int) -> int:
    """Keys and values of the full window for `n_rows`: what the static step's self-attention reads each step."""
    per_row = decoder.keys[:, 0].numel() * decoder.keys.element_size()
    return 2 * per_row * n_rows


def profile(lm, weight_format: str, window: int, pairs: int, context: int) -> dict:
    """Top operators (self CPU time) of a few static and compiled steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    decoder = StepDecoder(lm, max_rows=2 * pairs, max_steps=window, weight_format=weight_format)
    for row in range(2 * pairs):
        decoder.set_condition(row, *text_condition(lm, None if row % 2 else f"style {row}"))
    rows = slice(0, 2 * pairs)
    tokens = torch.zeros(2 * pairs, lm.num_codebooks, dtype=torch.long)
    tables = {}
    runs = {"eager_forward": lambda: decoder.forward(rows, tokens.unsqueeze(-1)),
            "static": functools.partial(CapturableStep(decoder, compiled=False), rows, tokens),
            "compiled": functools.partial(CapturableStep(decoder, compiled=True), rows, tokens)}
    for name, run in runs.items():
        place(decoder, rows, context)
        run()
        run()
        place(decoder, rows, context)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(PROFILED_STEPS):
                run()
        tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60)
        print(f"== {weight_format} {name} ({pairs} pairs, context {context}), {PROFILED_STEPS} steps\n"
              f"{tables[name]}", flush=True)
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="float32,bfloat16")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=9, help="rounds alternating the methods")
    parser.add_argument("--profile", action="store_true", help="print top operators instead of the rates")
    parser.add_argument("--pairs", type=int, default=4, help="row pairs to profile")
    parser.add_argument("--context", type=int, default=1000, help="context to profile at")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.set_grad_enabled(False)
    model = build_model(SMALL)
    lm = model.musicgen.lm
    window = int(MAX_WINDOW_SECONDS * model.frame_rate) + max(lm.pattern_provider.delays) + 1
    if args.profile:
        for weight_format in args.formats.split(","):
            profile(lm, weight_format, window, pairs=args.pairs, context=args.context)
        return
    bandwidth = measure_bandwidth_bytes_per_second()
    results = {"machine": {**cpu_description(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "torch": torch.__version__, "measured_read_bandwidth_gb_per_s": bandwidth / 1e9,
                           "load_average_at_start": os.getloadavg()},
               "model": "musicgen-small dims (1024 x 24 layers, 16 heads), random weights", "window_steps": window}
    print(json.dumps(results), flush=True)
    started = time.perf_counter()
    for weight_format in args.formats.split(","):
        results[weight_format] = bench_format(lm, weight_format, window, args.steps, args.rounds, bandwidth)
    results["suite_wall_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()  # other work on the machine skews absolute rates
    print(json.dumps(results, indent=1), flush=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    previous["step"] = results
    RESULTS.write_text(json.dumps(previous, indent=1) + "\n")


if __name__ == "__main__":
    main()
