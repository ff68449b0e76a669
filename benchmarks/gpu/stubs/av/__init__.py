"""GPU check stand-in for PyAV (see benchmarks/gpu/stubs/README.md): importable, unusable."""

STAND_IN = True


def open(*args, **kwargs):  # noqa: A001 (PyAV's own name)
    raise RuntimeError("av.open was called, but this is the GPU check's stand-in for PyAV (benchmarks/gpu/stubs)")


def __getattr__(name: str):
    raise AttributeError(f"av.{name}: this is the GPU check's stand-in for PyAV, which was not carried")
