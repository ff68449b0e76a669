#!/usr/bin/env bash
# Downloads the wheels the GPU check installs on a machine without network (benchmarks/gpu/wheels.txt) into
# .gpu-wheels/ (git-ignored), as cp312 manylinux x86_64 wheels; the sdist-only packages (audiocraft, flashy,
# antlr4-python3-runtime, docopt) are built here into pure-Python wheels. Prints the total size, which must stay
# far under the device tool's 64 MiB per call together with the working tree.
#   scripts/fetch_gpu_wheels.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-python3}"
out=.gpu-wheels
rm -rf "$out" && mkdir -p "$out"
pins=$(grep -v '^#' benchmarks/gpu/wheels.txt | sed '/^$/d')
platforms=()
for tag in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 \
           manylinux_2_35 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
binary=() source=()
for pin in $pins; do
  case "${pin%%==*}" in
    audiocraft|flashy|antlr4-python3-runtime|docopt) source+=("$pin") ;;
    *) binary+=("$pin") ;;
  esac
done
quiet() { grep -v "is ignored: it is neither" >&2 || true; }
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$out" "${binary[@]}" 2> >(quiet)
"$PYTHON" -m pip wheel -q --no-deps -w "$out" "${source[@]}" 2> >(quiet)
count=$(ls "$out"/*.whl | wc -l)
expected=$(echo "$pins" | wc -l)
[ "$count" -eq "$expected" ] || { echo "expected $expected wheels, got $count" >&2; exit 1; }
ls -l "$out"
echo "$count wheels, $(du -cb "$out"/*.whl | tail -1 | cut -f1) bytes in $out"
