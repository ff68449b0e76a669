"""GPU check stand-in for xformers (see benchmarks/gpu/stubs/README.md): importable, unusable."""

STAND_IN = True


def __getattr__(name: str):
    raise AttributeError(f"xformers.{name}: this is the GPU check's stand-in for xformers, which was not carried")
