"""JAX numerics policy for every test and doctest (``tests/`` and ``gmpjax/``), following equinox's conftest.

* ``jax_numpy_dtype_promotion = "strict"``: an operation on arrays of different dtypes (float32 with float64,
  int with float, bool with float) raises instead of promoting, so an accidental float64 leak or int -> float
  promotion fails the test. Python scalars stay weakly typed and are allowed.
* ``jax_numpy_rank_promotion = "allow"``: the library's bias adds ``(..., out) + (out,)`` are intended rank
  promotion, so "warn"/"raise" cannot be the default. Look for unintended broadcasts with
  ``GMPJAX_RANK_PROMOTION=warn pytest ...``.

``GMPJAX_DTYPE_PROMOTION=standard|strict`` and ``GMPJAX_RANK_PROMOTION=allow|warn|raise`` (or JAX's own
``JAX_NUMPY_DTYPE_PROMOTION`` / ``JAX_NUMPY_RANK_PROMOTION``) override the two flags for one run. They hold in this
process only: subprocesses that a test starts (scripts, notebook kernels) run with JAX's defaults.

Exceptions run inside ``jax.numpy_dtype_promotion("standard")``: a test marked
``@pytest.mark.standard_dtype_promotion("reason")``, or one whose node id starts with an entry of
``STANDARD_DTYPE_PROMOTION`` below (for tests and doctests that cannot carry the marker).
"""

from __future__ import annotations

import os
from collections.abc import Generator

import jax
import pytest

_DTYPE = os.environ.get("GMPJAX_DTYPE_PROMOTION", os.environ.get("JAX_NUMPY_DTYPE_PROMOTION", "strict"))
_RANK = os.environ.get("GMPJAX_RANK_PROMOTION", os.environ.get("JAX_NUMPY_RANK_PROMOTION", "allow"))
if _DTYPE not in ("standard", "strict"):
    raise ValueError(f"GMPJAX_DTYPE_PROMOTION must be 'standard' or 'strict' (got {_DTYPE!r}).")
if _RANK not in ("allow", "warn", "raise"):
    raise ValueError(f"GMPJAX_RANK_PROMOTION must be 'allow', 'warn' or 'raise' (got {_RANK!r}).")
jax.config.update("jax_numpy_dtype_promotion", _DTYPE)
jax.config.update("jax_numpy_rank_promotion", _RANK)

_OPTAX_ADAM = (
    "trains with optax.adam/adamw, whose bias correction `1 - decay**count` mixes a Python float with the int32 "
    "step count (an optax limitation, not gmpjax)"
)

_OPTAX_PLATEAU_BN = (
    _OPTAX_ADAM + "; also optax.contrib.reduce_on_plateau (int32 count times a float64 average) and flax's "
    "BatchNorm (promote_types(float64, float32)) under jax.enable_x64"
)
_OPTAX_SCHEDULE = _OPTAX_ADAM + "; also optax's piecewise schedules (`threshold - count` with a Python float)"

#: node-id prefix -> why the test runs with standard dtype promotion. Each was found by running the suite with
#: strict promotion: every failure came from optax or flax, none from gmpjax (issue 13).
STANDARD_DTYPE_PROMOTION: dict[str, str] = {
    "gmpjax/train/two_phase.py::gmpjax.train.two_phase": _OPTAX_ADAM,
    "tests/test_cab.py::test_track_cab_vmaps_over_replicas_and_runs_as_the_loops_track_hook": _OPTAX_ADAM,
    "tests/test_image_experiments.py::test_existing_checkpoints_are_not_overwritten": _OPTAX_SCHEDULE,
    "tests/test_image_experiments.py::test_quick_vgg6_end_to_end": _OPTAX_SCHEDULE,
    "tests/test_image_experiments.py::test_resume_matches_uninterrupted_run": _OPTAX_SCHEDULE,
    "tests/test_small_experiments.py::test_banana_quick": _OPTAX_ADAM,
    "tests/test_small_experiments.py::test_levy_quick": _OPTAX_PLATEAU_BN,
    "tests/test_triangular.py::test_two_phase_continues_training_after_switch": _OPTAX_ADAM,
    "tests/test_triangular.py::test_two_phase_regions_exact_in_phase1": _OPTAX_ADAM,
    "tests/test_triangular_experiments.py::test_triangular_1d_small_run": _OPTAX_ADAM,
    "tests/test_triangular_experiments.py::test_triangular_head_digits_small_run": _OPTAX_ADAM,
    "tests/test_uci.py::test_official_protocol_warns_and_uses_fixed_lr": _OPTAX_ADAM,
    "tests/test_uci.py::test_vmapped_sweep_equals_training_one_split_alone": _OPTAX_ADAM,
}


#: node-id prefixes of the end-to-end runs (scripts, notebooks, benchmarks, child processes) marked ``slow``, so that
#: ``pytest -q -m "not slow"`` is the fast run. ``pytest -q`` (CI) runs them all.
SLOW: tuple[str, ...] = (
    "tests/test_benchmarks.py",
    "tests/test_image_experiments.py",
    "tests/test_notebooks_and_quickstart.py",
    "tests/test_small_experiments.py",
    "tests/test_tensor_parallel.py",
    "tests/test_transformer_lm.py",
    "tests/test_triangular_experiments.py",
    "tests/test_uci.py::test_quick_experiment_cli_runs",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "standard_dtype_promotion(reason): run this test with jax_numpy_dtype_promotion='standard'"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


def _exception_reason(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("standard_dtype_promotion")
    if marker is not None:
        return str(marker.args[0]) if marker.args else "marked"
    for prefix, reason in STANDARD_DTYPE_PROMOTION.items():
        if item.nodeid.startswith(prefix):
            return reason
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """Setup, call and teardown of an exception run with standard dtype promotion."""
    if _DTYPE == "strict" and _exception_reason(item) is not None:
        with jax.numpy_dtype_promotion("standard"):
            return (yield)
    return (yield)
