"""The prepared GPU check: CUDA tests, then the engine's figures on musicgen-small and -medium dims, in one JSON.

    python -m benchmarks.gpu_check --out OUT.json                   # on a GPU (benchmarks/gpu_check.sh runs this)
    python -m benchmarks.gpu_check --device cpu --tiny --out x.json  # the same script end to end on a CPU, ~2 min

A lease of a GPU is minutes long and nobody may be watching it, so every section runs in its own try/except and
records its error instead of ending the run; a global time budget skips what would not fit (recorded as
skipped); the JSON is rewritten after every section, so a run killed at its limit still leaves what it measured.
Sections:
- environment: torch (the machine's own, whatever its version; ours is pinned in requirements.in), GPU, driver,
  the carried wheels and which stand-ins (benchmarks/gpu_stubs) were used;
- demo: the demo checkpoint (built here: weights/ is not carried), which the CUDA tests load;
- cuda_tests: tests/engine/test_cuda.py in a child process (graph replay equals the eager step, no host read in the step
  under torch.cuda.set_sync_debug_mode("error"), the engine makes audio on CUDA, half precision end to end);
- one section per model (random weights of musicgen-small / musicgen-medium dims, built by audiocraft's builders
  in the dtype a loaded checkpoint gets on the device): engine start (graph capture) time, steps/s of one
  prediction alone (and stock audiocraft's generate on the same weights), aggregate real-time factor and first
  chunk time at 1, 8, 32 and 64 sessions, memory; and the decode step alone (eager vs graph replay).
Random weights make noise: only the speeds mean anything. `--tiny` swaps in a 64-wide model and small counts.
"""

import argparse
import gc
import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import typing as tp
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

from benchmarks.engine_bench import SMALL, aggregate_realtime, build_model, current_rss_mb

logger = logging.getLogger("gpu_check")
ROOT = Path(__file__).resolve().parent.parent
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


class Report:
    """The JSON being built: each section's figures, error or skip, written out after every section."""

    def __init__(self, out: Path, budget_seconds: float) -> None:
        self.out = out
        self.started = time.monotonic()
        self.budget = budget_seconds
        self.data: dict = {"started_unix": time.time(), "budget_seconds": budget_seconds, "sections": {}}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def section(self, name: str, fn: tp.Callable[[dict], None], needs_seconds: float = 0.0) -> None:
        """Runs fn(figures) unless less than `needs_seconds` of the budget is left; whatever fn put into figures
        before an error stays."""
        figures: dict = {}
        self.data["sections"][name] = figures
        if self.left() < needs_seconds:
            figures["skipped"] = f"{self.left():.0f} s of the budget left, {needs_seconds:.0f} s needed"
            self.write()
            return
        started = time.monotonic()
        logger.info("section %s (%.0f s of the budget left)", name, self.left())
        try:
            fn(figures)
            figures["ok"] = True
        except BaseException as exc:  # recorded, and the next section runs
            figures["ok"] = False
            figures["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            figures["traceback"] = traceback.format_exc()[-4000:]
            logger.error("section %s failed: %s", name, figures["error"])
            if isinstance(exc, KeyboardInterrupt):
                raise
        finally:
            figures["seconds"] = round(time.monotonic() - started, 3)
            self.write()

    def write(self) -> None:
        self.data["elapsed_seconds"] = round(time.monotonic() - self.started, 3)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.out)


# -- sections ------------------------------------------------------------------------------------------------
def environment(figures: dict, device: str) -> None:
    import importlib.metadata

    figures.update({"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": device,
                    "our_torch_pin": _our_pin("torch")})
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        figures.update({"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                        "cudnn": torch.backends.cudnn.version(), "driver": _nvidia_smi()})
    wheels = {}
    for line in (ROOT / "benchmarks" / "gpu_wheels.txt").read_text().splitlines():
        name = line.split("#")[0].strip().split("==")[0]
        if name:
            try:
                wheels[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                wheels[name] = None
    figures["carried_wheels"] = wheels
    figures["stand_ins"] = {name: _is_stand_in(name) for name in ("xformers", "spacy", "av")}
    figures["image_versions"] = {name: _version(name) for name in ("transformers", "huggingface_hub", "numpy",
                                                                   "triton", "torchaudio")}


def _our_pin(name: str) -> tp.Optional[str]:
    for line in (ROOT / "requirements.in").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==")[1].split()[0]
    return None


def _version(name: str) -> tp.Optional[str]:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_stand_in(name: str) -> tp.Optional[bool]:
    try:
        module = __import__(name)
    except ImportError:
        return None
    return bool(getattr(module, "STAND_IN", False))


def _nvidia_smi() -> tp.Optional[str]:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return done.stdout.strip() or done.stderr.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi: {exc}"


def ceilings(figures: dict, device: str) -> None:
    """Memory bandwidth now (read + write of a device-to-device copy on CUDA, a read on the CPU): a decode step
    reads every weight once, so bandwidth / weight bytes bounds steps/s (each model's `bandwidth_bound`)."""
    if device != "cuda":
        from benchmarks.engine_bench import measure_bandwidth_bytes_per_second

        figures["bandwidth_gb_per_s"] = measure_bandwidth_bytes_per_second(megabytes=256, repeats=3) / 1e9
        return
    source = torch.randn(2**29 // 2, device="cuda", dtype=torch.float16)  # 0.5 GiB, random (not zeros)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    figures["bandwidth_gb_per_s"] = 2 * source.numel() * source.element_size() / best / 1e9


def demo(figures: dict) -> None:
    """The demo checkpoint: a carried one if it loads with this machine's packages (its T5 was saved by our
    transformers pin), else built here by weights/demo.py."""
    from engine.loading.model import load_model
    from weights import DEMO_DIR
    from weights.demo import build

    if (DEMO_DIR / "state_dict.bin").is_file():
        try:
            load_model(DEMO_DIR, device="cpu")
            figures["carried"] = str(DEMO_DIR)
            return
        except Exception as exc:  # rebuilt below with this machine's transformers
            figures["carried_failed_to_load"] = f"{type(exc).__name__}: {exc}"[:1000]
    build(DEMO_DIR)
    load_model(DEMO_DIR, device="cpu")
    figures["built"] = str(DEMO_DIR)


def cuda_tests(figures: dict, timeout: float) -> None:
    """tests/engine/test_cuda.py in a child process (a crash there is the test's, not the check's); counts and failures
    from its JUnit XML, the output's tail in the JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        runner = ["-m", "benchmarks.bare_image", "pytest"] if os.environ.get("GPU_CHECK_BARE_IMAGE") else ["-m",
                                                                                                          "pytest"]
        command = [sys.executable, *runner, "-q", "-p", "no:cacheprovider", "-rA", f"--junitxml={junit}",
                   "tests/engine/test_cuda.py"]
        if importlib.util.find_spec("pytest_timeout") is not None:  # the image has it: one hung test, not all
            command[-1:-1] = ["-p", "pytest_timeout", "--timeout=90"]
        env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            output, figures["returncode"] = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
            figures["timed_out_after_seconds"] = timeout
            output = output or ""
        figures["output_tail"] = output[-6000:]
        if junit.is_file():
            figures.update(_junit(junit))
    if figures.get("failed") or figures.get("errors") or "passed" not in figures:
        raise RuntimeError(f"CUDA tests: {figures.get('failed', '?')} failed, {figures.get('errors', '?')} errors")


def _junit(path: Path) -> dict:
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases = {}
    for case in suite.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {tag: (element.get("message") or "")[:500]}
        cases[case.get("name")] = outcome
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return {"tests": counts["tests"], "failed": counts["failures"], "errors": counts["errors"],
            "skipped_tests": counts["skipped"],
            "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"], "cases": cases}


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


def run(args: argparse.Namespace) -> dict:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    plan = plan_for(args.tiny)
    report = Report(args.out, args.budget_seconds)
    report.data.update({"command": " ".join(sys.argv), "tiny": args.tiny, "device": device})
    torch.set_grad_enabled(False)
    report.section("environment", lambda f: environment(f, device))
    report.section("ceilings", lambda f: ceilings(f, device))
    report.section("demo", demo)
    if not args.skip_tests:
        report.section("cuda_tests", lambda f: cuda_tests(f, timeout=max(30.0, min(args.tests_seconds,
                                                                                  report.left() - 60))),
                       needs_seconds=30)
    names = list(plan.models)
    for index, name in enumerate(names):
        reserve = MODEL_RESERVE_SECONDS * (len(names) - index - 1)
        report.section(name, lambda f, name=name, reserve=reserve: model_section(
            f, name, plan.models[name], device, plan, report, reserve), needs_seconds=40)
        gc.collect()  # the model of the section just ended, before the next one is built
        if device == "cuda":
            torch.cuda.empty_cache()
    report.data["finished"] = True
    report.write()
    return report.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and small counts (the CPU rehearsal)")
    parser.add_argument("--budget-seconds", type=float, default=400.0)
    parser.add_argument("--tests-seconds", type=float, default=120.0, help="at most this long for the CUDA tests")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("xformers").setLevel(logging.ERROR)
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    data = run(args)
    print(json.dumps(_summary(data), indent=1), flush=True)


def _summary(data: dict) -> dict:
    """The lines worth reading in a tool's output tail: what passed, each model's headline figures."""
    out: dict = {"out": "see the JSON file", "elapsed_seconds": data.get("elapsed_seconds")}
    for name, section in data["sections"].items():
        line = {"ok": section.get("ok"), "error": section.get("error"), "skipped": section.get("skipped")}
        if name == "ceilings":
            line["bandwidth_gb_per_s"] = section.get("bandwidth_gb_per_s")
        if name == "environment":
            line.update({k: section.get(k) for k in ("torch", "gpu", "driver")})
        if name == "cuda_tests":
            line.update({k: section.get(k) for k in ("passed", "failed", "errors", "skipped_tests")})
        if "prediction" in section:
            line["steps_per_second"] = section["prediction"].get("steps_per_second")
            line["engine_start_seconds"] = section["prediction"].get("engine_start_seconds")
            by_count = section.get("sessions", {}).get("by_count", {})
            line["aggregate_rtf"] = {c: v.get("audio_seconds_per_wall_second") for c, v in by_count.items()}
            line["first_chunk_s"] = {c: v.get("first_chunk_seconds_max") for c, v in by_count.items()}
            line["peak"] = section.get("memory_peak")
            line["targets"] = section.get("targets")
            for part in ("sessions", "step", "stock_audiocraft", "concurrent_predictions"):
                if isinstance(section.get(part), dict) and "error" in section[part]:
                    line[f"{part}_error"] = section[part]["error"][:300]
        out[name] = {k: v for k, v in line.items() if v is not None}
    return out


if __name__ == "__main__":
    main()
