"""The GPU check's JSON: each section's figures, error or skip, written out after every section, so that a run
killed at its limit still leaves what it measured."""

import json
import logging
import time
import traceback
import typing as tp
from pathlib import Path

logger = logging.getLogger("gpu_check")


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
