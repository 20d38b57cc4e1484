"""Benchmark GmP layers against Dense / Conv / WN / BN, and the u(theta) map against the sin/cos floor.

Run ``python -m benchmarks.layers [--quick] [--out benchmarks/results]``. Every case is a
``jax.jit``-compiled forward+backward pass (value and gradient of a scalar loss with
respect to the parameters and the input), compiled ahead of time, warmed up, then run
``reps`` (>= 30 by default) times *interleaved* with the other variants of the same
group, in one process, so that the reported ratios are side by side under the same
machine load. Each case reports the median and quartiles (ms) and the peak memory of
the compiled computation from XLA's memory analysis.

Groups:

* ``unit``: the map theta (m, n-1) -> u (m, n) for every implementation in
  ``gmpjax._unit_impls.IMPLS`` and the *floor*: value+gradient of
  ``sum(a * sin(theta) + b * cos(theta))`` with ``jnp.sin``/``jnp.cos`` (the bare
  elementwise trigonometry any implementation has to do), plus the default path
  ``hyperspherical.angles_to_unit`` (which renormalises u).
* ``dense``: ``nnx.Linear`` + ReLU vs ``WNDense`` vs ``GmPDense`` (default impl and the
  naive ``cumprod`` impl) at the issue's (batch, in, out) shapes.
* ``conv``: ``nnx.Conv`` + ReLU vs ``GmPConv`` on the six VGG-6 conv shapes.
* ``vgg``: a full VGG-6 SGD train step (``gmpjax.train.engine.make_train_step``) for
  SP, BN and GmP+IMN.

Writes ``<out>/<device-kind>.json`` and prints ratio tables (GmP / baseline).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gmpjax import _unit_impls
from gmpjax import hyperspherical as hs
from gmpjax.layers import GmPConv, GmPDense, WNDense

try:  # tqdm is a dependency, but keep the benchmark usable without it
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    def tqdm(it, **_):
        return it

Array = jax.Array

ISSUE_DENSE_SHAPES = ((256, 1024, 1024), (1024, 784, 256), (64, 4096, 4096), (4096, 13, 100), (1024, 4096, 4096))

#: Targets of issue 7: (group, key, variant, baseline, max ratio, backend).
TARGETS: tuple[tuple[str, Any, str, str, float, str], ...] = (
    ("dense", (256, 1024, 1024), "gmp", "dense", 1.8, "cpu"),
    ("dense", (1024, 784, 256), "gmp", "dense", 1.3, "cpu"),
    ("dense", (4096, 13, 100), "gmp", "dense", 1.1, "cpu"),
    ("unit", (4096, 4096), "auto", "floor", 1.5, "cpu"),
    ("dense", (1024, 4096, 4096), "gmp", "dense", 1.10, "gpu"),
    ("dense", (256, 1024, 1024), "gmp", "dense", 1.3, "gpu"),
    ("vgg", None, "gmp_imn", "bn", 1.15, "gpu"),
)
MEMORY_TARGET = 1.2  # peak memory of the GmPDense step <= 1.2x Dense (every backend)


@dataclass
class BenchConfig:
    """What to run. ``quick()`` gives a seconds-long smoke configuration."""

    reps: int = 30
    warmup: int = 2
    unit_shape: tuple[int, int] = (4096, 4096)  # (m, n): theta has shape (m, n-1)
    unit_impls: tuple[str, ...] = ("cumprod", "scan", "scan_jvp", "fast", "fast_vjp")  # --impls for others
    dense_shapes: tuple[tuple[int, int, int], ...] = ISSUE_DENSE_SHAPES
    naive_max_weights: int = 1 << 22  # time GmPDense(impl="cumprod") only up to this many weights
    conv_batch: int = 16
    conv_hw: int = 32
    widths: tuple[int, int, int] = (128, 256, 512)
    vgg_batch: int = 16
    vgg_classes: int = 1000
    conv_layers: int = 6  # how many of the six VGG-6 conv shapes to time
    groups: tuple[str, ...] = ("unit", "dense", "conv", "vgg")
    seed: int = 0

    @classmethod
    def quick(cls) -> "BenchConfig":
        default = _unit_impls.default_for_backend(jax.default_backend())
        return cls(reps=3, warmup=1, unit_shape=(64, 64), unit_impls=("cumprod", default),
                   dense_shapes=((32, 64, 48),), naive_max_weights=0, conv_batch=2, conv_hw=8, widths=(4, 8, 8),
                   conv_layers=1, vgg_batch=2, vgg_classes=10, groups=("unit", "dense", "conv"))


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


def time_interleaved(cases: dict[str, Case], reps: int, warmup: int, desc: str = "") -> dict[str, dict]:
    """Compile every case, warm up, then time ``reps`` rounds; each round runs every case once.

    Returns ``{name: {"median_ms", "q1_ms", "q3_ms", "min_ms", "cpu_ms", "compile_s", "memory"}}``:
    wall-clock statistics, and ``cpu_ms`` the median process CPU time (all threads) of a
    call, which is what to compare on a CPU shared with other jobs (wall time there
    mostly measures the wait for a core).
    """
    for c in cases.values():
        c.compile()
        for _ in range(warmup):
            c.run()
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
            "memory": c.memory,
        }
    return res


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


def bench_unit(cfg: BenchConfig) -> dict:
    """u(theta) fwd+bwd for every implementation vs the sin/cos floor at ``cfg.unit_shape``."""
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

    cases = {"floor": Case(floor, (theta, a, b)), "floor_fwd": Case(floor_fwd, (theta,))}
    for name in cfg.unit_impls:
        cases[name] = Case(unit_case(_unit_impls.IMPLS[name]), (theta, g))
    cases["auto"] = Case(unit_case(hs.angles_to_unit), (theta, g))  # default impl + renormalisation
    default = hs.default_impl()
    cases["auto_fwd"] = Case(lambda t: hs.angles_to_unit(t), (theta,))
    res = time_interleaved(cases, cfg.reps, cfg.warmup, desc=f"unit {m}x{n - 1}")
    return {"shape": [m, n], "default_impl": default, "results": res}


def bench_dense(cfg: BenchConfig) -> list[dict]:
    out = []
    for batch, n_in, n_out in cfg.dense_shapes:
        rngs = nnx.Rngs(cfg.seed)
        x = jax.random.normal(jax.random.key(cfg.seed + 1), (batch, n_in))
        cases = {
            "dense": grad_case(nnx.Linear(n_in, n_out, rngs=rngs), x, post=nnx.relu),
            "wn": grad_case(WNDense(n_in, n_out, rngs=rngs), x),
            "gmp": grad_case(GmPDense(n_in, n_out, rngs=rngs), x),
        }
        if n_in * n_out <= cfg.naive_max_weights:
            cases["gmp_cumprod"] = grad_case(GmPDense(n_in, n_out, impl="cumprod", rngs=rngs), x)
        res = time_interleaved(cases, cfg.reps, cfg.warmup, desc=f"dense {batch}x{n_in}->{n_out}")
        out.append({"shape": [batch, n_in, n_out], "results": res})
    return out


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
        res = time_interleaved(cases, cfg.reps, cfg.warmup, desc=f"conv {hw}x{hw} {cin}->{cout}")
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
    res = time_interleaved(cases, cfg.reps, cfg.warmup, desc="vgg6 train step")
    return {"batch": cfg.vgg_batch, "image": [cfg.conv_hw, cfg.conv_hw, 3], "widths": list(cfg.widths),
            "num_classes": cfg.vgg_classes, "results": res}


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------


def device_info() -> dict:
    d = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": d.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


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


def check_targets(report: dict) -> list[dict]:
    """Compare measured ratios with the issue's targets (only those measured in this run)."""
    backend = report["device"]["backend"]
    key = primary_metric(backend)
    rows = []
    for group, shape, var, base, limit, tgt_backend in TARGETS:
        res, where = None, ""
        if group == "dense":
            for e in report.get("dense", []):
                if tuple(e["shape"]) == shape:
                    res, where = e["results"], "x".join(map(str, shape))
        elif group == "unit" and "unit" in report and tuple(report["unit"]["shape"]) == shape:
            res, where = report["unit"]["results"], f"{shape[0]}x{shape[1] - 1}"
        elif group == "vgg" and "results" in report.get("vgg", {}):
            res, where = report["vgg"]["results"], "train step"
        same_backend = tgt_backend == backend or (tgt_backend == "gpu" and backend in ("gpu", "cuda", "rocm"))
        ratio = _ratio(res, var, base, key) if (res is not None and same_backend) else None
        rows.append({"target": f"{group} {var}/{base} {where or shape} <= {limit} ({tgt_backend})",
                     "metric": key, "ratio": ratio,
                     "ratio_wall": _ratio(res, var, base) if ratio is not None else None,
                     "met": (ratio <= limit) if ratio is not None else None})
    for e in report.get("dense", []):
        r = _mem_ratio(e["results"], "gmp", "dense")
        if r is not None:
            rows.append({"target": f"memory dense gmp/dense {'x'.join(map(str, e['shape']))} <= {MEMORY_TARGET}",
                         "metric": "peak bytes", "ratio": r, "ratio_wall": None, "met": r <= MEMORY_TARGET})
    return rows


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _cell(res: dict, v: str, base: str) -> str:
    """``cpu ms / wall ms (cpu ratio, wall ratio)`` of variant ``v`` against ``base``."""
    if v not in res:
        return "-"
    r = res[v]
    return (f"{r['cpu_ms']:.2f} / {r['median_ms']:.2f} "
            f"({_fmt(_ratio(res, v, base, 'cpu_ms'))}x, {_fmt(_ratio(res, v, base))}x)")


def format_tables(report: dict) -> str:
    """Markdown tables: CPU and wall medians (ms), ratios to the baseline, peak memory."""
    dev = report["device"]
    lines = [f"device: {dev['device_kind']} ({dev['backend']}, {dev['cpu_count']} host cores), "
             f"reps={report['config']['reps']}, load average {_fmt((dev.get('load_avg_start') or [None])[0], '.1f')}"
             f" -> {_fmt((dev.get('load_avg_end') or [None])[0], '.1f')}",
             "cells: process-CPU ms / wall ms (CPU-time ratio, wall ratio) against the baseline column", ""]
    mib = 1 / (1 << 20)
    if "unit" in report:
        u = report["unit"]
        res = u["results"]
        m, n = u["shape"]
        lines += [f"### u(theta) fwd+bwd, theta {m}x{n - 1} (default impl: {u['default_impl']})", "",
                  "| variant | vs floor | peak MiB |", "|---|---|---|"]
        for name, r in res.items():
            peak = _fmt((r["memory"].get("peak") or 0) * mib, ".0f")
            lines.append(f"| {name} | {_cell(res, name, 'floor')} | {peak} |")
        lines.append("")
    if report.get("dense"):
        lines += ["### Dense layers fwd+bwd against nnx.Linear+ReLU", "",
                  "| batch, in, out | dense | wn | gmp | gmp (cumprod impl) | peak mem gmp/dense |",
                  "|---|---|---|---|---|---|"]
        for e in report["dense"]:
            res = e["results"]
            cells = [_cell(res, v, "dense") for v in ("dense", "wn", "gmp", "gmp_cumprod")]
            mem = _fmt(_mem_ratio(res, "gmp", "dense"))
            lines.append(f"| {tuple(e['shape'])} | " + " | ".join(cells) + f" | {mem} |")
        lines.append("")
    if report.get("conv"):
        lines += ["### VGG-6 conv layers fwd+bwd against nnx.Conv+ReLU", "",
                  "| batch, h, w, cin, cout | conv | gmp | peak mem gmp/conv |", "|---|---|---|---|"]
        for e in report["conv"]:
            res = e["results"]
            lines.append(f"| {tuple(e['shape'])} | {_cell(res, 'conv', 'conv')} | {_cell(res, 'gmp', 'conv')} | "
                         f"{_fmt(_mem_ratio(res, 'gmp', 'conv'))} |")
        lines.append("")
    vgg = report.get("vgg", {})
    if "results" in vgg:
        res = vgg["results"]
        lines += [f"### VGG-6 train step, batch {vgg['batch']}, widths {tuple(vgg['widths'])}, against BN", "",
                  "| parameterization | vs bn | peak MiB |", "|---|---|---|"]
        for name, r in res.items():
            lines.append(f"| {name} | {_cell(res, name, 'bn')} | {_fmt((r['memory'].get('peak') or 0) * mib, '.0f')} |")
        lines.append("")
    elif vgg:
        lines += [f"VGG-6 train step skipped: {vgg.get('skipped')}", ""]
    if report.get("targets"):
        lines += ["### Targets (issue 7)", "", "| target | ratio (CPU time / peak bytes) | wall ratio | met |",
                  "|---|---|---|---|"]
        for t in report["targets"]:
            met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['target']} | {_fmt(t['ratio'])} | {_fmt(t['ratio_wall'])} | {met} |")
        lines.append("")
    return "\n".join(lines)


def run(cfg: BenchConfig, out_dir: str) -> dict:
    """Run the selected groups, write ``<out_dir>/<device-kind>.json`` and return the report."""
    unknown = set(cfg.groups) - {"unit", "dense", "conv", "vgg"}
    if unknown:
        raise ValueError(f"groups must be a subset of unit, dense, conv, vgg (got unknown {sorted(unknown)}).")
    bad = set(cfg.unit_impls) - set(_unit_impls.IMPLS)
    if bad:
        raise ValueError(f"unit_impls: unknown {sorted(bad)}; choose from {list(_unit_impls.IMPLS)}.")
    if cfg.reps < 1:
        raise ValueError(f"reps must be >= 1 (got {cfg.reps}); the issue asks for >= 30.")
    t0 = time.perf_counter()
    report: dict[str, Any] = {"device": device_info(), "config": dataclasses.asdict(cfg)}
    if "unit" in cfg.groups:
        report["unit"] = bench_unit(cfg)
    if "dense" in cfg.groups:
        report["dense"] = bench_dense(cfg)
    if "conv" in cfg.groups:
        report["conv"] = bench_conv(cfg)
    if "vgg" in cfg.groups:
        report["vgg"] = bench_vgg(cfg)
    report["targets"] = check_targets(report)
    report["wall_s"] = time.perf_counter() - t0
    report["device"]["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, device_file_name(report["device"]["device_kind"]) + ".json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    report["path"] = path
    return report


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes, 3 reps, groups unit,dense,conv (smoke test; add --groups to include vgg)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"), help="output folder")
    p.add_argument("--reps", type=int, default=None, help="timed rounds per group (default 30; quick 3)")
    p.add_argument("--groups", default=None, help="comma-separated subset of unit,dense,conv,vgg")
    p.add_argument("--impls", default=None, help="comma-separated u(theta) implementations for the unit group")
    args = p.parse_args(argv)
    cfg = BenchConfig.quick() if args.quick else BenchConfig()
    if args.reps is not None:
        cfg = dataclasses.replace(cfg, reps=args.reps)
    if args.groups:
        cfg = dataclasses.replace(cfg, groups=tuple(g.strip() for g in args.groups.split(",") if g.strip()))
    if args.impls:
        cfg = dataclasses.replace(cfg, unit_impls=tuple(s.strip() for s in args.impls.split(",") if s.strip()))
    report = run(cfg, args.out)
    print(format_tables(report))
    print(f"wrote {report['path']} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
