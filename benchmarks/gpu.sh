#!/usr/bin/env bash
# The GPU checks of issue #34 in one run, for a lent GPU machine (one GPU, 16 cores, Python 3.12
# with jax 0.11 and torch preinstalled), in under 8 minutes:
#
#   1. environment: the GPU, the versions, whether JAX and PyTorch see the GPU;
#   2. tests: the parallel, resume and accelerator-lowering tests (8 simulated CPU devices and 2
#      processes, as CI runs them; JAX_PLATFORMS=cpu keeps them off the GPU);
#   3. train_step: benchmarks/train_step.py --device gpu -- bfloat16 compute against PyTorch AMP
#      for resnet50 (batch 256), unet on a resnet34 encoder at 256 px, vit_base, swin_tiny and
#      efficientnet_lite0;
#   4. large_data: benchmarks/large_dataset.py's preparation, input pipeline and train-step rows
#      on the machine's cores, a short N (the full-size runs are hours, see the script).
#
# Each stage runs under its own time limit; a stage whose Python modules are missing there is
# reported as skipped, with what is missing, and the run goes on. The summary table and each
# benchmark's table are printed and written to OUTDIR/gpu_results.md; every stage's full output is
# OUTDIR/<stage>.log.
#
#   bash benchmarks/gpu.sh [OUTDIR]       # OUTDIR: default $OUT (the lent machine's), else runs/gpu
#
# Inputs it looks for: FLAXDERM_SHARED_DATA (or ../shared/data, or shared/data in the checkout) with
# a few real photographs for the large-data stage; wheels in .whl/ (flaxderm's missing
# dependencies, e.g. segmentation-models-pytorch for the U-Net's PyTorch twin), installed to
# /tmp/site first. Stage limits add up to 480 s; LIMIT_SCALE=2 doubles them.
set -euo pipefail

cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-runs/gpu}}
mkdir -p "$OUTDIR"
PYTHON=${PYTHON:-python3}
SCALE=${LIMIT_SCALE:-1}
RESULTS=$OUTDIR/gpu_results.md
SUMMARY=$OUTDIR/summary.md
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# The checkout's flaxderm (and benchmarks/ helpers), whatever is installed.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi

shared=${FLAXDERM_SHARED_DATA:-}
for candidate in ../shared/data shared/data; do
  if [[ -z $shared && -d $candidate ]]; then shared=$(cd "$candidate" && pwd); fi
done

echo "| stage | result | seconds | log |" > "$SUMMARY"
echo "|---|---|---:|---|" >> "$SUMMARY"

missing_modules() {  # the modules of "$@" that do not import
  "$PYTHON" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}

# stage NAME SECONDS "MODULES" COMMAND...: COMMAND under a limit of SECONDS x LIMIT_SCALE, its
# output in OUTDIR/NAME.log (and on stdout); skipped when one of MODULES is not importable.
stage() {
  local name=$1 limit=$(( $2 * SCALE )) modules=$3 log=$OUTDIR/$1.log
  shift 3
  local missing
  missing=$(missing_modules $modules)
  echo "=== $name (limit ${limit} s)"
  if [[ -n $missing ]]; then
    echo "skipped: missing Python modules: $missing" | tee "$log"
    echo "| $name | skipped: missing $missing | 0 | $log |" >> "$SUMMARY"
    return 0
  fi
  local start=$SECONDS result=passed code=0
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$log" || code=${PIPESTATUS[0]}
  if (( code == 124 || code == 137 )); then result="timed out after ${limit} s"
  elif (( code != 0 )); then result="failed (exit $code)"; fi
  echo "| $name | $result | $(( SECONDS - start )) | $log |" >> "$SUMMARY"
}

environment() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  echo "cores: $(nproc)"
  "$PYTHON" - <<'EOF'
import sys
import jax
import torch
print("python", sys.version.split()[0], "jax", jax.__version__, "torch", torch.__version__)
print("jax devices:", jax.devices())
assert jax.default_backend() == "gpu", "JAX does not see the GPU"
assert torch.cuda.is_available(), "PyTorch does not see the GPU"
EOF
}
export -f environment
export PYTHON
stage environment 30 "jax torch" bash -c environment

# On CPU devices by design: the multi-device proofs simulate 8 devices, and CI has no GPU.
workers=()
if [[ -z $(missing_modules xdist) ]]; then workers=(-n 4); fi
stage tests 120 "pytest ml_collections grain tensorflow_datasets orbax.checkpoint flax optax" \
  env JAX_PLATFORMS=cpu "$PYTHON" -m pytest -p no:randomly -q -x "${workers[@]}" \
  tests/train/test_train_parallel.py tests/train/test_train_resume.py \
  tests/train/test_accelerator_lowering.py

stage train_step 210 "flax optax torch timm" \
  "$PYTHON" benchmarks/train_step.py --device gpu --no-append --steps 10 --warmup 2 \
  --matmul-n 8192 \
  --models resnet50,unet_resnet34,vit_base,swin_tiny,efficientnet_lite0 \
  --batch-sizes resnet50=256,unet_resnet34=32,vit_base=128,swin_tiny=128,efficientnet_lite0=256

if [[ -n $shared ]]; then
  export FLAXDERM_SHARED_DATA=$shared
  cores=$(nproc)
  stage large_data 120 "cv2 grain tensorflow_datasets ml_collections flax optax" \
    "$PYTHON" benchmarks/large_dataset.py --images 1000 --no-record --sizes 224 --batch 64 \
    --prepare-workers "$cores" --input-workers "0,$(( cores / 2 )),$cores" --batches 10
else
  echo "| large_data | skipped: no real images (FLAXDERM_SHARED_DATA, ../shared/data, shared/data) | 0 | - |" >> "$SUMMARY"
fi

{
  echo "# GPU checks, $(date -u +%Y-%m-%dT%H:%MZ), $(hostname)"
  echo
  cat "$SUMMARY"
  for name in train_step large_data; do
    # Each benchmark ends by printing its RESULTS.md section: from its "## " heading on.
    if [[ -f $OUTDIR/$name.log ]] && grep -q '^## ' "$OUTDIR/$name.log"; then
      echo
      sed -n '/^## /,$p' "$OUTDIR/$name.log"
    fi
  done
} > "$RESULTS"
echo
cat "$RESULTS"
echo "written to $RESULTS"
! grep -Eq '\| (failed|timed out)' "$SUMMARY"
