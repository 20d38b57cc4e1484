"""1-D Levy regression (GmP paper Sec. 4.1.1, Fig. 2): stability of the characteristic points under SP/WN/BN/GmP.

Setup of the released notebook (``1d_levy/1d_levy.ipynb``; ``docs/characteristic_activation.md``):
``gmpjax.data.levy_data`` (50 noisy points, a 201-point test grid), 100 ReLU units (GmP's fan-in-1 direction
is a fixed random sign), a linear head (WN for WN), MAE loss, full-batch Adam (Keras epsilon 1e-7) for up to
10 000 steps (one step = one epoch), lr x0.1 after 500 steps without a training-loss gain of 1e-4, early
stopping on the training loss with patience 1000 (best weights restored only when it fires, as Keras 2.8),
float64. The seeds of a method are replicas (``train_replicas``); every unit's ``phi_i`` is tracked per step.
``--protocol official``: the released code's GmP init (r = |w_glorot|).

    python -m experiments.levy_1d                 # lr "cv" (0.1 GmP / 0.01 others) and 0.1 for all
    python -m experiments.levy_1d --lr 0.1        # the stability figure (Fig. 2c) only
    python -m experiments.levy_1d --quick         # < 1 min smoke run
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import cli, report
from gmpjax import cab
from gmpjax.data.levy import levy_data
from gmpjax.layers.registry import learning_rates
from gmpjax.models import MLP
from gmpjax.train.engine import make_eval_step
from gmpjax.train.loop import LoopConfig
from gmpjax.train.losses import mae, on_batch
from gmpjax.train.optim import keras_adam
from gmpjax.train.replicas import train_replicas
from gmpjax.train.rules import PlateauConfig, Rules

PAPER_RMSE = {"gmp": 0.496, "sp": 1.104, "bn": 1.244, "wn": 1.219}  # released notebook, seed 0, lr "cv"
PLOTS = ("dphi0", "dphi_max", "pred0", "pred", "phi_rows")  # seed-0 curves kept for the figures only


@dataclasses.dataclass(frozen=True)
class Config(cli.Common):
    methods: tuple[str, ...] = cli.field(("gmp", "sp", "wn", "bn"), "parameterizations, space-separated")
    lr: tuple[str, ...] = cli.field(("cv", "0.1"), "lr settings, each 'cv' (0.1 GmP / 0.01 others) or one lr for all")
    seeds: int = cli.field(5, "initialisations per method (replica i: fold_in(key(seed), i))")
    workdir: str = cli.field("results/levy_1d", "output folder; alias --out")
    steps: int = cli.field(10_000, "full-batch Adam steps at most")
    hidden: int = cli.field(100, "hidden ReLU units")
    num_train: int = cli.field(50, "training points")
    noise: float = cli.field(0.1, "label noise std")
    data_seed: int = cli.field(0, "numpy seed of the data")
    init: str = cli.field("uniform", "GmP init: uniform (paper, r = 1) or official", choices=("uniform", "official"))
    rules: Rules = cli.field(
        Rules("loss", patience=1000, restore="if_stopped", plateau=PlateauConfig(500, 0.1, 1e-4)),
        "early stopping and lr decay on the training loss, counted in steps",
    )
    adam_eps: float = cli.field(1e-7, "Adam epsilon (Keras default)")
    record_every: int = cli.field(50, "spectrum rows kept for the plot")

    def __post_init__(self) -> None:
        super().__post_init__()
        cli.positive(self, "steps", "hidden", "num_train", "record_every")


def get_config() -> Config:
    return Config()


def get_official_config() -> Config:
    return Config(init="official")


CONFIGS = {"paper": get_config, "official": get_official_config}


def quick(cfg: Config) -> dict:
    return {"seeds": 2, "steps": 200, "lr": ("cv",), "record_every": 10, "rules.plateau.patience": 50,
            "rules.patience": 100}  # fmt: skip


def train_method(method: str, lr: float, cfg: Config, data: dict) -> dict[str, np.ndarray]:
    """``cfg.seeds`` replicas of one method in one sweep (call under ``jax.enable_x64``); arrays ``(seeds, ...)``."""

    def make(key):
        return MLP(
            1, (cfg.hidden,), 1, parameterization=method, init=cfg.init, param_dtype=jnp.float64, rngs=nnx.Rngs(key)
        )

    def track(graphdef):  # per step: the largest |delta phi_i| and every phi_i
        cabs = cab.track_cab(graphdef)
        return lambda prev, new: {
            "max_dphi": cab.step_change(cabs(prev), cabs(new))["max_dphi"], "phi": cabs(new).location[:, 0]
        }  # fmt: skip

    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(cfg.seed), i))(jnp.arange(cfg.seeds))
    out = train_replicas(
        make, functools.partial(keras_adam, eps=cfg.adam_eps), on_batch(mae),
        {"train": (jnp.asarray(data["x"]), jnp.asarray(data["y"]))},
        LoopConfig(cfg.steps, monitor_split=None, rules=cfg.rules), keys=keys, lrs=lr, track=track,
    )  # fmt: skip
    x_test, y_test = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"][:, 0])
    cabs = cab.track_cab(out.graphdef)

    evaluate = make_eval_step(out.graphdef, lambda m, x: m(x)[:, 0])  # eval mode: BN's moving statistics

    def finish(s0, s):
        predict = lambda st: evaluate(st, x_test)["metric"]  # noqa: E731
        pred = predict(s)
        rmse = jnp.sqrt(jnp.mean((pred - y_test) ** 2))
        return {"pred0": predict(s0), "pred": pred, "rmse": rmse, "phi0": cabs(s0).location[:, 0]}

    res = out.result
    out_ = jax.tree.map(np.asarray, {**jax.jit(jax.vmap(finish))(out.init, res.state), "stopped": res.stopped})
    tr = jax.tree.map(np.asarray, res.history["track"])  # (seeds, steps, 1, ...): one step per epoch
    phi = np.concatenate([out_["phi0"][:, None], tr["phi"][:, :, 0]], 1)  # (seeds, steps + 1, m)
    return {**out_, "steps_run": np.asarray(res.epochs), "max_dphi": tr["max_dphi"][:, :, 0], "phi": phi}


def summarize(r: dict[str, np.ndarray], method: str, lr: float, record_every: int) -> dict:
    """The table's numbers (all seeds; steps after early stopping excluded) and the seed-0 curves of ``PLOTS``."""
    mask = np.arange(r["max_dphi"].shape[1])[None, :] < r["steps_run"][:, None]
    active = np.where(mask, r["max_dphi"], 0.0)
    mean, se = report.mean_se(r["rmse"])
    return {
        "lr": lr, "rmse_mean": mean, "rmse_se": se, "rmse_per_seed": r["rmse"], "max_dphi_max": float(active.max()),
        "max_dphi_median_step": float(np.median(r["max_dphi"][mask])),
        "frac_steps_dphi_ge_1": float((active >= 1).sum() / mask.sum()),
        "dphi_below_1_every_step_every_seed": bool((active < 1).all()), "steps_run": r["steps_run"],
        "early_stopped": r["stopped"], "paper_rmse_seed0": PAPER_RMSE.get(method),
        **dict(zip(PLOTS[:4], (active[0], active.max(0), r["pred0"][0], r["pred"][0]), strict=True)),
        "phi_rows": r["phi"][0, : r["steps_run"][0] + 1 : record_every],
    }  # fmt: skip


def plot(runs: dict, data: dict, cfg: Config) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, (label, summ) in zip(axes[0], runs.items(), strict=True):
        for m, s in summ.items():
            for d, kw in ((s["dphi0"], dict(lw=0.6, label=f"{m.upper()} (seed 0)")), (s["dphi_max"], dict(lw=0.3))):
                ax.plot(
                    np.arange(1, len(d) + 1), np.maximum(np.asarray(d, float), 2.0**-20), color=report.color(m), **kw
                )
        ax.axhline(1.0, color="k", ls="--", lw=0.8)
        ax.set_yscale("log", base=2)
        ax.set(ylim=(2.0**-16, 2.0**16), xlabel="step", ylabel="max_i |delta phi_i,t|", title=f"lr = {label}")
        ax.legend(fontsize=7, title="thin: max over seeds")
    fig.tight_layout()
    report.save_figure(fig, os.path.join(cfg.workdir, "levy_max_dphi.png"), dpi=110)
    xt, yt = data["x_test"][:, 0], data["y_test"][:, 0]
    for label, summ in runs.items():
        fig, axes = plt.subplots(2, len(summ), figsize=(4 * len(summ), 7), squeeze=False, sharex=True)
        for (m, s), top, bottom in zip(summ.items(), axes[0], axes[1], strict=True):
            top.plot(xt, yt, "k-", lw=1, label="Levy")
            top.scatter(data["x"][:, 0], data["y"][:, 0], s=8, c="k", label="train")
            top.plot(xt, s["pred0"], color="gray", ls="--", lw=1, label="init")
            top.plot(xt, s["pred"], color=report.color(m), lw=1.5, label="trained")
            top.set(title=f"{m.upper()} lr={s['lr']:g}  RMSE {s['rmse_per_seed'][0]:.3f} (seed 0)", ylim=(-1, 12))
            phi = np.asarray(s["phi_rows"], float)  # (rows, m): every record_every-th step of seed 0
            rows = np.repeat(np.arange(len(phi)) * cfg.record_every, phi.shape[1])
            bottom.scatter(phi.ravel(), rows, s=1, c=report.color(m), alpha=0.6)
            bottom.set(xlim=(-12, 12), xlabel="spatial location phi", ylabel="step")
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        report.save_figure(fig, os.path.join(cfg.workdir, f"levy_fit_spectrum_lr_{label}.png"), dpi=110)


def run(cfg: Config) -> dict:
    t_all = time.time()
    data = levy_data(cfg.num_train, cfg.noise, cfg.data_seed)
    lr_of = {(m, lb): learning_rates((lb,), m)[0] for lb in cfg.lr for m in cfg.methods}
    jobs = {f"{m}_lr{lr:g}": (m, lr) for (m, _), lr in lr_of.items()}  # GmP at 0.1 under "cv" and "0.1": trained once

    def job(name: str) -> dict:
        return summarize(train_method(*jobs[name], cfg, data), *jobs[name], cfg.record_every)

    with jax.enable_x64(True):
        done = report.run_jobs(cfg, list(jobs), job, desc="levy")
    runs = {lb: {m: done[f"{m}_lr{lr_of[m, lb]:g}"] for m in cfg.methods} for lb in cfg.lr}
    plot(runs, data, cfg)
    table = {lb: {m: {k: v for k, v in s.items() if k not in PLOTS} for m, s in sm.items()} for lb, sm in runs.items()}
    out = {"config": dataclasses.asdict(cfg), "runs": table, "wall_s": time.time() - t_all}
    print(f"1-D Levy, {cfg.seeds} seeds, <= {cfg.steps} steps, GmP init {cfg.init!r}; total wall {out['wall_s']:.1f} s")
    report.write_results(cfg.workdir, out, tables)
    print("\nPaper (Fig. 2c, lr 0.1 for all): GmP max_i|dphi| < 1 at every step; SP/WN/BN reach up to 2^16.")
    return out


def tables(results: Mapping[str, Any]) -> dict[str, str]:
    """``{"rmse": ...}``: per lr setting and method, test RMSE (mean ± s.e. over seeds) beside the notebook's
    (seed 0), the largest per-step ``max_i |dphi_i|`` over steps and seeds, and the share of steps where it is >= 1."""
    head = "lr setting;method;lr;test RMSE mean ± s.e.;notebook (seed 0);max_t max_i dphi;steps dphi >= 1;GmP claim < 1"
    rows = [
        [lb, m.upper(), f"{s['lr']:g}", report.fmt_mean_se(s["rmse_mean"], s["rmse_se"]), s["paper_rmse_seed0"],
         f"{s['max_dphi_max']:.3g}", f"{100 * s['frac_steps_dphi_ge_1']:.2f}%", s["dphi_below_1_every_step_every_seed"]]
        for lb, summ in results["runs"].items() for m, s in summ.items()
    ]  # fmt: skip
    return {"rmse": report.markdown_table(head.split(";"), rows)}


main = cli.entry(__name__)  # main(argv) runs the script; python -m runs it on sys.argv

if __name__ == "__main__":
    main()
