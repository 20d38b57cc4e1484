"""1-D Levy regression (GmP paper Sec. 4.1.1, Fig. 2): stability of the characteristic points under SP/WN/BN/GmP.

Setup of the released notebook (``1d_levy/1d_levy.ipynb``; see
``../shared/research/gmp-official.md`` Sec. 4.1): 50 training points
``x ~ U(-10, 10)``, ``y = levy(x) + N(0, 0.1^2)`` (numpy seed 0), a noiseless
201-point test grid, one hidden layer of 100 ReLU units (GmP's fan-in-1
direction is a fixed random sign), a linear head (SP, or WN for WN), MAE loss,
full-batch Adam (Keras epsilon 1e-7) for up to 10 000 steps, learning rate x0.1
after 500 steps without a training-loss improvement of 1e-4
(``optax.contrib.reduce_on_plateau``), early stopping on the training loss with
patience 1000 (best weights restored when it fires, as Keras 2.8), float64.

Every method is one compiled program: the replicas of ``--seeds`` initialisations
are ``jax.vmap``-ed and the steps ``lax.scan``-ned, and the spatial location
``phi_i`` of every hidden unit is recorded after every step.

    python -m experiments.levy_1d                 # lr "cv" (0.1 GmP / 0.01 others) and 0.1 for all
    python -m experiments.levy_1d --lr 0.1        # the stability figure (Fig. 2c) only
    python -m experiments.levy_1d --quick         # < 1 min smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from experiments.common import COLORS, lr_for  # noqa: E402
from gmpjax import cab  # noqa: E402
from gmpjax.layers import check_parameterization  # noqa: E402
from gmpjax.models import MLP  # noqa: E402
from gmpjax.train import early_stopping_init, early_stopping_update, init_replicas, make_eval_step, make_train_step  # noqa: E402

METHODS = ("gmp", "sp", "wn", "bn")
# Test RMSE stored in the released notebook (seed 0, lr 0.1 GmP / 0.01 others).
PAPER_RMSE = {"gmp": 0.496, "sp": 1.104, "bn": 1.244, "wn": 1.219}


@dataclasses.dataclass
class Config:
    methods: tuple[str, ...] = METHODS
    lrs: tuple[str, ...] = ("cv", "0.1")  # "cv": 0.1 GmP / 0.01 others; a number: that lr for all
    seeds: int = 5
    seed: int = 0  # PRNG seed of the initialisations (replica i uses fold i)
    steps: int = 10_000
    hidden: int = 100
    num_train: int = 50
    noise: float = 0.1
    data_seed: int = 0
    init: str = "uniform"  # GmP init: "uniform" (paper: r = 1, default) or "official" (released code: r = |w_glorot|)
    plateau_factor: float = 0.1
    plateau_patience: int = 500
    plateau_min_delta: float = 1e-4
    es_patience: int = 1000
    adam_eps: float = 1e-7
    record_every: int = 50  # spectrum rows kept for the plots
    out: str = "results/levy_1d"


def levy(x: np.ndarray) -> np.ndarray:
    """1-D Levy function: ``w = 1 + (x - 1)/4``, ``f = sin^2(pi w) + (w - 1)^2 (1 + sin^2(2 pi w))``."""
    w = 1.0 + (x - 1.0) / 4.0
    return np.sin(np.pi * w) ** 2 + (w - 1.0) ** 2 * (1.0 + np.sin(2.0 * np.pi * w) ** 2)


def make_data(cfg: Config) -> dict[str, np.ndarray]:
    """Training points (numpy seed ``data_seed``, drawn as the notebook) and the 201-point test grid, ``(N, 1)``."""
    rng = np.random.RandomState(cfg.data_seed)
    x = rng.uniform(-10.0, 10.0, size=(cfg.num_train, 1))
    y = levy(x) + rng.normal(0.0, cfg.noise, size=(cfg.num_train, 1))
    xt = np.arange(-10.0, 10.1, 0.1).reshape(-1, 1)
    return {"x": x, "y": y, "x_test": xt, "y_test": levy(xt)}


def mae_loss(model, batch):
    x, y = batch
    return jnp.mean(jnp.abs(model(x) - y))


def train_method(method: str, lr: float, cfg: Config, data: dict) -> dict[str, np.ndarray]:
    """Train ``cfg.seeds`` replicas of one method in one jitted vmap(scan); returns numpy arrays per seed."""
    method = check_parameterization(method)
    tx = optax.chain(
        optax.adam(lr, eps=cfg.adam_eps),
        optax.contrib.reduce_on_plateau(
            factor=cfg.plateau_factor, patience=cfg.plateau_patience, rtol=0.0, atol=cfg.plateau_min_delta
        ),
    )

    def make(key):
        return MLP(
            1, (cfg.hidden,), 1, parameterization=method, init=cfg.init, param_dtype=jnp.float64, rngs=nnx.Rngs(key)
        )

    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(cfg.seed), i))(jnp.arange(cfg.seeds))
    graphdef, state0 = init_replicas(make, keys, tx)
    step = make_train_step(graphdef, tx, mae_loss, pass_loss_as_value=True)
    track = cab.track_cab(graphdef)
    predict = make_eval_step(graphdef, lambda m, x: {"pred": m(x)[:, 0]})

    def one(state, batch, x_test, y_test):
        es0 = early_stopping_init(state.params, jnp.float64)

        def body(carry, _):
            st, es = carry
            new, metrics = step(st, batch)
            new = jax.tree.map(lambda a, b: jnp.where(es.stopped, a, b), st, new)  # frozen once stopped
            es = early_stopping_update(es, metrics["loss"], new.params, new.step, patience=cfg.es_patience)
            c = track(new)
            return (new, es), {"loss": metrics["loss"], "phi": c.location[:, 0], "u": c.direction[:, 0]}

        (final, es), hist = jax.lax.scan(body, (state, es0), None, length=cfg.steps)
        c0 = track(state)
        phi = jnp.concatenate([c0.location[None, :, 0], hist["phi"]], 0)  # (T+1, m)
        dphi = jnp.max(jnp.abs(jnp.diff(phi, axis=0)), axis=-1)  # (T,)
        restored = final.replace(
            params=jax.tree.map(lambda b, p: jnp.where(es.stopped, b, p), es.best_params, final.params)
        )
        pred0 = predict(state, x_test)["pred"]
        pred = predict(restored, x_test)["pred"]
        rmse = jnp.sqrt(jnp.mean((pred - y_test[:, 0]) ** 2))
        return {
            "loss": hist["loss"],
            "max_dphi": dphi,
            "phi_sub": phi[:: cfg.record_every],
            "phi_final": track(restored).location[:, 0],
            "pred0": pred0,
            "pred": pred,
            "rmse": rmse,
            "stopped": es.stopped,
            "steps_run": final.step,
            "best_step": es.best_step,
        }

    fn = jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))
    batch = (jnp.asarray(data["x"]), jnp.asarray(data["y"]))
    out = fn(state0, batch, jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"]))
    return jax.tree.map(np.asarray, out)


def summarize(res: dict[str, dict], cfg: Config) -> dict:
    summ = {}
    for m, r in res.items():
        rmse = r["rmse"]
        se = float(rmse.std(ddof=1) / np.sqrt(len(rmse))) if len(rmse) > 1 else float("nan")
        mask = np.arange(r["max_dphi"].shape[1])[None, :] < r["steps_run"][:, None]
        active = np.where(mask, r["max_dphi"], 0.0)
        summ[m] = {
            "rmse_mean": float(rmse.mean()),
            "rmse_se": se,
            "rmse_per_seed": rmse.tolist(),
            "max_dphi_max": float(active.max()),
            "max_dphi_median_step": float(np.median(r["max_dphi"][mask])),
            "frac_steps_dphi_ge_1": float((active >= 1).sum() / mask.sum()),
            "dphi_below_1_every_step_every_seed": bool((active < 1).all()),
            "steps_run": r["steps_run"].tolist(),
            "early_stopped": r["stopped"].tolist(),
            "paper_rmse_seed0": PAPER_RMSE.get(m),
        }
    return summ


def plot_dphi(all_res: dict, cfg: Config, path: str) -> None:
    lrs = list(all_res)
    fig, axes = plt.subplots(1, len(lrs), figsize=(6 * len(lrs), 4), squeeze=False)
    for ax, lr in zip(axes[0], lrs, strict=True):
        for m, r in all_res[lr].items():
            d = r["max_dphi"]
            steps = np.arange(1, d.shape[1] + 1)
            ax.plot(steps, np.maximum(d[0], 2.0**-20), color=COLORS[m], lw=0.6, label=f"{m.upper()} (seed 0)")
            ax.plot(steps, np.maximum(d.max(0), 2.0**-20), color=COLORS[m], lw=0.3, alpha=0.35)
        ax.axhline(1.0, color="k", ls="--", lw=0.8)
        ax.set_yscale("log", base=2)
        ax.set_ylim(2.0**-16, 2.0**16)
        ax.set(xlabel="step", ylabel="max_i |delta phi_i,t|", title=f"lr = {lr} (faint: max over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_spectrum(res: dict, data: dict, cfg: Config, lr: str, path: str) -> None:
    ms = list(res)
    fig, axes = plt.subplots(2, len(ms), figsize=(4 * len(ms), 7), squeeze=False, sharex=True)
    for j, m in enumerate(ms):
        r = res[m]
        ax = axes[0, j]
        ax.plot(data["x_test"][:, 0], data["y_test"][:, 0], "k-", lw=1, label="Levy")
        ax.scatter(data["x"][:, 0], data["y"][:, 0], s=8, c="k", label="train")
        ax.plot(data["x_test"][:, 0], r["pred0"][0], color="gray", ls="--", lw=1, label="init")
        ax.plot(data["x_test"][:, 0], r["pred"][0], color=COLORS[m], lw=1.5, label="trained")
        ax.set(title=f"{m.upper()} lr={lr_for(m, lr):g}  RMSE {r['rmse'][0]:.3f} (seed 0)", ylim=(-1, 12))
        if j == 0:
            ax.legend(fontsize=7)
        ax = axes[1, j]
        phi = r["phi_sub"][0]  # (rows, m)
        rows = np.arange(phi.shape[0]) * cfg.record_every
        ax.scatter(phi.ravel(), np.repeat(rows, phi.shape[1]), s=1, c=COLORS[m], alpha=0.6)
        ax.set(xlim=(-12, 12), xlabel="spatial location phi", ylabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: Config) -> dict:
    for m in cfg.methods:
        check_parameterization(m)
    for lr in cfg.lrs:
        for m in cfg.methods:
            lr_for(m, lr)
    os.makedirs(cfg.out, exist_ok=True)
    t_all = time.time()
    out: dict = {"config": dataclasses.asdict(cfg), "runs": {}}
    all_res, cache = {}, {}
    with jax.enable_x64(True):
        data = make_data(cfg)
        for lr in cfg.lrs:
            res, times = {}, {}
            for m in cfg.methods:
                key = (m, lr_for(m, lr))  # e.g. GmP runs at 0.1 under both "cv" and "0.1": train once
                t0 = time.time()
                if key not in cache:
                    cache[key] = train_method(m, key[1], cfg, data)
                res[m] = cache[key]
                times[m] = time.time() - t0
            all_res[lr] = res
            summ = summarize(res, cfg)
            for m in summ:
                summ[m]["lr"] = lr_for(m, lr)
                summ[m]["wall_s_incl_compile"] = times[m]
            out["runs"][lr] = summ
            plot_spectrum(res, data, cfg, lr, os.path.join(cfg.out, f"levy_fit_spectrum_lr_{lr}.png"))
        plot_dphi(all_res, cfg, os.path.join(cfg.out, "levy_max_dphi.png"))
    out["wall_s"] = time.time() - t_all
    with open(os.path.join(cfg.out, "metrics.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out


def print_table(out: dict) -> None:
    cfg = out["config"]
    print(
        f"1-D Levy, {cfg['seeds']} seeds, {cfg['steps']} steps, GmP init {cfg['init']!r}; "
        f"total wall {out['wall_s']:.1f} s"
    )
    for lr, summ in out["runs"].items():
        print(f"\nlr = {lr}")
        print(
            f"{'method':>6} {'lr':>5} | {'test RMSE mean +- s.e.':>22} | {'paper (seed 0)':>14} | "
            f"{'max_t max_i|dphi|':>17} | {'steps |dphi|>=1':>15} | {'GmP claim <1':>12} | {'wall s':>6}"
        )
        for m, s in summ.items():
            print(
                f"{m.upper():>6} {s['lr']:>5g} | {s['rmse_mean']:>12.3f} +- {s['rmse_se']:<6.3f} | "
                f"{s['paper_rmse_seed0']:>14} | {s['max_dphi_max']:>17.3g} | "
                f"{100 * s['frac_steps_dphi_ge_1']:>14.2f}% | "
                f"{str(s['dphi_below_1_every_step_every_seed']):>12} | {s['wall_s_incl_compile']:>6.1f}"
            )
    print("\nPaper (Fig. 2c, lr 0.1 for all): GmP max_i|dphi| < 1 at every step; SP/WN/BN reach up to 2^16.")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 seeds, 200 steps, lr 'cv' only (smoke test)")
    p.add_argument("--out", default=Config.out)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument(
        "--lr",
        nargs="+",
        default=None,
        help="'cv' (0.1 GmP / 0.01 others) and/or numbers for all methods; default: cv 0.1",
    )
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--init", choices=("official", "uniform"), default=Config.init)
    a = p.parse_args(argv)
    cfg = Config(methods=tuple(a.methods), init=a.init, out=a.out)
    if a.quick:
        cfg = dataclasses.replace(
            cfg, seeds=2, steps=200, lrs=("cv",), record_every=10, plateau_patience=50, es_patience=100
        )
    if a.lr is not None:
        cfg = dataclasses.replace(cfg, lrs=tuple(a.lr))
    if a.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=a.seeds)
    if a.steps is not None:
        cfg = dataclasses.replace(cfg, steps=a.steps)
    if cfg.seeds < 1 or cfg.steps < 1:
        p.error("--seeds and --steps must be >= 1")
    try:
        out = run(cfg)
    except ValueError as e:
        p.error(str(e))
    print_table(out)
    return out


if __name__ == "__main__":
    main()
