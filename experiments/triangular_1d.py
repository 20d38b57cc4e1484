"""1-D function fitting with the triangular-wave reparameterization (Milkert, Hyde & Laine, ICML 2025).

In miniature, with the protocol of ``docs/triangular.md`` (each setting a config value):

* **dense table**: 500 points on [0, 1], a 4-wide x 5-deep ReLU net, 30 initialisations, min and mean final
  MSE for x^3 and x^11; rows Kaiming, RAAI, skip pretraining, pretraining without / with Theorem 3.1;
* **sparse table**: 10 random training and test points per run, min (mean) test MSE for x^3, x^11, sin x,
  tanh 3x (Kaiming vs pretraining + Thm 3.1);
* **difference**: x^3 - x by ``gmpjax.layers.TriangleDifference`` vs a Kaiming width-8 MLP.

Seeds train as replicas (``gmpjax.train.two_phase``); methods without pretraining get as many updates in all.

    python -m experiments.triangular_1d            # full tables
    python -m experiments.triangular_1d --quick    # CI smoke run
    python -m experiments.triangular_1d --dense-targets x3 --sparse-targets none --no-difference
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import cli, report
from gmpjax import triangular as tri
from gmpjax.data.functions import TARGETS, dense_samples, sparse_samples, stable_tag
from gmpjax.layers import ReLUMLP, TriangleDifference
from gmpjax.layers.triangle import INIT_METHODS, init_method_net
from gmpjax.regions import plot_linear_regions
from gmpjax.train.losses import mse as mse_fn
from gmpjax.train.losses import on_batch
from gmpjax.train.two_phase import TwoPhaseConfig, region_snapshot, train_two_phase

TARGET_LABEL = {name: t.label for name, t in TARGETS.items()} | {"x3-x": "x^3 - x"}
TARGET_FN = {name: t.fn for name, t in TARGETS.items()} | {"x3-x": lambda x: x**3 - x}
METHODS = INIT_METHODS
METHOD_LABEL = {"kaiming": "Kaiming (PyTorch default)", "raai": "RAAI", "skip": "skip pretraining",
                "noreg": "pretraining, no reg.", "thm31": "pretraining + Thm 3.1"}  # fmt: skip
DIFFERENCE = {  # model: (schedule of, label); the x^3 - x experiment
    "difference_of_subnets": ("thm31", "difference of two Thm-3.1 subnets (width 8 after switch)"),
    "kaiming_width8": ("kaiming", "Kaiming width-8 MLP"),
}
# Milkert et al. 2025, Table 1 (dense) and the sparse-data table (docs/triangular.md lists both).
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


@dataclasses.dataclass(frozen=True)
class Config(cli.Common):
    method_names: ClassVar[tuple[str, ...] | None] = METHODS
    lr_cv: ClassVar[bool] = False

    methods: tuple[str, ...] = cli.field(METHODS, "dense-table methods (" + " ".join(METHODS) + ")")
    lr: tuple[str, ...] = cli.field(("0.001",), "Adam learning rate(s) of both phases (numbers; 'cv' does not apply)")
    seeds: int = cli.field(30, "random initialisations (runs) per method")
    workdir: str = cli.field("results/triangular_1d", "output folder; alias --out")
    depth: int = cli.field(5, "hidden layers d of the 4-wide net")
    n_dense: int = cli.field(500, "equispaced points of the dense fits")
    n_sparse_train: int = cli.field(10, "random training points per run (sparse table)")
    n_sparse_test: int = cli.field(10, "random test points per run (sparse table)")
    dense_targets: tuple[str, ...] = cli.field(("x3", "x11"), "dense-table targets (or none)", choices=tuple(TARGETS))
    sparse_targets: tuple[str, ...] = cli.field(
        tuple(TARGETS), "sparse-table targets (or none)", choices=tuple(TARGETS)
    )
    sparse_methods: tuple[str, ...] = cli.field(("kaiming", "thm31"), "sparse-table methods", choices=METHODS)
    difference: bool = cli.field(True, "fit x^3 - x by a difference of two subnets (--no-difference skips it)")
    pretrain_steps: int = cli.field(1000, "full-batch steps on the peaks (phase 1)")
    finetune_steps: int = cli.field(20000, "full-batch steps on the raw weights (phase 2)")
    chunk_steps: int = cli.field(1000, "steps between region-count snapshots")
    equal_total_steps: bool = cli.field(True, "methods without phase 1 get its steps too (--no-equal-total-steps)")
    margin: float = cli.field(tri.DEFAULT_MARGIN, "peaks stay in [margin, 1 - margin]")
    peak_low: float = cli.field(0.2, "initial peaks ~ U(peak_low, peak_high)")
    peak_high: float = cli.field(0.8, "initial peaks ~ U(peak_low, peak_high)")
    s0: str = cli.field("bounded", "how s_0 is set", choices=("bounded", "trained", "normalised"))
    dtype: str = cli.field("float32", "parameter and data dtype", choices=("float32", "float64"))
    region_min_width: float = cli.field(1e-6, "fold linear pieces narrower than this when counting regions")

    def __post_init__(self) -> None:
        for name in ("dense_targets", "sparse_targets"):  # 'none' (or '') selects no target
            object.__setattr__(self, name, tuple(t for t in getattr(self, name) if t not in ("", "none")))
        super().__post_init__()
        cli.positive(self, "depth", "n_dense", "n_sparse_train", "n_sparse_test", "chunk_steps")
        if self.pretrain_steps < 0 or self.finetune_steps < 0:
            raise ValueError("--pretrain-steps and --finetune-steps must be >= 0")


def get_config() -> Config:
    """The research notes' protocol (section 6): 30 runs, 1000 + 20000 full-batch Adam(1e-3) steps."""
    return Config()


CONFIGS = {"paper": get_config}


def quick(cfg: Config) -> dict:
    return dict(seeds=3, pretrain_steps=60, finetune_steps=120, chunk_steps=60, n_dense=200,
                workdir="results/triangular_1d_quick")  # fmt: skip


def make_model_fn(method: str, cfg: Config, target: str, dtype, width: int = 4):
    peaks = dict(margin=cfg.margin, peak_range=(cfg.peak_low, cfg.peak_high), param_dtype=dtype)
    if target == "x3-x":
        if method == "kaiming":
            return lambda k: ReLUMLP((1,) + (2 * width,) * cfg.depth + (1,), param_dtype=dtype, rngs=nnx.Rngs(k))
        return lambda k: TriangleDifference(cfg.depth, rngs=nnx.Rngs(k), **peaks)
    t = TARGETS[target]
    kw = dict(width=width, sign=t.sign, output_affine=t.output_affine, s0=cfg.s0, **peaks)
    return lambda k: init_method_net(method, cfg.depth, rngs=nnx.Rngs(k), **kw)


def schedule(method: str, cfg: Config, lr: float) -> TwoPhaseConfig:
    pre = cfg.pretrain_steps if method in ("noreg", "thm31") else 0
    fine = cfg.finetune_steps + (cfg.pretrain_steps - pre if cfg.equal_total_steps else 0)
    return TwoPhaseConfig(pre, fine, pretrain_lr=lr, finetune_lr=lr, chunk_steps=cfg.chunk_steps)


def make_data(kind: str, target: str, cfg: Config, dtype):
    """``(train, test)``: dense/difference: ``n_dense`` points on [0, 1], no test set; sparse: per-run uniform draws."""
    f = TARGET_FN[target]
    if kind != "sparse":
        return dense_samples(f, cfg.n_dense, dtype), None
    key = jax.random.fold_in(jax.random.key(cfg.seed + 1), stable_tag(target))
    return sparse_samples(f, key, runs=cfg.seeds, n_train=cfg.n_sparse_train, n_test=cfg.n_sparse_test, dtype=dtype)


def run_job(cfg: Config, kind: str, target: str, method: str, lr: float) -> dict:
    """Train ``cfg.seeds`` replicas of ``method`` on one target; MSEs, loss curves, region counts, best run."""
    dtype = getattr(jnp, cfg.dtype)  # float64 runs under jax.enable_x64 (run)
    (train, test), model = make_data(kind, target, cfg, dtype), method
    method = DIFFERENCE[model][0] if kind == "difference" else model
    keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), stable_tag(f"{method}/{target}")), cfg.seeds)
    t0 = time.time()
    res = train_two_phase(
        make_model_fn(method, cfg, target, dtype), keys, on_batch(mse_fn), train, schedule(method, cfg, lr),
        batch_axis=0 if kind == "sparse" else None, snapshot=region_snapshot(cfg.region_min_width),
        progress=cfg.progress, desc=f"{target}/{model}",
    )  # fmt: skip
    out = {"method": method, "target": target, "lr": lr, "wall_s": time.time() - t0, **res.summary(train, test)}
    out["_best_layers"] = out.pop("best_layers")  # for the figures only, not saved
    return out


def jobs(cfg: Config) -> dict[str, tuple[str, str, str, float, str]]:
    """``job name -> (kind, target, method, lr, key in the results)``; the key carries the lr when there are several."""
    groups = [("dense", t, cfg.methods) for t in cfg.dense_targets]
    groups += [("sparse", t, cfg.sparse_methods) for t in cfg.sparse_targets]
    groups += [("difference", "x3-x", tuple(DIFFERENCE))] if cfg.difference else []
    runs = [(kind, t, key, m, lr) for kind, t, ms in groups for key, (m, lr) in cfg.runs(ms).items()]
    return {f"{kind}-{t}-{key}": (kind, t, m, lr, key) for kind, t, key, m, lr in runs}


def run(cfg: Config) -> dict:
    t0, specs = time.time(), jobs(cfg)
    with jax.enable_x64(cfg.dtype == "float64"):
        done = report.run_jobs(cfg, list(specs), lambda j: run_job(cfg, *specs[j][:4]), desc="triangular_1d")
    results: dict = {"config": dataclasses.asdict(cfg), "dense": {}, "sparse": {}, "difference": {}}
    for job, (kind, target, _, _, key) in specs.items():
        results[kind].setdefault(target, {})[key] = done[job]
    results["wall_s"] = time.time() - t0
    for kind, block in ((k, results[k]) for k in ("dense", "sparse", "difference") if results[k]):  # the figures
        name = "difference_fit.png" if kind == "difference" else f"{kind}_fits.png"
        _fits_figure(block, "test_mse" if kind == "sparse" else "train_mse", os.path.join(cfg.workdir, name))
        if kind != "difference":
            _curves_figure(block, cfg.depth, os.path.join(cfg.workdir, f"{kind}_curves_regions.png"))
    report.write_results(cfg.workdir, results, tables)  # without the best runs' "_best_layers" (figures only)
    print(f"\nTotal wall time: {results['wall_s']:.0f} s")
    return results


# ---------------------------------------------------------------------------- reporting


def summary(res: dict, key: str = "train_mse") -> tuple[float, float]:
    v = np.asarray(res[key], np.float64)
    return float(v.min()), float(v.mean())


def _label(key: str, block: dict, labels: dict) -> str:
    """Row label of results ``key`` (``method`` or ``method@lr`` when several learning rates ran)."""
    r = next(iter(block.values()))[key]
    return labels[key.split("@")[0]] + ("" if "@" not in key else f" (lr {r['lr']:g})")


def _regions(r: dict) -> str:
    return f"{np.median(r['snapshots'][-1]['regions']):.0f}"


def _methods(block: dict) -> list[str]:
    return [k for k in next(iter(block.values())) if not k.startswith("_")]


def _dense_table(dense: dict) -> str:
    lines = ["Dense 1-D fits (min / mean final MSE over runs; paper = Milkert et al. 2025 Table 1)\n"]
    head = ["method"] + [
        f"{TARGET_LABEL[t]} {s} ({w})" for t in dense for s in ("min", "mean") for w in ("ours", "paper")
    ]
    rows = []
    for k in _methods(dense):
        cells = [_label(k, dense, METHOD_LABEL)]
        for t, block in dense.items():
            (mn, me), (pm, pme) = summary(block[k]), PAPER_DENSE[block[k]["method"]][t]
            cells += [f"{mn:.2e}", f"{pm:.2e}", f"{me:.2e}", f"{pme:.2e}"]
        rows.append([*cells, "/".join(_regions(block[k]) for block in dense.values())])
    lines += [report.markdown_table([*head, "final regions (median)"], rows), ""]
    walls = ", ".join(
        f"{TARGET_LABEL[t]} {sum(b[k]['wall_s'] for k in _methods(dense)):.0f} s" for t, b in dense.items()
    )
    lines.append(f"Wall time per target (all methods): {walls}")
    pre = ["{}/{}: {:.2e} / {:.2e}".format(TARGET_LABEL[t], k, *summary(b[k], "pretrain_mse"))
           for t, b in dense.items() for k in _methods(dense) if "pretrain_mse" in b[k]]  # fmt: skip
    return "\n".join(lines + (["MSE at the end of pretraining (min / mean): " + "; ".join(pre)] if pre else []))


def _sparse_table(sparse: dict) -> str:
    lines = ["Sparse data (10 train / 10 test points per run; min test MSE, mean in brackets)\n"]
    rows = []
    for k in _methods(sparse):
        cells = [_label(k, sparse, METHOD_LABEL)]
        for t, block in sparse.items():
            mn, me = summary(block[k], "test_mse")
            cells += [f"{mn:.2e} ({me:.1e})", f"{PAPER_SPARSE.get(block[k]['method'], {}).get(t, float('nan')):.2e}"]
        rows.append(cells)
    head = ["method"] + [f"{TARGET_LABEL[t]} ({w})" for t in sparse for w in ("ours", "paper")]
    return "\n".join([*lines, report.markdown_table(head, rows)])


def _difference_table(block: dict) -> str:
    d, labels = block["x3-x"], {k: v[1] for k, v in DIFFERENCE.items()}
    rows = [[_label(k, block, labels), *(f"{v:.2e}" for v in summary(d[k])), _regions(d[k])] for k in _methods(block)]
    table = report.markdown_table(["model", "min MSE", "mean MSE", "final regions (median)"], rows)
    return "x^3 - x as a difference of two convex subnets (no paper numbers)\n\n" + table


def tables(results: Mapping[str, Any]) -> dict[str, str]:
    """``{"dense", "sparse", "difference"}`` (those that ran): min / mean MSE over runs beside the paper's."""
    makers = {"dense": _dense_table, "sparse": _sparse_table, "difference": _difference_table}
    return {kind: make(results[kind]) for kind, make in makers.items() if results.get(kind)}


def _fits_figure(block: dict, key: str, path: str) -> None:
    """The best run of every target (rows) and method (columns) with its linear regions; title: the min ``key``."""
    import matplotlib.pyplot as plt

    targets, methods = list(block), _methods(block)
    n, k = len(targets), len(methods)
    fig, axes = plt.subplots(n, k, figsize=(3.2 * k, 2.6 * n), squeeze=False)
    for i, t in enumerate(targets):
        for j, m in enumerate(methods):
            r = block[t][m]
            plot_linear_regions(r["_best_layers"], (0.0, 1.0), ax=axes[i, j], target=TARGET_FN[t])
            axes[i, j].set_title(f"{TARGET_LABEL[t]} / {m}: {summary(r, key)[0]:.1e}", fontsize=8)
            axes[i, j].legend().set_visible(False)
    fig.tight_layout()
    report.save_figure(fig, path, dpi=110)


def _curves_figure(block: dict, depth: int, path: str) -> None:
    """Per target: the median training MSE (dotted: the switch) and the mean number of linear regions per step."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(block), figsize=(4.2 * len(block), 6.2), squeeze=False)
    for i, t in enumerate(block):
        for m in _methods(block):
            r = block[t][m]
            axes[0, i].semilogy(r["loss_curve_median"], label=m, lw=1)
            if r["switch_step"]:
                axes[0, i].axvline(r["switch_step"], color="0.6", ls=":", lw=0.8)
            steps = [s["step"] for s in r["snapshots"]]
            axes[1, i].plot(steps, [np.mean(s["regions"]) for s in r["snapshots"]], "-o", ms=2, label=m)
        axes[1, i].axhline(2**depth, color="k", ls="--", lw=0.8, label=f"2^{depth}")
        axes[1, i].set_xlabel("step")
        for ax, title in zip(axes[:, i], ("median training MSE", "mean linear regions on [0,1]"), strict=True):
            ax.set_title(f"{TARGET_LABEL[t]}: {title}", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    report.save_figure(fig, path, dpi=110)


main = cli.entry(__name__)  # main(argv) runs the script; python -m runs it on sys.argv

if __name__ == "__main__":
    main()
