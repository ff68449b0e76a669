"""Engine benchmarks, side by side in one process, on random-weight models built by audiocraft's own builders.

    .venv/bin/python -m benchmarks.engine_bench            # all suites, writes benchmarks/results.json
    .venv/bin/python -m benchmarks.engine_bench --suite batch --seconds 5

Suites (figures are ratios measured in one run; absolute numbers depend on the machine):
- batch:    our engine vs stock audiocraft `MusicGen.generate`, musicgen-small dimensions, same seed and params;
- stream:   per-chunk time at the first chunks vs after several 30 s window roll-overs (smaller model);
- sessions: aggregate generated seconds per wall second with 1, 2, 4, 8 concurrent jam sessions;
- memory:   peak RSS along a long session.
Every steps/s figure is also given as a fraction of the memory-bandwidth bound (weights read once per step),
with the bandwidth measured in the same run. Everything runs through the engine's public API.
"""

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import time
import typing as tp
from pathlib import Path

import torch

from engine.loading.hub import configure_offline_caches
from weights import DEMO_DIR

logger = logging.getLogger("bench")
RESULTS = Path(__file__).resolve().parent / "results.json"
SMALL = {"dim": 1024, "layers": 24, "heads": 16}  # musicgen-small's LM
MEDIUM_TINY = {"dim": 512, "layers": 8, "heads": 8}


def build_model(dims: dict, seed: int = 0, device: str = "cpu"):
    """A LoadedModel with random LM weights of the given size, the demo's codec and tiny T5 (local files), built on
    `device` in the dtype a loaded checkpoint gets there (engine.loading.checkpoint.prepare_lm_config)."""
    configure_offline_caches(DEMO_DIR)
    from audiocraft.models import MusicGen, builders
    from omegaconf import OmegaConf

    from engine.loading.checkpoint import load_codec, prepare_lm_config, resolve, store_in_compute_dtype
    from engine.loading.model import MAX_WINDOW_SECONDS, LoadedModel
    from weights.demo import lm_config

    torch.manual_seed(seed)
    cfg = OmegaConf.create(lm_config(dims["dim"], dims["layers"], dims["heads"]))
    prepare_lm_config(cfg, device)
    lm = builders.get_lm_model(cfg).eval()
    store_in_compute_dtype(lm, device)
    files = resolve(DEMO_DIR)
    codec = load_codec(files.codec, device)
    return LoadedModel(musicgen=MusicGen("bench", codec, lm, max_duration=MAX_WINDOW_SECONDS), mbd=None,
                       files=files, device=device)


def engine_for(model, weight_format: str, sessions: int = 1):
    from engine.config import EngineConfig
    from engine.core import Engine

    return Engine(model, EngineConfig(max_sessions=sessions, max_styles=1, weight_format=weight_format))


def measure_bandwidth_bytes_per_second(megabytes: int = 512, repeats: int = 5) -> float:
    """Read bandwidth of this machine now: the best of a few full reads of a buffer far larger than the caches."""
    buffer = torch.ones(megabytes * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - started)
    return buffer.numel() * 4 / best


def cpu_description() -> dict:
    model, flags = platform.processor(), []
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    interesting = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "f16c")]
    return {"cpu": model, "flags": interesting, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _tokens(engine, prompt: str, seconds: int, seed: int, top_k: int = 250, reference: bool = False,
            temperature: float = 1.0):
    """A prediction through the engine; returns (tokens, wall seconds, decode steps)."""
    from engine.work.batch import BatchRequest

    request = BatchRequest(prompt=prompt, duration=seconds, seed=seed, top_k=top_k, temperature=temperature)
    started = time.perf_counter()
    result = engine.generate(request, reference=reference).wait()
    return result.tokens, time.perf_counter() - started, result.tokens.shape[-1] + 3


def suite_batch(seconds: int, bandwidth: float) -> dict:
    from engine.lm.conditions import text_condition
    from engine.lm.decoder import StepDecoder

    model = build_model(SMALL)
    host = engine_for(model, "float32")  # stock generate runs on the engine thread, as ours does
    _tokens(host, "warm up", 1, 0, reference=True)
    _, stock, steps = _tokens(host, "lo-fi beat", seconds, 1, reference=True)
    host.close()
    result = {"model": "musicgen-small dims (1024 x 24 layers, 4 x 2048), random weights", "audio_seconds": seconds,
              "steps": steps, "stock_audiocraft": {"seconds": stock, "steps_per_second": steps / stock}}
    for dtype in ("float32", "bfloat16", "int8"):
        engine = engine_for(model, dtype)
        _tokens(engine, "warm up", 1, 0)
        _, wall, _ = _tokens(engine, "lo-fi beat", seconds, 1)
        rate = steps / wall
        bound = bandwidth / engine.describe()["decoder_weight_bytes"]
        result[f"ours_{dtype}"] = {"seconds": wall, "steps_per_second": rate, "ratio_vs_stock": stock / wall,
                                   "bandwidth_bound_steps_per_second": bound, "fraction_of_bound": rate / bound}
        engine.close()
    # deviation of the reduced formats from fp32 on identical inputs: logits (of the decoder itself) and greedy
    # tokens (through the engine)
    lm = model.musicgen.lm
    sequence = torch.randint(0, lm.card, (2, lm.num_codebooks, 64), generator=torch.Generator().manual_seed(0))
    logits = {}
    for weight_format in ("float32", "bfloat16", "int8"):
        decoder = StepDecoder(lm, max_rows=2, max_steps=80, weight_format=weight_format)
        decoder.set_condition(0, *text_condition(lm, "lo-fi beat"))
        decoder.set_condition(1, *text_condition(lm, None))
        with torch.no_grad():
            logits[weight_format] = decoder.forward(slice(0, 2), sequence)
    reference_engine = engine_for(model, "float32")
    greedy_reference = _tokens(reference_engine, "lo-fi beat", 2, 3, temperature=0.0)[0]
    reference_engine.close()
    for weight_format in ("bfloat16", "int8"):
        diff = (logits[weight_format] - logits["float32"]).abs()
        engine = engine_for(model, weight_format)
        greedy = _tokens(engine, "lo-fi beat", 2, 3, temperature=0.0)[0]
        engine.close()
        result[f"{weight_format}_deviation_from_float32"] = {
            "logit_max_abs_error": diff.max().item(), "logit_mean_abs_error": diff.mean().item(),
            "logit_mean_abs": logits["float32"].abs().mean().item(),
            "argmax_agreement_per_position": (logits[weight_format].argmax(-1) == logits["float32"].argmax(-1))
            .float().mean().item(),
            "greedy_2s_token_agreement": (greedy == greedy_reference).float().mean().item()}
    return result


def rollovers_at(audio_seconds: float) -> int:
    """Window roll-overs a stream has made by this point: the first at 30 s, then every 18 s."""
    return 0 if audio_seconds <= 30 else 1 + int((audio_seconds - 30) // 18)


def suite_stream(chunks_per_phase: int) -> dict:
    """Chunk cost stays flat across roll-overs: median of the first chunks vs the ones after the 3rd roll-over."""
    from engine.work.session import SessionSettings

    model = build_model(MEDIUM_TINY)
    engine = engine_for(model, "float32")
    session = engine.open_session(SessionSettings(styles=("drone",), weights=(1.0,), chunk_seconds=2.0), seed=1)
    times, rollovers, produced = [], [], 0.0
    while rollovers_at(produced) < 3 or len([r for r in rollovers if r >= 3]) < chunks_per_phase:
        chunk = session.next_chunk().result()
        produced += chunk.seconds
        times.append(chunk.generation_seconds)
        rollovers.append(rollovers_at(produced))
    session.close()
    engine.close()
    early = times[1:1 + chunks_per_phase]  # chunk 0 includes the first prefill
    rolled = [t for t, r, p in zip(times[1:], rollovers[1:], rollovers[:-1], strict=True) if r > p]
    late = [t for t, r in zip(times, rollovers, strict=True) if r >= 3][:chunks_per_phase]
    steady_late = [t for t, r, p in zip(times[1:], rollovers[1:], rollovers[:-1], strict=True) if r >= 3 and r == p]
    return {"model": "512 x 8 layers (smaller than musicgen-small so that 3 roll-overs fit a CI-sized run)",
            "chunk_seconds": 2.0, "chunks": len(times), "rollovers": rollovers[-1],
            "median_early_chunk_seconds": statistics.median(early),
            "median_late_chunk_seconds": statistics.median(late),
            "ratio_late_over_early": statistics.median(late) / statistics.median(early),
            "ratio_late_over_early_excluding_rollover_chunks": statistics.median(steady_late or late) /
            statistics.median(early),
            "max_chunk_seconds": max(times),
            "rollover_chunk_over_median": max(rolled) / statistics.median(times[1:])}


def suite_sessions(seconds: float, counts: tuple[int, ...] = (1, 2, 4, 8), all_formats: bool = True) -> dict:
    model = build_model(SMALL)
    result = {"model": "musicgen-small dims, random weights", "chunk_seconds": seconds}
    from engine.lm.precision import choose_weight_format

    default = choose_weight_format("auto", "cpu")[0]
    result["default_format"] = default
    for dtype in dict.fromkeys((default, "int8", "float32") if all_formats else (default,)):
        engine = engine_for(model, dtype, sessions=max(counts))
        result[dtype] = aggregate_realtime(engine, counts, seconds)
        engine.close()
    return result


def aggregate_realtime(engine, counts: tuple[int, ...], seconds: float,
                       on_count: tp.Callable[[int, dict], None] = lambda count, figures: None) -> dict:
    """For each count, that many live sessions of one style at once: the first chunk (prefill included; each
    session's time from the opening of all to its own first chunk), then one more chunk of each, timed together:
    aggregate audio seconds per wall second. `on_count` sees each count's figures as soon as they are measured."""
    from engine.work.session import SessionSettings

    figures = {}
    for count in counts:
        settings = SessionSettings(styles=("jam",), weights=(1.0,), chunk_seconds=seconds)
        opened = time.perf_counter()
        sessions = [engine.open_session(settings, seed=i) for i in range(count)]
        try:
            firsts = [session.next_chunk() for session in sessions]  # warm: first prefill out of the measurement
            first_chunk = []
            for future in firsts:
                future.result()
                first_chunk.append(time.perf_counter() - opened)
            started = time.perf_counter()
            futures = [session.next_chunk() for session in sessions]
            for future in futures:
                future.result()
            wall = time.perf_counter() - started
        finally:
            for session in sessions:
                session.close()
        figures[count] = {"wall_seconds": wall, "audio_seconds_per_wall_second": count * seconds / wall,
                          "first_chunk_seconds_median": statistics.median(first_chunk),
                          "first_chunk_seconds_max": max(first_chunk)}
        on_count(count, figures[count])
    base = figures[min(counts)]["audio_seconds_per_wall_second"]
    for count in counts:
        figures[count]["speedup_vs_one_session"] = figures[count]["audio_seconds_per_wall_second"] / base
    return figures


def suite_memory(minutes: float) -> dict:
    from engine.work.session import SessionSettings

    gc.collect()
    model = build_model(MEDIUM_TINY)
    engine = engine_for(model, "float32")
    session = engine.open_session(SessionSettings(styles=("drone",), weights=(1.0,), chunk_seconds=2.0), seed=2)
    samples = []
    produced = 0.0
    while produced < minutes * 60:
        produced += session.next_chunk().result().seconds
        samples.append((produced, current_rss_mb()))
    session.close()
    engine.close()
    after_first_minute = [rss for t, rss in samples if t > 60]
    return {"model": "512 x 8 layers", "audio_seconds": produced, "rollovers": "every 18 s after the first 30 s",
            "rss_mb_at_60s": after_first_minute[0], "rss_mb_max_after_60s": max(after_first_minute),
            "rss_mb_at_end": samples[-1][1], "growth_mb_after_60s": max(after_first_minute) - after_first_minute[0]}


def current_rss_mb() -> float:
    """Resident memory now (not the process's lifetime peak, which earlier suites would dominate)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="batch,stream,sessions,memory")
    parser.add_argument("--seconds", type=int, default=10, help="audio seconds for the batch suite")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--counts", default="1,2,4,8", help="concurrent sessions for the sessions suite")
    parser.add_argument("--default-format-only", action="store_true", help="sessions suite: the default format")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    torch.set_grad_enabled(False)
    bandwidth = measure_bandwidth_bytes_per_second()
    results = {"machine": {"platform": platform.platform(), **cpu_description(), "cpus": os.cpu_count(),
                           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                           "measured_read_bandwidth_gb_per_s": bandwidth / 1e9},
               "command": "python -m benchmarks.engine_bench --suite " + args.suite}
    print(json.dumps(results, indent=1), flush=True)
    suites = {"batch": lambda: suite_batch(args.seconds, bandwidth), "stream": lambda: suite_stream(5),
              "sessions": lambda: suite_sessions(1.0, tuple(int(c) for c in args.counts.split(",")),
                                                 not args.default_format_only), "memory": lambda: suite_memory(3.0)}
    for name in args.suite.split(","):
        started = time.perf_counter()
        results[name] = suites[name]()
        results[name]["suite_wall_seconds"] = time.perf_counter() - started
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous.update(results)
    args.out.write_text(json.dumps(previous, indent=1) + "\n")


if __name__ == "__main__":
    main()
