"""1-D function fitting with the triangular-wave reparameterization (Milkert, Hyde & Laine, ICML 2025).

Reproduces, in miniature and with the protocol choices of
``../shared/research/triangular-wave.md`` section 6 (each a config value):

* **dense table**: 500 equispaced points on [0, 1], a 4-wide x 5-deep ReLU net (93
  parameters), ``runs`` random initialisations (30), min and mean final MSE, for
  x^3 and x^11, rows: Kaiming (PyTorch default uniform init), RAAI (randomized
  asymmetric init), skip pretraining (random-peak triangle weights, then raw
  training), pretraining without Theorem 3.1 (free scales), pretraining + Theorem 3.1;
* **sparse table**: 10 random training and 10 random test points per run, min (and
  mean) test MSE for x^3, x^11, sin x and tanh 3x (Kaiming vs pretraining + Thm 3.1);
* **difference**: x^3 - x fitted by the difference of two convex subnets (a width-8
  block-diagonal net after the switch) vs a Kaiming width-8 MLP.

Every method runs its ``runs`` seeds as one compiled program (``jax.vmap`` over
replicas, ``lax.scan`` over full-batch Adam steps) through
``gmpjax.train.two_phase.train_two_phase``. Methods without a pretraining phase get
the same total number of updates (``pretrain_steps + finetune_steps``).

    python -m experiments.triangular_1d            # full tables
    python -m experiments.triangular_1d --quick    # CI smoke run (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import zlib
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from gmpjax import triangular as tri  # noqa: E402
from gmpjax.layers.triangle import ReLUMLP, TriangleNet  # noqa: E402
from gmpjax.regions import count_linear_regions_batched, plot_linear_regions  # noqa: E402
from gmpjax.train.two_phase import TwoPhaseConfig, train_two_phase  # noqa: E402

# ---------------------------------------------------------------------------- targets and paper numbers

TARGETS: dict[str, tuple[Callable, int, bool]] = {
    # name: (f, sign, output_affine)   sign -1: convex on [0,1]; +1: concave (needs a gain/offset head)
    "x3": (lambda x: x**3, -1, False),
    "x11": (lambda x: x**11, -1, False),
    "sin": (lambda x: jnp.sin(x), +1, True),
    "tanh3": (lambda x: jnp.tanh(3 * x), +1, True),
}
TARGET_LABEL = {"x3": "x^3", "x11": "x^11", "sin": "sin x", "tanh3": "tanh 3x"}
METHODS = ("kaiming", "raai", "skip", "noreg", "thm31")
METHOD_LABEL = {
    "kaiming": "Kaiming (PyTorch default)",
    "raai": "RAAI",
    "skip": "skip pretraining",
    "noreg": "pretraining, no reg.",
    "thm31": "pretraining + Thm 3.1",
}
# Milkert et al. 2025, Table 1 (dense) and the sparse table, as transcribed in research/triangular-wave.md §4.
PAPER_DENSE = {  # method: {target: (min, mean)}
    "kaiming": {"x3": (2.11e-5, 7.20e-2), "x11": (2.19e-5, 2.82e-2)},
    "raai": {"x3": (2.14e-5, 3.97e-2), "x11": (4.40e-5, 4.12e-2)},
    "skip": {"x3": (7.63e-7, 3.89e-5), "x11": (1.86e-5, 3.56e-4)},
    "noreg": {"x3": (1.64e-7, 1.02e-5), "x11": (3.20e-6, 3.73e-5)},
    "thm31": {"x3": (7.86e-8, 5.27e-7), "x11": (8.86e-7, 7.87e-6)},
}
PAPER_SPARSE = {  # method: {target: min test MSE}
    "kaiming": {"x3": 2.41e-4, "x11": 2.14e-3, "sin": 2.27e-5, "tanh3": 1.60e-4},
    "thm31": {"x3": 5.65e-6, "x11": 6.53e-4, "sin": 7.92e-7, "tanh3": 5.09e-6},
}


@dataclasses.dataclass
class Config:
    """All protocol choices (defaults: research/triangular-wave.md section 6)."""

    depth: int = 5
    runs: int = 30
    n_dense: int = 500
    n_sparse_train: int = 10
    n_sparse_test: int = 10
    dense_targets: tuple = ("x3", "x11")
    sparse_targets: tuple = ("x3", "x11", "sin", "tanh3")
    methods: tuple = METHODS
    sparse_methods: tuple = ("kaiming", "thm31")
    difference: bool = True
    pretrain_steps: int = 1000
    finetune_steps: int = 20000
    lr: float = 1e-3
    chunk_steps: int = 1000
    equal_total_steps: bool = True
    margin: float = tri.DEFAULT_MARGIN
    peak_low: float = 0.2
    peak_high: float = 0.8
    s0: str = "bounded"  # "bounded" (s0 <= normalised, trainable) | "trained" (free log s0) | "normalised"
    dtype: str = "float32"
    region_min_width: float = 1e-6
    seed: int = 0
    out: str = "results/triangular_1d"

    @classmethod
    def quick(cls, **kw) -> Config:
        base = dict(runs=3, pretrain_steps=60, finetune_steps=120, chunk_steps=60, n_dense=200)
        base.update(kw)
        return cls(**base)


def _dtype(cfg: Config):
    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
        return jnp.float64
    if cfg.dtype != "float32":
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {cfg.dtype!r}.")
    return jnp.float32


def check_config(cfg: Config) -> None:
    """Reject unknown targets / methods with a clear message."""
    for t in (*cfg.dense_targets, *cfg.sparse_targets):
        if t not in TARGETS:
            raise ValueError(f"unknown target {t!r}; choose from {sorted(TARGETS)}.")
    for m in (*cfg.methods, *cfg.sparse_methods):
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {list(METHODS)}.")
    if cfg.runs < 1 or cfg.depth < 1:
        raise ValueError(f"runs and depth must be >= 1 (got runs={cfg.runs}, depth={cfg.depth}).")


# ---------------------------------------------------------------------------- models


class TriangleDifference(nnx.Module):
    """``F_1(x) - F_2(x)`` of two convex triangle subnets (each with an output gain/offset).

    ``to_raw()`` gives one width-8 ReLU MLP with block-diagonal weights (``triangular.block_diagonal``).
    """

    def __init__(self, depth: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs, **kw):
        self.f1 = TriangleNet(depth, sign=-1, output_affine=True, param_dtype=param_dtype, rngs=rngs, **kw)
        self.f2 = TriangleNet(depth, sign=-1, output_affine=True, param_dtype=param_dtype, rngs=rngs, **kw)

    def layer_arrays(self):
        return tri.block_diagonal([self.f1.layer_arrays(), self.f2.layer_arrays()], (1.0, -1.0))

    def to_raw(self) -> ReLUMLP:
        return ReLUMLP(layers=self.layer_arrays())

    def __call__(self, x):
        return self.f1(x) - self.f2(x)


def make_model_fn(method: str, cfg: Config, target: str, dtype, width: int = 4) -> Callable:
    _, sign, affine = TARGETS[target]
    common = dict(margin=cfg.margin, peak_range=(cfg.peak_low, cfg.peak_high), param_dtype=dtype)
    sizes = (1,) + (width,) * cfg.depth + (1,)
    if method in ("kaiming", "raai"):
        return lambda k: ReLUMLP(sizes, init=method, param_dtype=dtype, rngs=nnx.Rngs(k))
    if method == "skip":
        return lambda k: TriangleNet(cfg.depth, sign=sign, output_affine=affine, mode="raw", rngs=nnx.Rngs(k), **common)
    scales = "free" if method == "noreg" else "theorem31"
    return lambda k: TriangleNet(
        cfg.depth, sign=sign, scales=scales, s0=cfg.s0, output_affine=affine, rngs=nnx.Rngs(k), **common
    )


def schedule(method: str, cfg: Config) -> TwoPhaseConfig:
    pre = cfg.pretrain_steps if method in ("noreg", "thm31") else 0
    fine = cfg.finetune_steps + (cfg.pretrain_steps - pre if cfg.equal_total_steps else 0)
    return TwoPhaseConfig(
        pretrain_steps=pre, finetune_steps=fine, pretrain_lr=cfg.lr, finetune_lr=cfg.lr, chunk_steps=cfg.chunk_steps
    )


def _tag(name: str) -> int:
    """A stable 31-bit integer for a name (Python's ``hash`` is salted per process)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def mse_loss(model, batch):
    x, y = batch
    return jnp.mean((model(x) - y) ** 2)


def _stacked_layers(graphdef, state):
    return jax.vmap(lambda p, r: nnx.merge(graphdef, p, r).layer_arrays())(state.params, state.rest)


def _region_snapshot(cfg: Config):
    def snap(phase, graphdef, state):
        layers = _stacked_layers(graphdef, state)
        return {"regions": count_linear_regions_batched(layers, (0.0, 1.0), min_width=cfg.region_min_width).tolist()}

    return snap


def _predict(graphdef, state, x):
    """Outputs of every replica at ``x`` (shared ``(n, 1)`` or per-replica ``(R, n, 1)``)."""
    axis = 0 if x.ndim == 3 else None
    return jax.vmap(lambda p, r, xx: nnx.merge(graphdef, p, r)(xx), in_axes=(0, 0, axis))(state.params, state.rest, x)


# ---------------------------------------------------------------------------- runs


def run_method(
    method: str, target: str, cfg: Config, train, test=None, *, batch_axis=None, progress=True, model_fn=None
) -> dict:
    """Train ``cfg.runs`` replicas of ``method`` on ``train = (x, y)``; return MSEs, curves and region counts.

    ``model_fn`` (``key -> module``) overrides the model of ``method``; the schedule is still ``method``'s
    (pretraining for "noreg"/"thm31", raw steps only otherwise).
    """
    dtype = _dtype(cfg)
    make = model_fn or make_model_fn(method, cfg, target, dtype)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), _tag(f"{method}/{target}")), cfg.runs)
    t0 = time.time()
    res = train_two_phase(
        make,
        keys,
        mse_loss,
        train,
        schedule(method, cfg),
        batch_axis=batch_axis,
        snapshot=_region_snapshot(cfg),
        progress=progress,
        desc=f"{target}/{method}",
    )
    wall = time.time() - t0
    x, y = train
    train_mse = np.asarray(jnp.mean((_predict(res.graphdef, res.state, x) - y) ** 2, axis=(-2, -1)))
    out = {
        "method": method,
        "target": target,
        "wall_s": wall,
        "train_mse": train_mse.tolist(),
        "loss_curve_median": np.median(res.losses, axis=0).tolist(),
        "loss_curve_min": np.min(res.losses, axis=0).tolist(),
        "switch_step": res.switch_step,
        "snapshots": [{"phase": s["phase"], "step": s["step"], "regions": s["regions"]} for s in res.snapshots],
    }
    if res.switch_step:
        pre = np.asarray(jnp.mean((_predict(res.pretrain_graphdef, res.pretrain_state, x) - y) ** 2, axis=(-2, -1)))
        out["pretrain_mse"] = pre.tolist()
    if test is not None:
        xt, yt = test
        out["test_mse"] = np.asarray(
            jnp.mean((_predict(res.graphdef, res.state, xt) - yt) ** 2, axis=(-2, -1))
        ).tolist()
    best = int(np.argmin(out["test_mse"] if test is not None else train_mse))
    out["best_run"] = best
    out["_best_layers"] = [
        (np.asarray(W[best]), np.asarray(b[best])) for W, b in _stacked_layers(res.graphdef, res.state)
    ]
    return out


def dense_data(target: str, cfg: Config, dtype):
    f = TARGETS[target][0]
    x = jnp.linspace(0.0, 1.0, cfg.n_dense, dtype=dtype)[:, None]
    return x, f(x)


def sparse_data(target: str, cfg: Config, dtype):
    """Per-run random train/test points, uniform on [0, 1]: arrays with a leading replica axis."""
    f = TARGETS[target][0]
    k1, k2 = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed + 1), _tag(target)))
    xtr = jax.random.uniform(k1, (cfg.runs, cfg.n_sparse_train, 1), dtype)
    xte = jax.random.uniform(k2, (cfg.runs, cfg.n_sparse_test, 1), dtype)
    return (xtr, f(xtr)), (xte, f(xte))


def run(cfg: Config, *, progress: bool = True) -> dict:
    check_config(cfg)
    dtype = _dtype(cfg)
    os.makedirs(cfg.out, exist_ok=True)
    t_all = time.time()
    results: dict = {"config": dataclasses.asdict(cfg), "dense": {}, "sparse": {}, "difference": {}}
    for target in cfg.dense_targets:
        t0 = time.time()
        data = dense_data(target, cfg, dtype)
        results["dense"][target] = {m: run_method(m, target, cfg, data, progress=progress) for m in cfg.methods}
        results["dense"][target]["_wall_s"] = time.time() - t0
    for target in cfg.sparse_targets:
        t0 = time.time()
        train, test = sparse_data(target, cfg, dtype)
        results["sparse"][target] = {
            m: run_method(m, target, cfg, train, test, batch_axis=0, progress=progress) for m in cfg.sparse_methods
        }
        results["sparse"][target]["_wall_s"] = time.time() - t0
    if cfg.difference:
        t0 = time.time()
        x = jnp.linspace(0.0, 1.0, cfg.n_dense, dtype=dtype)[:, None]
        data = (x, x**3 - x)
        common = dict(margin=cfg.margin, peak_range=(cfg.peak_low, cfg.peak_high))
        diff = run_method(
            "thm31",
            "x3-x",
            cfg,
            data,
            progress=progress,
            model_fn=lambda k: TriangleDifference(cfg.depth, param_dtype=dtype, rngs=nnx.Rngs(k), **common),
        )
        kai = run_method(
            "kaiming",
            "x3-x",
            cfg,
            data,
            progress=progress,
            model_fn=lambda k: ReLUMLP((1,) + (8,) * cfg.depth + (1,), param_dtype=dtype, rngs=nnx.Rngs(k)),
        )
        results["difference"] = {
            "x3-x": {"difference_of_subnets": diff, "kaiming_width8": kai, "_wall_s": time.time() - t0}
        }
    results["wall_s"] = time.time() - t_all
    make_figures(results, cfg)
    table = format_tables(results)
    print(table)
    with open(os.path.join(cfg.out, "tables.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(cfg.out, "metrics.json"), "w") as f:
        json.dump(_strip(results), f, indent=1)
    return results


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not k.startswith("_") or k == "_wall_s"}
    if isinstance(obj, (list, tuple)):
        return [_strip(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


# ---------------------------------------------------------------------------- reporting


def summary(res: dict, key: str = "train_mse") -> tuple[float, float]:
    v = np.asarray(res[key])
    return float(v.min()), float(v.mean())


def format_tables(results: dict) -> str:
    lines = []
    if results["dense"]:
        lines.append("## Dense 1-D fits (min / mean final MSE over runs; paper = Milkert et al. 2025 Table 1)\n")
        targets = [t for t in results["dense"]]
        head = (
            "| method | "
            + " | ".join(
                f"{TARGET_LABEL[t]} min (ours) | {TARGET_LABEL[t]} min (paper) | {TARGET_LABEL[t]} mean (ours) | "
                f"{TARGET_LABEL[t]} mean (paper)"
                for t in targets
            )
            + " | final regions (median) |"
        )
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        methods = [m for m in METHODS if m in results["dense"][targets[0]]]
        for m in methods:
            cells = []
            regs = []
            for t in targets:
                r = results["dense"][t][m]
                mn, me = summary(r)
                pm, pme = PAPER_DENSE[m][t]
                cells += [f"{mn:.2e}", f"{pm:.2e}", f"{me:.2e}", f"{pme:.2e}"]
                regs.append(f"{np.median(r['snapshots'][-1]['regions']):.0f}")
            lines.append(f"| {METHOD_LABEL[m]} | " + " | ".join(cells) + f" | {'/'.join(regs)} |")
        lines.append("")
        lines.append(
            "Wall time per target (all methods): "
            + ", ".join(f"{TARGET_LABEL[t]} {results['dense'][t]['_wall_s']:.0f} s" for t in targets)
        )
        pre = []
        for t in targets:
            for m in ("noreg", "thm31"):
                if m in results["dense"][t] and "pretrain_mse" in results["dense"][t][m]:
                    mn, me = summary(results["dense"][t][m], "pretrain_mse")
                    pre.append(f"{TARGET_LABEL[t]}/{m}: {mn:.2e} / {me:.2e}")
        if pre:
            lines.append("MSE at the end of pretraining (min / mean): " + "; ".join(pre))
        lines.append("")
    if results["sparse"]:
        lines.append("## Sparse data (10 train / 10 test points per run; min test MSE, mean in brackets)\n")
        targets = list(results["sparse"])
        head = (
            "| method | " + " | ".join(f"{TARGET_LABEL[t]} (ours) | {TARGET_LABEL[t]} (paper)" for t in targets) + " |"
        )
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        methods = [m for m in METHODS if m in results["sparse"][targets[0]]]
        for m in methods:
            cells = []
            for t in targets:
                mn, me = summary(results["sparse"][t][m], "test_mse")
                cells += [f"{mn:.2e} ({me:.1e})", f"{PAPER_SPARSE.get(m, {}).get(t, float('nan')):.2e}"]
            lines.append(f"| {METHOD_LABEL[m]} | " + " | ".join(cells) + " |")
        lines.append("")
    if results["difference"]:
        d = results["difference"]["x3-x"]
        lines.append("## x^3 - x as a difference of two convex subnets (no paper numbers)\n")
        lines += ["| model | min MSE | mean MSE | final regions (median) |", "|---|---|---|---|"]
        for name, r in (
            ("difference of two Thm-3.1 subnets (width 8 after switch)", d["difference_of_subnets"]),
            ("Kaiming width-8 MLP", d["kaiming_width8"]),
        ):
            mn, me = summary(r)
            lines.append(f"| {name} | {mn:.2e} | {me:.2e} | {np.median(r['snapshots'][-1]['regions']):.0f} |")
        lines.append("")
    lines.append(f"Total wall time: {results['wall_s']:.0f} s")
    return "\n".join(lines)


def make_figures(results: dict, cfg: Config) -> None:
    groups = [("dense", results["dense"]), ("sparse", results["sparse"])]
    for kind, block in groups:
        if not block:
            continue
        targets = list(block)
        methods = [m for m in METHODS if m in block[targets[0]]]
        # fits: best run of every method, with its linear regions
        fig, axes = plt.subplots(
            len(targets), len(methods), figsize=(3.2 * len(methods), 2.6 * len(targets)), squeeze=False
        )
        for i, t in enumerate(targets):
            f = TARGETS[t][0]
            for j, m in enumerate(methods):
                r = block[t][m]
                plot_linear_regions(
                    r["_best_layers"], (0.0, 1.0), ax=axes[i, j], target=lambda z, f=f: np.asarray(f(z))
                )
                mn, _ = summary(r, "test_mse" if kind == "sparse" else "train_mse")
                axes[i, j].set_title(f"{TARGET_LABEL[t]} / {m}: {mn:.1e}", fontsize=8)
                axes[i, j].legend().set_visible(False)
        fig.tight_layout()
        fig.savefig(os.path.join(cfg.out, f"{kind}_fits.png"), dpi=110)
        plt.close(fig)
        # loss curves and region counts
        fig, axes = plt.subplots(2, len(targets), figsize=(4.2 * len(targets), 6.2), squeeze=False)
        for i, t in enumerate(targets):
            for m in methods:
                r = block[t][m]
                axes[0, i].semilogy(r["loss_curve_median"], label=m, lw=1)
                if r["switch_step"]:
                    axes[0, i].axvline(r["switch_step"], color="0.6", ls=":", lw=0.8)
                steps = [s["step"] for s in r["snapshots"]]
                axes[1, i].plot(steps, [np.mean(s["regions"]) for s in r["snapshots"]], "-o", ms=2, label=m)
            axes[1, i].axhline(2**cfg.depth, color="k", ls="--", lw=0.8, label=f"2^{cfg.depth}")
            axes[0, i].set_title(f"{TARGET_LABEL[t]}: median training MSE", fontsize=9)
            axes[1, i].set_title(f"{TARGET_LABEL[t]}: mean linear regions on [0,1]", fontsize=9)
            axes[1, i].set_xlabel("step")
            axes[0, i].legend(fontsize=7)
            axes[1, i].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(cfg.out, f"{kind}_curves_regions.png"), dpi=110)
        plt.close(fig)
    if results["difference"]:
        d = results["difference"]["x3-x"]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3))
        for ax, (name, r) in zip(
            axes,
            (("difference of subnets", d["difference_of_subnets"]), ("Kaiming width 8", d["kaiming_width8"])),
            strict=True,
        ):
            plot_linear_regions(r["_best_layers"], (0.0, 1.0), ax=ax, target=lambda z: z**3 - z)
            ax.set_title(f"x^3 - x, {name}: {summary(r)[0]:.1e}", fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(cfg.out, "difference_fit.png"), dpi=110)
        plt.close(fig)


# ---------------------------------------------------------------------------- CLI


def _csv(s: str) -> tuple:
    return tuple(v for v in s.split(",") if v)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (3 runs, 180 steps)")
    p.add_argument("--out", default=None, help="output folder (default results/triangular_1d)")
    p.add_argument("--runs", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--finetune-steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--dense-targets", type=_csv, help="comma list of x3,x11,sin,tanh3 ('' for none)")
    p.add_argument("--sparse-targets", type=_csv)
    p.add_argument("--methods", type=_csv, help="comma list of " + ",".join(METHODS))
    p.add_argument("--no-difference", action="store_true")
    p.add_argument("--s0", choices=("bounded", "trained", "normalised"))
    p.add_argument("--dtype", choices=("float32", "float64"))
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    kw = {
        k: v
        for k, v in dict(
            runs=a.runs,
            depth=a.depth,
            pretrain_steps=a.pretrain_steps,
            finetune_steps=a.finetune_steps,
            lr=a.lr,
            dense_targets=a.dense_targets,
            sparse_targets=a.sparse_targets,
            methods=a.methods,
            s0=a.s0,
            dtype=a.dtype,
            seed=a.seed,
        ).items()
        if v is not None
    }
    if a.no_difference:
        kw["difference"] = False
    kw["out"] = a.out or ("results/triangular_1d_quick" if a.quick else "results/triangular_1d")
    cfg = Config.quick(**kw) if a.quick else Config(**kw)
    return run(cfg, progress=not a.no_progress)


if __name__ == "__main__":
    main()
