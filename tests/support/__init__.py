"""What the tests share, and the benchmarks borrow: clients of each protocol, servers to run them against, audio
and model fixtures' builders. Not test modules: nothing here is collected, and no test module imports another.

`ROOT` is the repository; `DATA` the files the tests read (the seed's client, the Replicate schema)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
