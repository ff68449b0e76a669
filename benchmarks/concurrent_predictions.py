"""Throughput of concurrent predictions against one at a time, in one process, through the engine's public API.

    .venv/bin/python -m benchmarks.concurrent_predictions                    # 512 x 8 LM, 1 and 4 at once
    .venv/bin/python -m benchmarks.concurrent_predictions --dims small --counts 1,8 --seconds 3

For each count N: an engine with N prediction slots (EngineConfig.max_predictions, what COG_MAX_CONCURRENCY sets
in the Cog container) generates N seeded predictions submitted together; the figure is audio seconds generated per
wall second, and its ratio to N = 1 (tests/engine/work/test_concurrent_predictions.py checks that each prediction's
bytes are those it has alone, at a given slot count).
"""

import argparse
import json
import logging
import time

import torch

from benchmarks.engine_bench import MEDIUM_TINY, SMALL, build_model, cpu_description

logger = logging.getLogger("concurrent_predictions")
DIMS = {"small": SMALL, "tiny": MEDIUM_TINY}


def measure(model, count: int, seconds: int, weight_format: str, device: str = "cpu") -> dict:
    from engine.api import BatchRequest, Engine, EngineConfig

    engine = Engine(model, EngineConfig(max_sessions=0, max_predictions=count, weight_format=weight_format))
    try:
        engine.generate(BatchRequest(prompt="warm up", duration=1, seed=0)).wait()
        started = time.perf_counter()
        jobs = [engine.generate(BatchRequest(prompt=f"style {i}", duration=seconds, seed=100 + i))
                for i in range(count)]
        results = [job.wait() for job in jobs]
        wall = time.perf_counter() - started
    finally:
        engine.close()
    assert all(result.tokens.shape[-1] == seconds * model.musicgen.frame_rate for result in results)
    return {"count": count, "wall_seconds": wall, "audio_seconds_per_second": count * seconds / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", choices=sorted(DIMS), default="tiny")
    parser.add_argument("--counts", default="1,4")
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--format", default="float32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_grad_enabled(False)
    model = build_model(DIMS[args.dims])
    runs = [measure(model, int(count), args.seconds, args.format) for count in args.counts.split(",")]
    base = runs[0]
    report = {"machine": cpu_description(), "dims": DIMS[args.dims], "format": args.format,
              "seconds_each": args.seconds, "command": "python -m benchmarks.concurrent_predictions "
              f"--dims {args.dims} --counts {args.counts} --seconds {args.seconds} --format {args.format}",
              "runs": [run | {"throughput_ratio_to_first": run["audio_seconds_per_second"]
                              / base["audio_seconds_per_second"]} for run in runs]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
