"""Benchmark GmP layers against Dense / Conv / WN / BN, and the u(theta) map against the sin/cos floor.

Run ``python -m benchmarks.layers [--quick] [--out benchmarks/results]``; print the markdown
tables of a saved run with ``python -m benchmarks.layers --tables-from benchmarks/results/cpu.json``.
Every case is a ``jax.jit``-compiled forward+backward pass (value and gradient of a scalar
loss with respect to the parameters and the input), compiled ahead of time, warmed up, then
run *interleaved* with the other variants of the same group, in one process, so that the
reported ratios are side by side under the same machine load: ``reps`` rounds (30 by
default), fewer (never below ``min_reps``) where a round of the group is so slow that
``reps`` rounds would exceed ``group_budget_s``. Each case reports the median and quartiles
of the wall time, the median process CPU time (ms) and the peak memory of the compiled
computation from XLA's memory analysis.

Groups:

* ``unit``: the map theta (m, n-1) -> u (m, n) for every implementation in
  ``gmpjax._unit_impls.IMPLS`` against two floors: the *native floor*, numpy's SIMD
  ``sin`` + ``cos`` of the same theta on one thread (what this CPU can do for the bare
  trigonometry; the issue-18 targets use it), and XLA's *floor*, value+gradient of
  ``sum(a * sin(theta) + b * cos(theta))`` with ``jnp.sin``/``jnp.cos``; plus the default
  path ``hyperspherical.angles_to_unit`` (which renormalises u), forward (``auto_fwd``) and
  forward + backward (``auto``).
* ``dense``: ``nnx.Linear`` + ReLU vs ``WNDense`` vs ``GmPDense`` (default impl and the
  naive ``cumprod`` impl) at the issue's (batch, in, out) shapes.
* ``conv``: ``nnx.Conv`` + ReLU vs ``GmPConv`` on the six VGG-6 conv shapes.
* ``vgg``: a full VGG-6 SGD train step (``gmpjax.train.engine.make_train_step``) for
  SP, BN and GmP+IMN.
* ``accum``: a train step with gradient accumulation (``make_train_step(..., microbatches=k)``,
  k microbatches of ``accum_micro`` rows) of one ``GmPDense`` layer against one ``nnx.Linear``
  + ReLU with the same accumulation, at ``accum_features -> accum_features``.

``--dtypes float32,bfloat16`` times the dense group in each computation dtype (parameters
stay float32; the layers get ``dtype=``). ``--pick-impl`` records in the JSON the u(theta)
implementation with the fastest forward+backward in the unit group (``chosen_impl``).

Writes ``<out>/<device-kind>.json`` and prints ratio tables (GmP / baseline).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import out_folder
from gmpjax import _unit_impls, records
from gmpjax import hyperspherical as hs
from gmpjax.layers import GmPConv, GmPDense, WNDense

try:  # tqdm is a dependency, but keep the benchmark usable without it
    from tqdm import tqdm
except ImportError:  # pragma: no cover

    def tqdm(it, **_):
        return it


Array = jax.Array

ISSUE_DENSE_SHAPES = ((256, 1024, 1024), (1024, 784, 256), (64, 4096, 4096), (4096, 13, 100), (1024, 4096, 4096))

#: Time targets of issue 18 (wall-time ratios): (group, key, variant, baseline, max ratio, backend).
#: The unit key is (m, n) with theta (m, n-1); the dense keys are (batch, in, out, dtype); the accum key
#: is (k, micro, features). ``native_floor`` is numpy's SIMD sin + cos of the same theta, one thread.
TARGETS: tuple[tuple[str, Any, str, str, float, str], ...] = (
    ("unit", (4096, 4096), "auto_fwd", "native_floor", 1.5, "cpu"),
    ("unit", (4096, 4096), "auto", "native_floor", 3.0, "cpu"),
    ("dense", (256, 1024, 1024, "float32"), "gmp", "dense", 1.3, "cpu"),
    ("dense", (1024, 784, 256, "float32"), "gmp", "dense", 1.1, "cpu"),
    ("dense", (4096, 13, 100, "float32"), "gmp", "dense", 1.2, "cpu"),
    ("dense", (64, 4096, 4096, "float32"), "gmp", "dense", 1.8, "cpu"),
    ("accum", (8, 64, 4096), "gmp", "dense", 1.3, "cpu"),
    ("dense", (1024, 4096, 4096, "bfloat16"), "gmp", "dense", 1.10, "gpu"),
    ("dense", (64, 4096, 4096, "bfloat16"), "gmp", "dense", 2.0, "gpu"),
    ("vgg", None, "gmp_imn", "bn", 1.15, "gpu"),
)
#: Memory targets of issue 10 (peak bytes, GmPDense step / nnx.Linear step, every backend), float32.
MEMORY_TARGETS: dict[tuple[int, int, int], float] = {
    (1024, 784, 256): 1.3,
    (4096, 13, 100): 1.3,
    (256, 1024, 1024): 2.0,
    (64, 4096, 4096): 2.2,
}
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class BenchConfig:
    """What to run. ``quick()`` gives a seconds-long smoke configuration."""

    reps: int = 30
    min_reps: int = 7  # never fewer rounds than this, whatever group_budget_s says
    group_budget_s: float = 25.0  # cap on the timed rounds of one group (estimated from the warm-up)
    warmup: int = 2
    unit_shape: tuple[int, int] = (4096, 4096)  # (m, n): theta has shape (m, n-1)
    unit_impls: tuple[str, ...] = ("cumprod", "fast", "tiled", "native")  # --impls for others
    dense_shapes: tuple[tuple[int, int, int], ...] = ISSUE_DENSE_SHAPES
    dtypes: tuple[str, ...] = ("float32",)  # computation dtypes of the dense group
    naive_max_weights: int = 1 << 22  # time GmPDense(impl="cumprod") only up to this many weights
    conv_batch: int = 16
    conv_hw: int = 32
    widths: tuple[int, int, int] = (128, 256, 512)
    vgg_batch: int = 16
    vgg_classes: int = 1000
    conv_layers: int = 6  # how many of the six VGG-6 conv shapes to time
    accum_k: int = 8
    accum_micro: int = 64
    accum_features: int = 4096
    groups: tuple[str, ...] = ("unit", "dense", "accum", "conv", "vgg")
    pick_impl: bool = False
    seed: int = 0

    @classmethod
    def quick(cls) -> BenchConfig:
        default = _unit_impls.default_for_backend(jax.default_backend())
        impls = tuple(dict.fromkeys(("cumprod", default)))
        return cls(
            reps=3,
            min_reps=1,
            warmup=1,
            unit_shape=(64, 64),
            unit_impls=impls,
            dense_shapes=((32, 64, 48),),
            naive_max_weights=0,
            conv_batch=2,
            conv_hw=8,
            widths=(4, 8, 8),
            conv_layers=1,
            vgg_batch=2,
            vgg_classes=10,
            accum_k=2,
            accum_micro=4,
            accum_features=32,
            groups=("unit", "dense", "accum", "conv"),
        )


# ---------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------


def _block(tree):
    return jax.block_until_ready(tree)


def memory_stats(compiled) -> dict[str, int | None]:
    """Byte counts of a compiled computation from ``compiled.memory_analysis()``.

    ``peak = argument + output + temp - alias``: the buffers a call needs at once
    (``temp`` is the size of XLA's buffer assignment for intermediates, which already
    reuses dead buffers). XLA's own ``peak_memory_in_bytes`` is kept as ``xla_peak``;
    on CPU it reports only arguments + outputs.
    """
    ma = compiled.memory_analysis()
    if ma is None:
        return {"peak": None}
    out = {k: int(getattr(ma, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "temp", "alias")}
    out["xla_peak"] = int(getattr(ma, "peak_memory_in_bytes", 0) or 0)
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


@dataclass
class Case:
    """One compiled function with its arguments."""

    fn: Callable
    args: tuple
    compiled: Any = None
    compile_s: float = 0.0
    memory: dict = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)

    def compile(self) -> None:
        t0 = time.perf_counter()
        self.compiled = jax.jit(self.fn).lower(*self.args).compile()
        self.compile_s = time.perf_counter() - t0
        self.memory = memory_stats(self.compiled)

    def run(self) -> tuple[float, float]:
        """One call: (wall seconds, process CPU seconds over all threads)."""
        t0, c0 = time.perf_counter(), time.process_time()
        _block(self.compiled(*self.args))
        return time.perf_counter() - t0, time.process_time() - c0


@dataclass
class NumpyCase(Case):
    """A plain numpy function (no JAX, no compilation), timed in the same rounds as the JAX cases."""

    def compile(self) -> None:
        self.compiled = self.fn
        self.memory = {"peak": None}


def time_interleaved(
    cases: dict[str, Case], reps: int, warmup: int, desc: str = "", budget_s: float | None = None, min_reps: int = 1
) -> dict[str, dict]:
    """Compile every case, warm up, then time ``reps`` rounds; each round runs every case once.

    With ``budget_s``, the number of rounds is cut to ``budget_s / (wall time of the last
    warm-up round)`` when that is smaller, but never below ``min_reps``.

    Returns ``{name: {"median_ms", "q1_ms", "q3_ms", "min_ms", "cpu_ms", "compile_s", "memory"}}``:
    wall-clock statistics, and ``cpu_ms`` the median process CPU time (all threads) of a
    call, which is what to compare on a CPU shared with other jobs (wall time there
    mostly measures the wait for a core).
    """
    round_s = 0.0
    for c in cases.values():
        c.compile()
        wall = 0.0
        for _ in range(warmup):
            wall, _ = c.run()
        round_s += wall
    if budget_s is not None and round_s > 0:
        reps = max(min_reps, min(reps, int(budget_s / round_s)))
    for _ in tqdm(range(reps), desc=desc, leave=False, disable=None):
        for c in cases.values():
            wall, cpu = c.run()
            c.times.append(wall)
            c.cpu_times.append(cpu)
    res = {}
    for name, c in cases.items():
        ms = np.asarray(c.times) * 1e3
        res[name] = {
            "median_ms": float(np.median(ms)),
            "q1_ms": float(np.percentile(ms, 25)),
            "q3_ms": float(np.percentile(ms, 75)),
            "min_ms": float(ms.min()),
            "cpu_ms": float(np.median(c.cpu_times) * 1e3),
            "compile_s": c.compile_s,
            "reps": reps,
            "memory": c.memory,
        }
    return res


def _timed(cfg: BenchConfig, cases: dict[str, Case], desc: str) -> dict[str, dict]:
    return time_interleaved(cases, cfg.reps, cfg.warmup, desc=desc, budget_s=cfg.group_budget_s, min_reps=cfg.min_reps)


def grad_case(module: nnx.Module, x: Array, post: Callable[[Array], Array] | None = None) -> Case:
    """Value and gradient w.r.t. (params, x) of ``mean(post(module(x))**2)``."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def loss_and_grads(params, x):
        def loss(p, x):
            y = nnx.merge(graphdef, p, rest)(x)
            if post is not None:
                y = post(y)
            return jnp.mean(jnp.square(y))

        return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

    return Case(loss_and_grads, (params, x))


# ---------------------------------------------------------------------------
# groups
# ---------------------------------------------------------------------------


def native_floor(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The machine's floor for the map: numpy's SIMD ``sin`` and ``cos`` of theta (one thread, as numpy runs)."""
    return np.sin(theta), np.cos(theta)


def bench_unit(cfg: BenchConfig) -> dict:
    """u(theta) fwd+bwd for every implementation vs the sin/cos floors at ``cfg.unit_shape``.

    Two floors: ``floor`` is XLA's own value and gradient of ``sum(a sin theta + b cos theta)``
    (what XLA makes of the bare trigonometry), and ``native_floor`` is numpy's SIMD sin + cos of
    the same theta on one thread (what this CPU can do; the targets use it).
    """
    m, n = cfg.unit_shape
    k1, k2, k3 = jax.random.split(jax.random.key(cfg.seed), 3)
    theta = hs.sample_uniform_angles(k1, (m, n - 1))
    g = jax.random.normal(k2, (m, n))
    a, b = jax.random.normal(k3, (2, m, n - 1))

    def floor(theta, a, b):
        return jax.value_and_grad(lambda t: jnp.sum(a * jnp.sin(t) + b * jnp.cos(t)))(theta)

    def floor_fwd(theta):
        return jnp.sin(theta), jnp.cos(theta)

    def unit_case(fn):
        return lambda theta, g: jax.value_and_grad(lambda t: jnp.sum(g * fn(t)))(theta)

    theta_np = np.asarray(theta)
    cases: dict[str, Case] = {
        "native_floor": NumpyCase(native_floor, (theta_np,)),
        "floor": Case(floor, (theta, a, b)),
        "floor_fwd": Case(floor_fwd, (theta,)),
    }
    for name in cfg.unit_impls:
        cases[name] = Case(unit_case(_unit_impls.IMPLS[name]), (theta, g))
    cases["auto"] = Case(unit_case(hs.angles_to_unit), (theta, g))  # default impl + renormalisation
    default = hs.default_impl()
    cases["auto_fwd"] = Case(lambda t: hs.angles_to_unit(t), (theta,))
    res = _timed(cfg, cases, f"unit {m}x{n - 1}")
    return {"shape": [m, n], "default_impl": default, "results": res}


def bench_dense(cfg: BenchConfig) -> list[dict]:
    """GmPDense vs nnx.Linear + ReLU vs WNDense at every (shape, computation dtype)."""
    out = []
    for dtype_name in cfg.dtypes:
        dtype = jnp.dtype(dtype_name)
        for batch, n_in, n_out in cfg.dense_shapes:
            rngs = nnx.Rngs(cfg.seed)
            x = jax.random.normal(jax.random.key(cfg.seed + 1), (batch, n_in)).astype(dtype)
            cases = {
                "dense": grad_case(nnx.Linear(n_in, n_out, dtype=dtype, rngs=rngs), x, post=nnx.relu),
                "wn": grad_case(WNDense(n_in, n_out, dtype=dtype, rngs=rngs), x),
                "gmp": grad_case(GmPDense(n_in, n_out, dtype=dtype, rngs=rngs), x),
            }
            if n_in * n_out <= cfg.naive_max_weights:
                cases["gmp_cumprod"] = grad_case(GmPDense(n_in, n_out, impl="cumprod", dtype=dtype, rngs=rngs), x)
            res = _timed(cfg, cases, f"dense {batch}x{n_in}->{n_out} {dtype_name}")
            out.append({"shape": [batch, n_in, n_out], "dtype": dtype_name, "results": res})
    return out


def bench_accum(cfg: BenchConfig) -> dict:
    """One SGD step with ``accum_k`` microbatches of ``accum_micro`` rows: GmPDense vs nnx.Linear + ReLU."""
    from gmpjax.train.engine import init_train_state, make_train_step

    k, micro, f = cfg.accum_k, cfg.accum_micro, cfg.accum_features
    tx = optax.sgd(0.01)
    x = jax.random.normal(jax.random.key(cfg.seed + 5), (k * micro, f))

    class DenseRelu(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.linear = nnx.Linear(f, f, rngs=rngs)

        def __call__(self, x):
            return nnx.relu(self.linear(x))

    def loss_fn(model, xb):
        return jnp.mean(jnp.square(model(xb)))

    cases = {}
    for name, model in (("dense", DenseRelu(nnx.Rngs(cfg.seed))), ("gmp", GmPDense(f, f, rngs=nnx.Rngs(cfg.seed)))):
        graphdef, state = init_train_state(model, tx)
        cases[name] = Case(make_train_step(graphdef, tx, loss_fn, microbatches=k), (state, x))
    res = _timed(cfg, cases, f"accum {k}x{micro} {f}->{f}")
    return {"k": k, "micro": micro, "features": f, "results": res}


def vgg6_conv_shapes(cfg: BenchConfig) -> list[tuple[int, int, int]]:
    """(spatial size, in channels, out channels) of the six VGG-6 convolutions."""
    w0, w1, w2 = cfg.widths
    hw = cfg.conv_hw
    shapes = [(hw, 3, w0), (hw, w0, w0), (hw // 2, w0, w1), (hw // 2, w1, w1), (hw // 4, w1, w2), (hw // 4, w2, w2)]
    return shapes[: cfg.conv_layers]


def bench_conv(cfg: BenchConfig) -> list[dict]:
    out = []
    for hw, cin, cout in vgg6_conv_shapes(cfg):
        rngs = nnx.Rngs(cfg.seed)
        x = jax.random.normal(jax.random.key(cfg.seed + 2), (cfg.conv_batch, hw, hw, cin))
        cases = {
            "conv": grad_case(nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs), x, post=nnx.relu),
            "gmp": grad_case(GmPConv(cin, cout, (3, 3), padding="SAME", rngs=rngs), x),
        }
        res = _timed(cfg, cases, f"conv {hw}x{hw} {cin}->{cout}")
        out.append({"shape": [cfg.conv_batch, hw, hw, cin, cout], "results": res})
    return out


def bench_vgg(cfg: BenchConfig) -> dict:
    """A full VGG-6 train step (SGD + momentum, softmax cross-entropy) for SP, BN and GmP+IMN."""
    try:
        from gmpjax.models.vgg import VGG6
    except ImportError as e:  # another part of the project may not be there yet
        return {"skipped": f"gmpjax.models.vgg.VGG6 not importable ({e})"}
    from gmpjax.train.engine import init_train_state, make_train_step

    tx = optax.sgd(0.01, momentum=0.9)
    x = jax.random.normal(jax.random.key(cfg.seed + 3), (cfg.vgg_batch, cfg.conv_hw, cfg.conv_hw, 3))
    y = jax.random.randint(jax.random.key(cfg.seed + 4), (cfg.vgg_batch,), 0, cfg.vgg_classes)

    def loss_fn(model, batch):
        xb, yb = batch
        return optax.softmax_cross_entropy_with_integer_labels(model(xb), yb).mean()

    cases = {}
    for p in ("sp", "bn", "gmp_imn"):
        model = VGG6(cfg.vgg_classes, parameterization=p, widths=cfg.widths, rngs=nnx.Rngs(cfg.seed))
        graphdef, state = init_train_state(model, tx)
        cases[p] = Case(make_train_step(graphdef, tx, loss_fn), (state, (x, y)))
    res = _timed(cfg, cases, "vgg6 train step")
    return {
        "batch": cfg.vgg_batch,
        "image": [cfg.conv_hw, cfg.conv_hw, 3],
        "widths": list(cfg.widths),
        "num_classes": cfg.vgg_classes,
        "results": res,
    }


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------


def device_info() -> dict:
    """The timed device and its host (``gmpjax.records.machine``), the load at the start and ``nvidia-smi``'s GPU."""
    m = records.machine()
    return {
        "backend": m["backend"],
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "cpu_count": m["cores"],
        "processor": m["cpu"],
        "python": m["python"],
        "jax": m["jax"],
        "load_avg_start": records.load_average(),
        "gpu": _nvidia_smi(),
    }


def _nvidia_smi() -> str | None:
    """``name, memory, driver`` of the first GPU from ``nvidia-smi``, or None without one."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def machine_loaded(device: dict) -> bool | None:
    """Whether other work competed for the host: 1-minute load average above half the cores, start or end."""
    loads = [(device.get(k) or [None])[0] for k in ("load_avg_start", "load_avg_end")]
    loads = [v for v in loads if v is not None]
    if not loads or not device.get("cpu_count"):
        return None
    return max(loads) > 0.5 * device["cpu_count"]


def device_file_name(kind: str) -> str:
    """``"NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"``; ``"cpu" -> "cpu"``."""
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "unknown"


def primary_metric(backend: str) -> str:
    """The timing that ratios and targets use: process CPU time on a CPU backend, wall time elsewhere.

    On a CPU shared with other jobs the wall time of a call includes waiting for a
    core, which is the same for no variant; the CPU time does not. Both are reported.
    """
    return "cpu_ms" if backend == "cpu" else "median_ms"


def _ratio(res: dict, a: str, b: str, key: str = "median_ms") -> float | None:
    if a not in res or b not in res or not res[b][key]:
        return None
    return res[a][key] / res[b][key]


def _mem_ratio(res: dict, a: str, b: str) -> float | None:
    if a not in res or b not in res:
        return None
    pa, pb = res[a]["memory"].get("peak"), res[b]["memory"].get("peak")
    return pa / pb if pa and pb else None


def _dense_key(e: dict) -> tuple:
    return (*e["shape"], e.get("dtype", "float32"))


def check_targets(report: dict) -> list[dict]:
    """Compare measured ratios with the issue's targets (only those measured in this run).

    Time targets are judged on the wall-time medians (as the issue states them; only meaningful
    on an idle machine, see ``device.loaded``), with the process-CPU-time ratio alongside.
    """
    backend = report["device"]["backend"]
    rows = []
    for group, key, var, base, limit, tgt_backend in TARGETS:
        res, where = None, ""
        if group == "unit" and "results" in report.get("unit", {}):
            if tuple(report["unit"]["shape"]) == key:
                res, where = report["unit"]["results"], f"theta {key[0]}x{key[1] - 1}"
        elif group == "dense":
            for e in report.get("dense", []):
                if _dense_key(e) == key:
                    res, where = e["results"], "x".join(map(str, key[:3])) + f" {key[3]}"
        elif group == "accum" and "results" in report.get("accum", {}):
            a = report["accum"]
            if (a["k"], a["micro"], a["features"]) == key:
                res, where = a["results"], f"k={key[0]} x {key[1]} at {key[2]}->{key[2]}"
        elif group == "vgg" and "results" in report.get("vgg", {}):
            res, where = report["vgg"]["results"], "train step"
        same_backend = tgt_backend == backend or (tgt_backend == "gpu" and backend in ("gpu", "cuda", "rocm"))
        ratio = _ratio(res, var, base) if (res is not None and same_backend) else None
        rows.append(
            {
                "target": f"{group} {var}/{base} {where or key} <= {limit} ({tgt_backend}, wall)",
                "metric": "median_ms",
                "ratio": ratio,
                "ratio_cpu": _ratio(res, var, base, "cpu_ms") if ratio is not None else None,
                "met": (ratio <= limit) if ratio is not None else None,
            }
        )
    for e in report.get("dense", []):
        shape = tuple(e["shape"])
        limit = MEMORY_TARGETS.get(shape)
        r = _mem_ratio(e["results"], "gmp", "dense")
        if limit is not None and r is not None and e.get("dtype", "float32") == "float32":
            rows.append(
                {
                    "target": f"memory dense gmp/dense {'x'.join(map(str, shape))} <= {limit}",
                    "metric": "peak bytes",
                    "ratio": r,
                    "ratio_cpu": None,
                    "met": r <= limit,
                }
            )
    return rows


def pick_impl(report: dict) -> str | None:
    """The implementation with the smallest forward+backward median in the unit group (wall time)."""
    res = report.get("unit", {}).get("results", {})
    timed = {k: v["median_ms"] for k, v in res.items() if k in _unit_impls.IMPLS}
    return min(timed, key=timed.get) if timed else None


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _cell(res: dict, v: str, base: str) -> str:
    """``cpu ms / wall ms (cpu ratio, wall ratio)`` of variant ``v`` against ``base``."""
    if v not in res:
        return "-"
    r = res[v]
    return (
        f"{r['cpu_ms']:.2f} / {r['median_ms']:.2f} "
        f"({_fmt(_ratio(res, v, base, 'cpu_ms'))}x, {_fmt(_ratio(res, v, base))}x)"
    )


def format_tables(report: dict) -> str:
    """Markdown tables: CPU and wall medians (ms), ratios to the baseline, peak memory."""
    dev = report["device"]
    loaded = {True: "loaded", False: "idle", None: "load unknown"}[machine_loaded(dev)]
    load0, load1 = ((dev.get(k) or [None])[0] for k in ("load_avg_start", "load_avg_end"))
    lines = [
        f"device: {dev['device_kind']} ({dev['backend']}, {dev['cpu_count']} host cores"
        f"{', ' + dev['gpu'] if dev.get('gpu') else ''}), jax {dev.get('jax')}, up to {report['config']['reps']}"
        f" rounds per group, load average {_fmt(load0, '.1f')} -> {_fmt(load1, '.1f')} ({loaded}),"
        f" run {_fmt(report.get('wall_s'), '.0f')} s",
        "cells: process-CPU ms / wall ms (CPU-time ratio, wall ratio) against the baseline column",
        "",
    ]
    if report.get("chosen_impl"):
        lines += [f"fastest u(theta) implementation in the unit group: `{report['chosen_impl']}`", ""]
    mib = 1 / (1 << 20)
    if "unit" in report:
        u = report["unit"]
        res = u["results"]
        m, n = u["shape"]
        lines += [
            f"### u(theta) fwd+bwd, theta {m}x{n - 1} (default impl: {u['default_impl']})",
            "",
            "native_floor: numpy SIMD sin + cos, one thread; floor: XLA's sin/cos value and gradient; "
            "`_fwd` rows are forward only, the others forward + backward",
            "",
            "| variant | vs native floor | vs XLA floor | peak MiB |",
            "|---|---|---|---|",
        ]
        for name, r in res.items():
            peak = _fmt((r["memory"].get("peak") or 0) * mib, ".0f")
            lines.append(f"| {name} | {_cell(res, name, 'native_floor')} | {_cell(res, name, 'floor')} | {peak} |")
        lines.append("")
    if report.get("dense"):
        lines += [
            "### Dense layers fwd+bwd against nnx.Linear+ReLU",
            "",
            "| batch, in, out | dtype | dense | wn | gmp | gmp (cumprod impl) | peak MiB dense / gmp | "
            "peak mem gmp/dense |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in report["dense"]:
            res = e["results"]
            cells = [_cell(res, v, "dense") for v in ("dense", "wn", "gmp", "gmp_cumprod")]
            mem = _fmt(_mem_ratio(res, "gmp", "dense"))
            mibs = " / ".join(_fmt((res[v]["memory"].get("peak") or 0) * mib, ".1f") for v in ("dense", "gmp"))
            lines.append(
                f"| {', '.join(map(str, e['shape']))} | {e.get('dtype', 'float32')} | "
                + " | ".join(cells)
                + f" | {mibs} | {mem} |"
            )
        lines.append("")
    acc = report.get("accum", {})
    if "results" in acc:
        res = acc["results"]
        lines += [
            f"### Train step with gradient accumulation: k={acc['k']} microbatches of {acc['micro']}, "
            f"{acc['features']} -> {acc['features']}, against nnx.Linear+ReLU with the same accumulation",
            "",
            "| layer | vs dense | peak MiB |",
            "|---|---|---|",
        ]
        for name, r in res.items():
            peak = _fmt((r["memory"].get("peak") or 0) * mib, ".1f")
            lines.append(f"| {name} | {_cell(res, name, 'dense')} | {peak} |")
        lines.append("")
    if report.get("conv"):
        lines += [
            "### VGG-6 conv layers fwd+bwd against nnx.Conv+ReLU",
            "",
            "| batch, h, w, cin, cout | conv | gmp | peak mem gmp/conv |",
            "|---|---|---|---|",
        ]
        for e in report["conv"]:
            res = e["results"]
            lines.append(
                f"| {tuple(e['shape'])} | {_cell(res, 'conv', 'conv')} | {_cell(res, 'gmp', 'conv')} | "
                f"{_fmt(_mem_ratio(res, 'gmp', 'conv'))} |"
            )
        lines.append("")
    vgg = report.get("vgg", {})
    if "results" in vgg:
        res = vgg["results"]
        lines += [
            f"### VGG-6 train step, batch {vgg['batch']}, widths {tuple(vgg['widths'])}, against BN",
            "",
            "| parameterization | vs bn | peak MiB |",
            "|---|---|---|",
        ]
        for name, r in res.items():
            lines.append(f"| {name} | {_cell(res, name, 'bn')} | {_fmt((r['memory'].get('peak') or 0) * mib, '.0f')} |")
        lines.append("")
    elif vgg:
        lines += [f"VGG-6 train step skipped: {vgg.get('skipped')}", ""]
    if report.get("targets"):
        lines += [
            "### Targets (issue 18)",
            "",
            "| target | ratio (wall time / peak bytes) | CPU-time ratio | met |",
            "|---|---|---|---|",
        ]
        for t in report["targets"]:
            met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['target']} | {_fmt(t['ratio'])} | {_fmt(t.get('ratio_cpu'))} | {met} |")
        lines.append("")
    return "\n".join(lines)


def run(cfg: BenchConfig, out_dir: str) -> dict:
    """Run the selected groups, write ``<out_dir>/<device-kind>.json`` and return the report."""
    unknown = set(cfg.groups) - {"unit", "dense", "accum", "conv", "vgg"}
    if unknown:
        raise ValueError(f"groups must be a subset of unit, dense, accum, conv, vgg (got unknown {sorted(unknown)}).")
    bad_dtypes = set(cfg.dtypes) - set(DTYPES)
    if bad_dtypes or not cfg.dtypes:
        raise ValueError(f"dtypes must be a non-empty subset of {DTYPES} (got {list(cfg.dtypes)}).")
    bad = set(cfg.unit_impls) - set(_unit_impls.IMPLS)
    if bad:
        raise ValueError(f"unit_impls: unknown {sorted(bad)}; choose from {list(_unit_impls.IMPLS)}.")
    if cfg.reps < 1:
        raise ValueError(f"reps must be >= 1 (got {cfg.reps}); the issue asks for >= 30.")
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "device": device_info(),
        "config": dataclasses.asdict(cfg),
        "provenance": records.provenance(),
    }
    if "unit" in cfg.groups:
        report["unit"] = bench_unit(cfg)
    if cfg.pick_impl and "unit" in report:
        report["chosen_impl"] = pick_impl(report)
    if "dense" in cfg.groups:
        report["dense"] = bench_dense(cfg)
    if "accum" in cfg.groups:
        report["accum"] = bench_accum(cfg)
    if "conv" in cfg.groups:
        report["conv"] = bench_conv(cfg)
    if "vgg" in cfg.groups:
        report["vgg"] = bench_vgg(cfg)
    report["targets"] = check_targets(report)
    report["wall_s"] = time.perf_counter() - t0
    report["device"]["load_avg_end"] = records.load_average()
    report["device"]["loaded"] = machine_loaded(report["device"])
    path = os.path.join(out_dir, device_file_name(report["device"]["device_kind"]) + ".json")
    records.write_json(path, report)
    report["path"] = path
    return report


def _shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    """``"1024x4096x4096,256x1024x1024"`` -> ((1024, 4096, 4096), (256, 1024, 1024))."""
    try:
        shapes = tuple(tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part.strip())
    except ValueError:
        shapes = ()
    if not shapes or any(len(t) != 3 or min(t) < 1 for t in shapes):
        raise argparse.ArgumentTypeError(f"--dense-shapes wants batch x in x out, comma-separated (got {text!r}).")
    return shapes


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes, 3 reps, groups unit,dense,accum,conv (smoke test; add --groups to include vgg)",
    )
    p.add_argument(
        "--out",
        type=out_folder,
        default=os.path.join("benchmarks", "results"),
        help="output folder (<device-kind>.json)",
    )
    p.add_argument("--reps", type=int, default=None, help="timed rounds per group (default 30; quick 3)")
    p.add_argument("--groups", type=_names, default=None, help="comma-separated subset of unit,dense,accum,conv,vgg")
    p.add_argument("--impls", type=_names, default=None, help="comma-separated u(theta) implementations (unit group)")
    p.add_argument("--dense-shapes", type=_shapes, default=None, help="e.g. 1024x4096x4096,256x1024x1024")
    p.add_argument("--dtypes", type=_names, default=None, help=f"computation dtypes of the dense group, from {DTYPES}")
    p.add_argument("--budget", type=float, default=None, help="seconds of timed rounds per group (default 25)")
    p.add_argument("--pick-impl", action="store_true", help="record the fastest unit implementation (chosen_impl)")
    p.add_argument(
        "--tables-from",
        default=None,
        metavar="JSON",
        help="print the markdown tables of a saved report and exit (runs nothing)",
    )
    args = p.parse_args(argv)
    if args.tables_from:
        with open(args.tables_from) as f:
            report = json.load(f)
        print(format_tables(report))
        return report
    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    overrides = {
        "reps": args.reps,
        "groups": args.groups,
        "unit_impls": args.impls,
        "dense_shapes": args.dense_shapes,
        "dtypes": args.dtypes,
        "group_budget_s": args.budget,
        "pick_impl": args.pick_impl or None,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    report = run(cfg, args.out)
    print(format_tables(report))
    print(f"wrote {report['path']} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
