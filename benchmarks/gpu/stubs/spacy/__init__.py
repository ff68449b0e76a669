"""GPU check stand-in for spacy (see benchmarks/gpu/stubs/README.md): importable, unusable."""

STAND_IN = True


def load(*args, **kwargs):
    raise RuntimeError("spacy.load was called, but this is the GPU check's stand-in for spacy (benchmarks/gpu/stubs)")


def __getattr__(name: str):
    raise AttributeError(f"spacy.{name}: this is the GPU check's stand-in for spacy, which was not carried")
