"""The prepared GPU check: CUDA tests, then the engine's figures on musicgen-small and -medium dims, in one JSON.

    python -m benchmarks.gpu.check --out OUT.json                   # on a GPU (benchmarks/gpu_check.sh runs this)
    python -m benchmarks.gpu.check --device cpu --tiny --out x.json  # the same script end to end on a CPU, ~2 min

A lease of a GPU is minutes long and nobody may be watching it, so every section runs in its own try/except and
records its error instead of ending the run; a global time budget skips what would not fit (recorded as
skipped); the JSON is rewritten after every section, so a run killed at its limit still leaves what it measured.
Sections:
- environment: torch (the machine's own, whatever its version; ours is pinned in requirements.in), GPU, driver,
  the carried wheels and which stand-ins (benchmarks/gpu/stubs) were used;
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
import subprocess
import sys
import tempfile
import typing as tp
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

from benchmarks import adapters_bench
from benchmarks.gpu.models import MODEL_RESERVE_SECONDS, model_section, plan_for
from benchmarks.gpu.report import Report
from benchmarks.gpu.training import training_section

logger = logging.getLogger("gpu_check")
ROOT = Path(__file__).resolve().parents[2]


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
    for line in (ROOT / "benchmarks" / "gpu" / "wheels.txt").read_text().splitlines():
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
        runner = ["-m", "benchmarks.gpu.bare_image", "pytest"] if os.environ.get("GPU_CHECK_BARE_IMAGE") else ["-m",
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
    names = [] if args.skip_models else list(plan.models)
    for index, name in enumerate(names):
        reserve = MODEL_RESERVE_SECONDS * (len(names) - index - 1)
        report.section(name, lambda f, name=name, reserve=reserve: model_section(
            f, name, plan.models[name], device, plan, report, reserve), needs_seconds=40)
        gc.collect()  # the model of the section just ended, before the next one is built
        if device == "cuda":
            torch.cuda.empty_cache()
    # many fine-tunes at once: 8 sessions with 8 rank-16 LoRA adapters vs 8 with none (benchmarks/adapters_bench.py)
    if not args.skip_models:
        counts = (dict(sessions=2, rank=4, context=32, steps=2, rounds=1) if args.tiny
                  else dict(sessions=8, rank=16, context=500, steps=20, rounds=5))
        report.section("adapters", lambda f: f.update(adapters_bench.run(device, **counts)), needs_seconds=90)
    if args.training_updates:
        report.section("training", lambda f: training_section(f, device, args.training_updates, report, args.tiny),
                       needs_seconds=60)
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
    parser.add_argument("--skip-models", action="store_true", help="no model sections (e.g. a training-only run)")
    parser.add_argument("--training-updates", type=int, default=0,
                        help="the training section (benchmarks/gpu/training.py) with this many updates; 0: none")
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
