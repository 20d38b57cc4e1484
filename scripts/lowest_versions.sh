#!/usr/bin/env bash
# Check the declared dependency floors: install gmpjax with every direct dependency at the lowest version
# pyproject.toml allows (uv's --resolution lowest-direct), print what was resolved, run a representative
# subset of the tests. Not part of CI (CI runs the README's command at the newest versions).
#
#   bash scripts/lowest_versions.sh            # resolve, install, test
#   bash scripts/lowest_versions.sh tests/test_models.py   # ... only these tests
#   LOWEST_SKIP_TESTS=1 bash scripts/lowest_versions.sh   # resolve and install only
#   PYTHON=python3.11 bash scripts/lowest_versions.sh      # the interpreter of the fresh venv
#   LOWEST_VENV=/tmp/lowvenv bash scripts/lowest_versions.sh   # keep the venv there (reused when it exists)
# The tests run in one process (-p no:xdist): the default subset (244 tests) takes about 5 minutes on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ -n "${LOWEST_VENV:-}" ]; then
  venv=$LOWEST_VENV
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/gmpjax-lowest.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  venv=$work/venv
fi

[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install -q --upgrade pip uv
# --reinstall: a reused venv is resolved again at the floors of the current pyproject.toml
uv pip install -q --resolution lowest-direct --reinstall -e ".[test]"

echo "== resolved (lowest-direct) with $(python --version)"
python - <<'PY'
from importlib.metadata import PackageNotFoundError, version

for name in (
    "jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint", "tqdm", "grain", "pillow", "scikit-learn",
    "absl-py", "tensorflow-datasets", "matplotlib", "tyro", "chex", "scipy", "pytest", "nbclient", "ipykernel",
):
    try:
        print(f"{name:18s} {version(name)}")
    except PackageNotFoundError:
        print(f"{name:18s} (not installed)")
PY

if [ -n "${LOWEST_SKIP_TESTS:-}" ]; then
  exit 0
fi
export GMPJAX_NO_DOWNLOAD=1 MPLBACKEND=Agg
if [ -d ../shared/data ]; then
  GMPJAX_DATA_DIR="$(cd ../shared/data && pwd)"
  export GMPJAX_DATA_DIR
fi
# the pure maps, the layers (incl. sharding metadata), the engine and both loops, checkpoints with kill-and-resume,
# the grain pipeline, the models and the doctests of the library modules
# (arguments given to this script replace that list)
if [ "$#" -eq 0 ]; then
  set -- tests/test_hyperspherical.py tests/test_layers.py tests/test_engine.py tests/test_loop.py \
    tests/test_host_loop.py tests/test_checkpoint.py tests/test_images.py tests/test_models.py \
    gmpjax/hyperspherical.py gmpjax/layers gmpjax/train gmpjax/data/images.py
fi
python -m pytest -q -p no:xdist -p no:cacheprovider "$@"
