#!/usr/bin/env bash
# The prepared GPU check, for a bare machine with one NVIDIA GPU, Python 3.12 and torch preinstalled, no network:
# installs what the machine lacks from the wheels in .gpu-wheels/ (scripts/fetch_gpu_wheels.sh; carried by the
# device tool), the stand-ins of benchmarks/gpu/stubs for what is not carried, builds the demo checkpoint, then
# runs benchmarks/gpu/check.py: CUDA tests and benchmarks into $OUT/gpu_check.json (log: $OUT/gpu_check.log),
# all inside GPU_CHECK_SECONDS (480 s). Uses the machine's torch, whatever its version (the JSON says which).
#   bash benchmarks/gpu_check.sh            # OUT defaults to ./gpu-check-out
#   bash benchmarks/gpu_check.sh --skip-tests --skip-models --training-updates 300   # training only (docs/training.md)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT="${OUT:-$PWD/gpu-check-out}"
PY="${PYTHON:-python3}"
SITE="${GPU_CHECK_SITE:-/tmp/gpu-check-site}"
TOTAL="${GPU_CHECK_SECONDS:-480}"
mkdir -p "$OUT" "$SITE"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
started=$(date +%s)
echo "gpu_check.sh: $(date -u +%FT%TZ) on $(hostname); $("$PY" -V 2>&1)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | head -3
[ -d .gpu-wheels ] || echo "gpu_check.sh: no .gpu-wheels/ here: run scripts/fetch_gpu_wheels.sh and carry .gpu-wheels"
# install only the wheels whose distribution the machine does not have already
missing=$("$PY" - .gpu-wheels/*.whl <<'PY'
import importlib.metadata, re, sys
for path in sys.argv[1:]:
    name = re.sub(r"[-_.]+", "-", path.rsplit("/", 1)[-1].split("-")[0]).lower()
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        print(path)
PY
)
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $missing \
    || echo "gpu_check.sh: pip install failed (the check goes on; its environment section says what is missing)"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
for name in xformers spacy av; do
  "$PY" -c "import $name" 2>/dev/null || cp -r "benchmarks/gpu/stubs/$name" "$SITE/"
done
echo "gpu_check.sh: installed in $(( $(date +%s) - started )) s: $(echo "$missing" | wc -w) wheels"
left=$(( TOTAL - ($(date +%s) - started) ))
budget=$(( left - 50 ))  # sections start only within the budget; the hard limit below leaves time to write out
timeout -k 10 "$(( left - 10 ))" "$PY" -m benchmarks.gpu.check --out "$OUT/gpu_check.json" --budget-seconds "$budget" "$@"
rc=$?
echo "gpu_check.sh: exit $rc after $(( $(date +%s) - started )) s; results in $OUT/gpu_check.json"
exit $rc
