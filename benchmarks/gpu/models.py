"""The GPU check's model sections: one per model (random weights of musicgen-small / -medium dims), each measuring
engine start (graph capture), one prediction's steps/s beside stock audiocraft's, concurrent predictions, sessions
at 1, 8, 32 and 64 (aggregate real-time factor, first chunk), memory, and the decode step alone (eager vs replay).
Run by benchmarks.gpu.check."""

import gc
import logging
import statistics
import time
import traceback
import typing as tp

import torch

from benchmarks.engine_bench import SMALL, aggregate_realtime, build_model, current_rss_mb
from benchmarks.gpu.report import Report

logger = logging.getLogger("gpu_check")
MEDIUM = {"dim": 1536, "layers": 48, "heads": 24}  # musicgen-medium's LM
TINY = {"dim": 64, "layers": 2, "heads": 2}
SESSION_COUNTS = (1, 8, 32, 64)
MODEL_RESERVE_SECONDS = 120.0  # kept for each model still to come, so that the first cannot starve the next
TARGETS = {"musicgen-small": {"steps_per_second": 1000, "realtime_sessions": 64},
           "musicgen-medium": {"steps_per_second": 300, "realtime_sessions": 24}}


class Plan(tp.NamedTuple):
    models: dict[str, dict]
    counts: tuple[int, ...]
    prediction_seconds: int
    chunk_seconds: float
    stock_seconds: int  # 0: no stock audiocraft comparison
    step_repeats: int
    concurrent: int  # predictions submitted at once


def plan_for(tiny: bool) -> Plan:
    if tiny:
        return Plan({"tiny": TINY}, (1, 2), 2, 0.5, 1, 5, 2)
    return Plan({"musicgen-small": SMALL, "musicgen-medium": MEDIUM}, SESSION_COUNTS, 10, 2.0, 5, 50, 8)


def _memory(device: str) -> dict:
    if device != "cuda":
        return {"rss_mb": current_rss_mb()}
    return {"allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 3),
            "max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
            "reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 3), "rss_mb": current_rss_mb()}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _engine(model, sessions: int):
    from engine.config import EngineConfig
    from engine.core import Engine

    return Engine(model, EngineConfig(max_sessions=sessions, max_styles=1))


def _close(engine) -> None:
    """Closes the engine and frees its KV cache before the next one is sized (64 sessions of medium: ~58 GB)."""
    engine.close()
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _steps_per_second(engine, seconds: int, seed: int, reference: bool = False) -> dict:
    from engine.work.batch import BatchRequest

    started = time.perf_counter()
    result = engine.generate(BatchRequest(prompt="lo-fi beat", duration=seconds, seed=seed, top_k=250),
                             reference=reference).wait()
    wall = time.perf_counter() - started
    steps = result.tokens.shape[-1] + len(engine.model.musicgen.lm.pattern_provider.delays) - 1
    return {"audio_seconds": seconds, "steps": steps, "wall_seconds": wall, "steps_per_second": steps / wall,
            "audio_samples": result.wav.shape[-1], "audio_finite": bool(torch.isfinite(result.wav).all())}


def model_section(figures: dict, name: str, dims: dict, device: str, plan: Plan, report: Report,
                  reserve: float = 0.0) -> None:
    """One model's figures; each part is recorded as soon as it is measured and fails on its own. `reserve`: budget
    seconds kept for the models after this one (a part that would eat into them is skipped)."""
    _reset_peak(device)
    started = time.perf_counter()
    model = build_model(dims, device=device)
    _sync(device)
    lm = model.musicgen.lm
    figures["model"] = {"dims": dims, "params": sum(p.numel() for p in lm.parameters()),
                        "dtypes": {part: sorted({str(p.dtype) for p in getattr(lm, part).parameters()})
                                   for part in ("transformer", "emb", "linears", "condition_provider")},
                        "build_seconds": time.perf_counter() - started,
                        "note": "random weights (noise); the demo's tiny codec and T5"}
    figures["memory_after_build"] = _memory(device)

    def part(key: str, fn: tp.Callable[[], tp.Any], needs: float = 0.0) -> None:
        if report.left() - reserve < needs:
            figures[key] = {"skipped": f"{report.left():.0f} s of the budget left, {reserve:.0f} s kept for the "
                                       f"next model, {needs:.0f} s needed"}
        else:
            try:
                figures[key] = fn()
            except Exception as exc:  # the other parts still run; what the part recorded stays
                figures[key] = {**(figures.get(key) or {}), "error": f"{type(exc).__name__}: {exc}"[:2000],
                                "traceback": traceback.format_exc()[-3000:]}
                logger.error("%s %s failed: %s", name, key, figures[key]["error"])
        report.write()

    # in order of what the figures are for, so that a short budget skips the least important
    part("prediction", lambda: _prediction(model, device, plan), needs=20)
    part("sessions", lambda: _sessions(model, device, plan, figures, report, reserve), needs=30)
    part("step", lambda: _step(lm, device, plan), needs=15)
    if plan.stock_seconds and name != "musicgen-medium":
        part("stock_audiocraft", lambda: _stock(model, plan), needs=30)
    part("concurrent_predictions", lambda: _concurrent(model, device, plan), needs=30)
    figures["memory_peak"] = _memory(device)
    figures["targets"] = _against_targets(name, figures,
                                          report.data["sections"].get("ceilings", {}).get("bandwidth_gb_per_s"))


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _prediction(model, device: str, plan: Plan) -> dict:
    """Engine start (where CUDA graphs are captured, or will be), then one prediction alone, after a warm-up."""
    _reset_peak(device)
    started = time.perf_counter()
    engine = _engine(model, sessions=1)
    try:
        _sync(device)
        result: dict = {"engine_start_seconds": time.perf_counter() - started, "describe": engine.describe()}
        warm = time.perf_counter()
        _steps_per_second(engine, 1, 0)
        result["warm_up_seconds"] = time.perf_counter() - warm  # lazily captured graphs land here
        runs = [_steps_per_second(engine, plan.prediction_seconds, seed) for seed in (1, 2)]
        result["runs"] = runs
        result["steps_per_second"] = statistics.median(run["steps_per_second"] for run in runs)
        result["memory"] = _memory(device)
        result["health"] = engine.describe()
        if device == "cuda":
            result["auto_sessions"] = _auto_sessions(engine)
        return result
    finally:
        _close(engine)


def _auto_sessions(engine) -> dict:
    """What JAM_MAX_SESSIONS=auto would give beside this engine (engine.runtime.memory), at one and at four styles."""
    from engine.config import MAX_PROMPT_TOKENS
    from engine.runtime import memory

    free = memory.free_device_bytes(engine.model.device)
    per_row = memory.row_bytes(engine.model.musicgen.lm, engine.scheduler.decoder.max_steps, MAX_PROMPT_TOKENS,
                               engine.weight_format)
    return {"free_gib": free / 2**30, "kv_mib_per_row": per_row / 2**20,
            **{f"sessions_at_{styles}_styles": memory.sessions_that_fit(free, per_row, styles + 1, 2)
               for styles in (1, 4)}}


def _stock(model, plan: Plan) -> dict:
    """audiocraft's own MusicGen.generate on the same weights (its float16 autocast on CUDA): the yardstick."""
    engine = _engine(model, sessions=1)
    try:
        _steps_per_second(engine, 1, 0, reference=True)
        return _steps_per_second(engine, plan.stock_seconds, 1, reference=True)
    finally:
        _close(engine)


def _concurrent(model, device: str, plan: Plan) -> dict:
    """`plan.concurrent` predictions submitted at once (as Cog's concurrency would): their aggregate steps/s over
    one prediction's, the throughput target of issue 17 part 5 (>= 5x for 8)."""
    from engine.work.batch import BatchRequest

    engine = _engine(model, sessions=1)
    try:
        alone = _steps_per_second(engine, plan.prediction_seconds, 4)
        started = time.perf_counter()
        jobs = [engine.generate(BatchRequest(prompt=f"style {i}", duration=plan.prediction_seconds, seed=10 + i))
                for i in range(plan.concurrent)]
        results = [job.wait() for job in jobs]
        wall = time.perf_counter() - started
        steps = sum(r.tokens.shape[-1] + len(engine.model.musicgen.lm.pattern_provider.delays) - 1 for r in results)
        return {"predictions": plan.concurrent, "wall_seconds": wall, "aggregate_steps_per_second": steps / wall,
                "alone_steps_per_second": alone["steps_per_second"],
                "throughput_over_one": steps / wall / alone["steps_per_second"], "memory": _memory(device)}
    finally:
        _close(engine)


def _sessions(model, device: str, plan: Plan, figures: dict, report: Report, reserve: float) -> dict:
    """Aggregate real-time factor at each session count on one engine sized for the largest, counts that fit."""
    _reset_peak(device)
    started = time.perf_counter()
    engine = _engine(model, sessions=max(plan.counts))
    decoder = getattr(engine.scheduler, "decoder", None)
    result: dict = {"engine_start_seconds": time.perf_counter() - started, "chunk_seconds": plan.chunk_seconds,
                    "decoder_rows": engine.config.rows, "by_count": {},
                    "kv_cache_gib": getattr(decoder, "cache_bytes", 0) / 2**30, "memory_at_start": _memory(device)}
    figures["sessions"] = result
    try:
        def measured(count: int, values: dict) -> None:
            values["memory"] = _memory(device)
            values["real_time"] = values["audio_seconds_per_wall_second"] >= count
            result["by_count"][count] = values
            report.write()

        for count in plan.counts:
            if report.left() - reserve < 20:
                result["by_count"][count] = {"skipped": "budget"}
                continue
            try:
                aggregate_realtime(engine, (count,), plan.chunk_seconds, on_count=measured)
            except Exception as exc:  # e.g. out of memory at 64: the smaller counts stand
                result["by_count"][count] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                logger.error("%d sessions failed: %s", count, exc)
        result["describe"] = engine.describe()
        return result
    finally:
        _close(engine)


def _step(lm, device: str, plan: Plan) -> dict:
    """The decode step alone for one prediction's 2 rows at ~100 steps of context: eager forward, the capturable
    step eagerly, and (CUDA) its graph replay with the capture time. Reaches into the engine's decoder, whose API
    may move; an error here is recorded and the engine-level figures above stand."""
    from benchmarks.step_bench import place
    from engine.lm.conditions import text_condition
    from engine.lm.decoder import StepDecoder
    from engine.lm.precision import choose_weight_format
    from engine.lm.static_step import CapturableStep

    weight_format = choose_weight_format("auto", device)[0]
    decoder = StepDecoder(lm, max_rows=2, max_steps=1600, weight_format=weight_format)
    for row in range(2):
        decoder.set_condition(row, *text_condition(lm, None if row else "lo-fi beat"))
    rows = slice(0, 2)
    tokens = torch.randint(0, lm.card, (2, lm.num_codebooks), device=decoder.device)
    runs = {"eager_forward": lambda: decoder.forward(rows, tokens.unsqueeze(-1)),
            "static_eager": CapturableStep(decoder, compiled=False, graphs=False).__call__}
    result: dict = {"weight_format": weight_format, "rows": 2, "context": 100}
    if device == "cuda":
        graph_step = CapturableStep(decoder, compiled=False, graphs=True)
        place(decoder, rows, 100)
        started = time.perf_counter()
        graph_step(rows, tokens)
        torch.cuda.synchronize()
        result["first_graph_step_seconds_with_capture"] = time.perf_counter() - started
        runs["graph_replay"] = graph_step.__call__
    for name, run in runs.items():
        call = run if name == "eager_forward" else (lambda run=run: run(rows, tokens))
        place(decoder, rows, 100)
        call()
        _sync(device)
        place(decoder, rows, 100)
        started = time.perf_counter()
        for _ in range(plan.step_repeats):
            call()
        _sync(device)
        result[f"{name}_steps_per_second"] = plan.step_repeats / (time.perf_counter() - started)
    return result


def _against_targets(name: str, figures: dict, bandwidth: tp.Optional[float]) -> dict:
    rate = figures.get("prediction", {}).get("steps_per_second")
    weight_bytes = figures.get("prediction", {}).get("describe", {}).get("decoder_weight_bytes")
    bound = {"bandwidth_bound_steps_per_second": bandwidth * 1e9 / weight_bytes} if bandwidth and weight_bytes else {}
    target = TARGETS.get(name)
    if target is None:
        return bound
    by_count = figures.get("sessions", {}).get("by_count", {})
    realtime = [count for count, values in by_count.items() if values.get("real_time")]
    return {**bound, "steps_per_second": rate, "steps_per_second_target": target["steps_per_second"],
            "steps_per_second_met": rate is not None and rate >= target["steps_per_second"],
            "most_realtime_sessions_measured": max(realtime, default=0),
            "realtime_sessions_target": target["realtime_sessions"]}
