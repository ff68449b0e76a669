"""The prepared GPU check (run by benchmarks/gpu_check.sh on a lent machine), its wheel lists and stand-ins,
and the bare-image simulator that rehearses it on a CPU."""
