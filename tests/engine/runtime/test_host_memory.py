"""Freed host memory goes back to the system (engine.runtime.host_memory): glibc keeps what is freed below an
arena's top, and the engine's trim thread hands it back."""

import time
from pathlib import Path

import pytest

from engine.runtime.host_memory import HostMemoryTrim, give_back
from tests.support.helpers import wait_until


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def freed_below_the_top() -> bytearray:
    """200 MB of small blocks freed while a block allocated after them lives on: the heap cannot shrink from its
    top, so without a trim the freed pages stay resident. Returns the block that pins the top."""
    blocks = [bytearray(4000) for _ in range(50_000)]
    pin = bytearray(4000)
    del blocks
    return pin


@pytest.mark.skipif(not give_back(), reason="not glibc: nothing to trim")
def test_give_back_returns_what_glibc_would_keep():
    before = resident_mb()
    pin = freed_below_the_top()
    held = resident_mb() - before
    give_back()
    kept = resident_mb() - before
    assert held > 150, held  # glibc kept the freed blocks: the problem is real here
    assert kept < held - 150, (held, kept)
    del pin


@pytest.mark.skipif(not give_back(), reason="not glibc: nothing to trim")
def test_the_trim_thread_gives_memory_back_on_its_own_and_stops_when_closed():
    trim = HostMemoryTrim(every_seconds=0.2)
    try:
        give_back()
        before = resident_mb()
        pin = freed_below_the_top()
        assert wait_until(lambda: resident_mb() - before < 50, 10), resident_mb() - before
        del pin
    finally:
        trim.close()
    assert not trim.running
    trims = trim.trims
    time.sleep(0.5)
    assert trim.trims == trims


def test_zero_seconds_runs_nothing():
    trim = HostMemoryTrim(every_seconds=0)
    assert not trim.running
    trim.close()
