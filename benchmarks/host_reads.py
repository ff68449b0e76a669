"""Host reads per decode step on the LM thread, counted from outside the engine.

    .venv/bin/python -m benchmarks.host_reads            # a 3 s prediction, then two live sessions

On a GPU every read of a tensor's value by the host (`.item()`, `int(t)`, `bool(t)`, `.tolist()`, `.cpu()`,
`.numpy()`, `.nonzero()`, a tensor used as a Python index, a boolean-mask index) waits for the device, and a step
that makes one cannot be one graph replay. A torch function mode entered on the LM thread (and only there: the
codec thread reads tokens back by design) counts them, and a wrapper counts the scheduler's decode steps, so the
figure is reads per step for all rows together. On a CPU the reads cost nothing, but they are the same calls.
"""

import argparse
import json
import logging
import threading
import typing as tp
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger("host_reads")

READS = {"item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__"}


def _is_read(func: tp.Callable, args: tuple, kwargs: dict) -> bool:
    name = getattr(func, "__name__", "")
    if name in READS:
        return True
    if name == "__getitem__" and len(args) > 1:
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
    if name == "to":
        targets = list(args[1:]) + [kwargs.get("device")]
        return any(str(t).startswith("cpu") for t in targets if isinstance(t, (str, torch.device)))
    return False


class ReadCounter(TorchFunctionMode):
    """Counts host reads made on the thread that entered it, by kind."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter = Counter()
        self._thread = threading.get_ident()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if threading.get_ident() == self._thread and _is_read(func, args, kwargs):
            self.reads[getattr(func, "__name__", repr(func))] += 1
        return func(*args, **kwargs)


class LMThreadReads:
    """Counts host reads on an engine's LM thread and its decode steps while active (a context manager)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.steps = 0
        self.counter: tp.Optional[ReadCounter] = None
        self._real_step = None

    def __enter__(self) -> "LMThreadReads":
        scheduler = self.engine.scheduler
        self._real_step = real = scheduler._step

        def counted(active):
            self.steps += 1
            return real(active)

        def enter() -> ReadCounter:
            counter = ReadCounter()
            counter.__enter__()
            return counter

        self.counter = self.engine.lm_worker.call(enter).result(timeout=60)
        scheduler._step = counted
        return self

    def __exit__(self, *exc) -> None:
        self.engine.lm_worker.call(lambda: self.counter.__exit__(None, None, None)).result(timeout=60)
        del self.engine.scheduler._step  # back to the class's method

    @property
    def per_step(self) -> float:
        return sum(self.counter.reads.values()) / max(1, self.steps)


def measure(engine, prediction_seconds: float = 3.0, session_chunks: int = 4) -> dict:
    """Reads per step for one prediction alone, then for two live sessions (through the engine's public API)."""
    from engine.api import BatchRequest, SessionSettings

    engine.generate(BatchRequest(prompt="warm up", duration=1, seed=0)).wait()
    with LMThreadReads(engine) as prediction:
        engine.generate(BatchRequest(prompt="lo-fi beat", duration=prediction_seconds, seed=1)).wait()
    sessions = [engine.open_session(SessionSettings(styles=(style,), weights=(1.0,), chunk_seconds=1.0), seed=i)
                for i, style in enumerate(("dub", "jazz"))]
    try:
        for session in sessions:
            session.next_chunk().result(timeout=120)
        with LMThreadReads(engine) as live:
            for _ in range(session_chunks):
                for future in [session.next_chunk() for session in sessions]:
                    future.result(timeout=120)
    finally:
        for session in sessions:
            session.close()
    return {"prediction": {"steps": prediction.steps, "reads_per_step": prediction.per_step,
                           "reads": dict(prediction.counter.reads)},
            "two_sessions": {"steps": live.steps, "reads_per_step": live.per_step, "reads": dict(live.counter.reads)}}


def main() -> None:
    from benchmarks.engine_bench import cpu_description
    from engine.api import Engine, EngineConfig
    from weights import DEMO_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="prediction length")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    engine = Engine.load(DEMO_DIR, device="cpu", config=EngineConfig(max_sessions=2, weight_format="float32"))
    try:
        result = {"cpu": cpu_description(), **measure(engine, args.seconds)}
    finally:
        engine.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
