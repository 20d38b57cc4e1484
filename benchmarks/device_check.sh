#!/usr/bin/env bash
# Accelerator check (issues 10 and 18): install gmpjax from this checkout, time the GmP layers at accelerator
# shapes in float32 and bfloat16, a VGG-6 train step (SP, BN, GmP+IMN) and the u(theta) kernels
# (Pallas against the XLA forms), write benchmarks/results/<device-kind>.json and pick the kernel for the backend.
#
# Usage (from anywhere; about 4-6 minutes on one GPU, well under 8):
#   bash benchmarks/device_check.sh              # the real check (any backend JAX finds; meant for a GPU)
#   bash benchmarks/device_check.sh --quick      # tiny shapes, runs in about a minute on a CPU (script path test)
#   bash benchmarks/device_check.sh --dry-run    # print what would run, run nothing
# Options: --out DIR (default benchmarks/results), --python PY (default: python3, or $PYTHON).
#
# What "picks the kernel" means: the JSON gets "chosen_impl", the implementation with the fastest
# forward+backward of u(theta) at 4096x4095 angles on this device. `native` is the primitive with the
# backend's current kernel (_unit_kernel.DEVICE_KERNELS, "xla" until measured) and `pallas` the same
# primitive on the Pallas kernels. If `pallas` wins, the script prints the line to put into
# DEVICE_KERNELS in gmpjax/_unit_kernel.py, which is where impl="auto" reads it at lowering.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=benchmarks/results
QUICK=0
DRY=0
PY=${PYTHON:-python3}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --python) PY=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

run() {  # echo a command, and run it unless --dry-run
  echo "+ $*"
  if [[ $DRY -eq 0 ]]; then "$@"; fi
}

# 1. What machine is this?
HAVE_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  HAVE_GPU=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  echo "no NVIDIA GPU found (nvidia-smi missing or failing); the check runs on whatever backend JAX finds"
fi

# 2. Install from the project's own files. Nothing is reinstalled when it is already importable,
#    so a GPU image that ships jax with CUDA keeps it.
if ! "$PY" -c "import gmpjax, flax, optax" >/dev/null 2>&1; then
  run "$PY" -m pip install -q -e .
fi
if [[ $HAVE_GPU -eq 1 ]] && ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" >/dev/null 2>&1; then
  JAX_VERSION=$("$PY" -c "import jax; print(jax.__version__)")
  # the CUDA plugin must match the installed jax exactly
  if ! run "$PY" -m pip install -q "jax[cuda12]==${JAX_VERSION}"; then
    echo "device_check.sh: could not install jax[cuda12]==${JAX_VERSION} (no network?); install a CUDA build" \
         "of jax ${JAX_VERSION} and rerun" >&2
    exit 1
  fi
fi
if [[ $DRY -eq 0 ]]; then
  "$PY" -c "import jax; print('jax', jax.__version__, 'backend', jax.default_backend(), jax.devices())"
fi

# 3. The measurements, one process, interleaved within each group.
if [[ $QUICK -eq 1 ]]; then
  ARGS=(--quick --groups unit,dense,vgg --impls cumprod,native --dtypes float32,bfloat16)
  LIMIT=600
else
  ARGS=(--groups unit,dense,vgg --impls cumprod,assoc,fast,native,pallas
        --dense-shapes 1024x4096x4096,64x4096x4096,256x1024x1024 --dtypes float32,bfloat16 --budget 12)
  LIMIT=450  # leaves the install and the start-up inside 8 minutes
fi
run timeout "$LIMIT" "$PY" -m benchmarks.layers "${ARGS[@]}" --pick-impl --out "$OUT"

# 4. The pick.
if [[ $DRY -eq 0 ]]; then
  "$PY" - "$OUT" <<'EOF'
import glob, json, os, sys

import jax

from benchmarks.layers import device_file_name

path = os.path.join(sys.argv[1], device_file_name(jax.devices()[0].device_kind) + ".json")
report = json.load(open(path))
unit = report["unit"]["results"]
print(f"{path}: u(theta) fwd+bwd at {report['unit']['shape']} (median ms, peak MiB):")
for name, r in sorted(unit.items(), key=lambda kv: kv[1]["median_ms"]):
    print(f"  {name:10s} {r['median_ms']:9.2f}  {(r['memory'].get('peak') or 0) / 2**20:8.1f}")
backend = report["device"]["backend"]
platform = {"gpu": "cuda"}.get(backend, backend)
kernel = "pallas" if report["chosen_impl"] == "pallas" else "xla"
print(f"chosen_impl for backend {backend}: {report['chosen_impl']}")
print(f'kernel for impl="auto": DEVICE_KERNELS["{platform}"] = "{kernel}"  (gmpjax/_unit_kernel.py)')
EOF
fi
