"""Fig. 1 (b)-(e) of the GmP paper: stability of a 2-D ReLU unit's CAB under a small parameter perturbation.

One unit ``relu(w . x + b)`` with a small weight (the released notebook draws
``w, b ~ N(0, 1e-3^2)`` with numpy seed 1) is written in four parameterizations
that compute the same function, every parameter is perturbed by ``delta``
(``epsilon = delta * 1``), and the new boundary is compared with the original:

* SP:  ``(w, b) -> (w + delta, b + delta)``
* WN:  ``(v, g, b) -> (v + delta, g + delta, b + delta)`` with ``v = w``, ``g = ||w||``
* BN:  ``(w, b, gamma, beta) -> (+ delta each)``, batch statistics of standardised
  inputs (mean 0, covariance I), so ``BN`` computes ``gamma w.x / sqrt(||w||^2 + eps) + beta``
* GmP: ``(theta, lambda) -> (theta + delta, lambda + delta)``

plus the analytical worst case of Prop. 2.3, ``epsilon = -(1 + delta) w``, which
turns the SP (and WN) normal by exactly 180 degrees while GmP's change is bounded
by ``||epsilon||`` (Thm. 3.7).

    python -m experiments.perturbation_2d [--quick] [--out results/perturbation_2d]
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

from gmpjax import cab  # noqa: E402
from gmpjax import hyperspherical as hs  # noqa: E402

METHODS = ("sp", "wn", "bn", "gmp")
COLORS = {"sp": "tab:red", "wn": "tab:green", "bn": "tab:purple", "gmp": "tab:blue"}


@dataclasses.dataclass
class Config:
    seed: int = 1  # numpy seed of the released notebook
    scale: float = 1e-3  # w, b ~ N(0, scale^2)
    deltas: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
    headline_delta: float = 1e-3  # the paper's "perturbation of magnitude 1e-3"
    worst_case_delta: float = 1e-3
    bn_epsilon: float = 0.0  # Eq. (4) has none; Keras' 1e-3 would swamp ||w|| ~ 1e-3
    out: str = "results/perturbation_2d"


def initial_unit(cfg: Config) -> tuple[np.ndarray, float]:
    """``(w (2,), b)`` drawn as in the released notebook."""
    rng = np.random.RandomState(cfg.seed)
    w = rng.randn(2) * cfg.scale
    b = float(rng.randn(1)[0] * cfg.scale)
    return w, b


def perturbed_cabs(w: np.ndarray, b: float, delta: float, bn_epsilon: float = 0.0) -> dict[str, cab.CAB]:
    """Original (``"original"``) and perturbed CAB of each method; each a ``CAB`` of shape ``(2,)``."""
    w = jnp.asarray(w, jnp.float64)
    b = jnp.asarray(b, jnp.float64)
    one = jnp.ones_like(w)
    out = {"original": cab.CAB(cab.sp_direction(w), cab.sp_location(w, b))}
    # SP
    w_sp, b_sp = w + delta * one, b + delta
    out["sp"] = cab.CAB(cab.sp_direction(w_sp), cab.sp_location(w_sp, b_sp))
    # WN: v = w, g = ||w||
    v, g = w + delta * one, jnp.linalg.norm(w) + delta
    out["wn"] = cab.CAB(cab.sp_direction(cab.wn_weight(v, g)), cab.wn_location(v, g, b + delta))
    # BN with batch statistics of standardised inputs: mean_z = b, var_z = ||w||^2;
    # gamma = 1 and beta chosen so that the unperturbed unit has the same CAB as SP.
    gamma = 1.0
    beta = b * gamma / jnp.sqrt(jnp.sum(w**2) + bn_epsilon)
    w_bn, b_bn, g_bn, be_bn = w + delta * one, b + delta, gamma + delta, beta + delta
    loc = cab.bn_location(w_bn, b_bn, g_bn, be_bn, mean=b_bn, var=jnp.sum(w_bn**2), epsilon=bn_epsilon)
    out["bn"] = cab.CAB(jnp.sign(g_bn) * cab.sp_direction(w_bn), loc)
    # GmP
    theta = hs.unit_to_angles(w)
    lam = b / jnp.linalg.norm(w)
    u = cab.gmp_direction(theta + delta)
    out["gmp"] = cab.CAB(u, cab.gmp_location(u, lam + delta))
    return out


_perturbed_cabs_jit = jax.jit(perturbed_cabs, static_argnames="bn_epsilon")


def worst_case(w: np.ndarray, b: float, delta: float) -> dict[str, float]:
    """Prop. 2.3: ``epsilon = -(1 + delta) w`` on SP's ``w`` (and WN's ``v``) vs a GmP angle step of the same size.

    Returns the angle changes in degrees and the SP location's distance ratio.
    """
    w = jnp.asarray(w, jnp.float64)
    eps = -(1.0 + delta) * w
    sp = float(jnp.degrees(cab.angle_between(w, w + eps)))
    wn = float(
        jnp.degrees(cab.angle_between(cab.wn_weight(w, jnp.linalg.norm(w)), cab.wn_weight(w + eps, jnp.linalg.norm(w))))
    )
    theta = hs.unit_to_angles(w)
    size = float(jnp.linalg.norm(eps))
    gmp = float(jnp.degrees(cab.angle_between(cab.gmp_direction(theta), cab.gmp_direction(theta + size))))
    phi0 = cab.sp_location(w, b)
    phi1 = cab.sp_location(w + eps, b)
    return {
        "epsilon_norm": size,
        "sp_angle_deg": sp,
        "wn_angle_deg": wn,
        "gmp_angle_deg_same_size": gmp,
        "gmp_bound_deg": float(np.degrees(size)),
        "sp_location_distance_ratio": float(jnp.linalg.norm(phi1) / jnp.linalg.norm(phi0)),
    }


def _line(ax, c: cab.CAB, color, lw=1.5, ls="-", label=None):
    u, phi = np.asarray(c.direction), np.asarray(c.location)
    t = np.array([-1, 1]) * 1e3
    d = np.array([-u[1], u[0]])
    pts = phi[None, :] + t[:, None] * d[None, :]
    ax.plot(pts[:, 0], pts[:, 1], color=color, lw=lw, ls=ls, label=label)
    ax.plot([0, phi[0]], [0, phi[1]], color=color, ls=":", lw=1.5)
    ax.scatter([phi[0]], [phi[1]], color=color, s=25, zorder=3)


def plot_panels(w, b, cfg: Config, path: str) -> None:
    fig, axes = plt.subplots(1, len(cfg.deltas), figsize=(4 * len(cfg.deltas), 4.2))
    for ax, delta in zip(np.atleast_1d(axes), cfg.deltas, strict=True):
        cabs = _perturbed_cabs_jit(w, b, delta, bn_epsilon=cfg.bn_epsilon)
        _line(ax, cabs["original"], "saddlebrown", lw=4, label="original")
        for m in METHODS:
            _line(ax, cabs[m], COLORS[m], label=f"{m.upper()} perturbed")
        ax.scatter([0], [0], color="k", s=20)
        ax.set(xlim=(-1, 1), ylim=(-1, 1), aspect="equal", title=f"delta = {delta:g}", xlabel="$x_1$", ylabel="$x_2$")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("CAB of one ReLU unit under epsilon = delta * 1 (Fig. 1 b-e)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_worst_case(w, b, cfg: Config, path: str) -> None:
    w = np.asarray(w)
    eps = -(1 + cfg.worst_case_delta) * w
    orig = cab.CAB(cab.sp_direction(jnp.asarray(w)), cab.sp_location(jnp.asarray(w), b))
    new = cab.CAB(cab.sp_direction(jnp.asarray(w + eps)), cab.sp_location(jnp.asarray(w + eps), b))
    fig, ax = plt.subplots(figsize=(5, 5))
    for c, col, lab in ((orig, "saddlebrown", "original"), (new, "tab:red", "SP, eps = -(1+delta) w")):
        _line(ax, c, col, label=lab)
        phi, u = np.asarray(c.location), np.asarray(c.direction)
        ax.annotate("", xy=phi + 0.3 * u, xytext=phi, arrowprops=dict(color=col, arrowstyle="->", lw=2))
    ax.set(xlim=(-1, 1), ylim=(-1, 1), aspect="equal", title="Worst case (Prop. 2.3): normal turns 180 deg")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: Config) -> dict:
    t0 = time.time()
    os.makedirs(cfg.out, exist_ok=True)
    with jax.enable_x64(True):
        w, b = initial_unit(cfg)
        table = {}
        for delta in cfg.deltas:
            cabs = _perturbed_cabs_jit(w, b, delta, bn_epsilon=cfg.bn_epsilon)
            o = cabs["original"]
            table[f"{delta:g}"] = {
                m: {
                    "angle_deg": float(jnp.degrees(cab.angle_between(o.direction, cabs[m].direction))),
                    "location_shift": float(jnp.linalg.norm(cabs[m].location - o.location)),
                }
                for m in METHODS
            }
        wc = worst_case(w, b, cfg.worst_case_delta)
        plot_panels(w, b, cfg, os.path.join(cfg.out, "perturbation_panels.png"))
        plot_worst_case(w, b, cfg, os.path.join(cfg.out, "worst_case_180.png"))
    res = {
        "config": dataclasses.asdict(cfg),
        "w": w.tolist(),
        "b": b,
        "per_delta": table,
        "worst_case": wc,
        "wall_s": time.time() - t0,
    }
    with open(os.path.join(cfg.out, "metrics.json"), "w") as f:
        json.dump(res, f, indent=2)
    return res


def print_table(res: dict) -> None:
    print(f"unit: w = {res['w']}, b = {res['b']:.3g}")
    print(f"{'delta':>8} | " + " | ".join(f"{m.upper():>22}" for m in METHODS))
    print(f"{'':>8} | " + " | ".join(f"{'angle deg / |dphi|':>22}" for _ in METHODS))
    for d, row in res["per_delta"].items():
        print(
            f"{d:>8} | " + " | ".join(f"{row[m]['angle_deg']:10.3f} / {row[m]['location_shift']:9.3g}" for m in METHODS)
        )
    wc = res["worst_case"]
    print("Worst case eps = -(1+delta) w  (paper, Prop. 2.3: SP and WN turn by 180 deg; GmP <= ||eps||):")
    print(
        f"  SP {wc['sp_angle_deg']:.3f} deg | WN {wc['wn_angle_deg']:.3f} deg | GmP (same-size step on theta) "
        f"{wc['gmp_angle_deg_same_size']:.4f} deg <= bound {wc['gmp_bound_deg']:.4f} deg"
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="same as the full run (it takes about a second)")
    p.add_argument("--out", default=Config.out)
    p.add_argument("--deltas", type=float, nargs="+", default=list(Config.deltas))
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--bn-epsilon", type=float, default=Config.bn_epsilon)
    a = p.parse_args(argv)
    if any(d <= 0 for d in a.deltas):
        p.error("--deltas must be positive")
    cfg = Config(seed=a.seed, deltas=tuple(a.deltas), bn_epsilon=a.bn_epsilon, out=a.out)
    res = run(cfg)
    print_table(res)
    return res


if __name__ == "__main__":
    main()
