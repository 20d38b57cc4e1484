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

No training: ``--lr`` and ``--seeds`` are accepted (shared flags) and unused; ``--methods`` picks the
parameterizations drawn and tabulated (of sp, wn, bn, gmp).

    python -m experiments.perturbation_2d [--quick] [--workdir results/perturbation_2d]
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from experiments import cli, report
from gmpjax import cab
from gmpjax import hyperspherical as hs

METHODS = ("sp", "wn", "bn", "gmp")


@dataclasses.dataclass(frozen=True)
class Config(cli.Common):
    seed: int = cli.field(1, "numpy seed of the unit (the released notebook's: 1)")
    workdir: str = cli.field("results/perturbation_2d", "output folder; alias --out")
    scale: float = cli.field(1e-3, "w, b ~ N(0, scale^2)")
    deltas: tuple[float, ...] = cli.field((1e-4, 3e-4, 1e-3, 3e-3), "perturbation sizes delta (epsilon = delta * 1)")
    headline_delta: float = cli.field(1e-3, "the paper's perturbation of magnitude 1e-3")
    worst_case_delta: float = cli.field(1e-3, "delta of the worst case epsilon = -(1 + delta) w")
    bn_epsilon: float = cli.field(0.0, "BN epsilon (Eq. 4 has none; Keras' 1e-3 would swamp ||w|| ~ 1e-3)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.deltas or any(not d > 0 for d in self.deltas):
            raise ValueError(f"--deltas must be positive (got {' '.join(map(str, self.deltas))})")
        if unknown := [m for m in self.methods if m not in METHODS]:
            raise ValueError(f"--methods: this demo draws {' '.join(METHODS)} only (got {' '.join(unknown)})")
        if self.bn_epsilon < 0:
            raise ValueError(f"--bn-epsilon must be >= 0 (got {self.bn_epsilon})")


def get_config() -> Config:
    return Config()


CONFIGS = {"paper": get_config}


def quick(cfg: Config) -> dict:
    return {}  # the full run takes about a second


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


def plot_panels(w, b, cfg: Config, path: str) -> None:
    fig, axes = plt.subplots(1, len(cfg.deltas), figsize=(4 * len(cfg.deltas), 4.2))
    for ax, delta in zip(np.atleast_1d(axes), cfg.deltas, strict=True):
        cabs = _perturbed_cabs_jit(w, b, delta, bn_epsilon=cfg.bn_epsilon)
        cab.plot_cab(ax, cabs["original"], "saddlebrown", lw=4, label="original")
        for m in cfg.methods:
            cab.plot_cab(ax, cabs[m], report.COLORS[m], label=f"{m.upper()} perturbed")
        ax.scatter([0], [0], color="k", s=20)
        ax.set(xlim=(-1, 1), ylim=(-1, 1), aspect="equal", title=f"delta = {delta:g}", xlabel="$x_1$", ylabel="$x_2$")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("CAB of one ReLU unit under epsilon = delta * 1 (Fig. 1 b-e)")
    fig.tight_layout()
    report.save_figure(fig, path, dpi=110)


def plot_worst_case(w, b, cfg: Config, path: str) -> None:
    w = np.asarray(w)
    eps = -(1 + cfg.worst_case_delta) * w
    orig = cab.CAB(cab.sp_direction(jnp.asarray(w)), cab.sp_location(jnp.asarray(w), b))
    new = cab.CAB(cab.sp_direction(jnp.asarray(w + eps)), cab.sp_location(jnp.asarray(w + eps), b))
    fig, ax = plt.subplots(figsize=(5, 5))
    for c, col, lab in ((orig, "saddlebrown", "original"), (new, "tab:red", "SP, eps = -(1+delta) w")):
        cab.plot_cab(ax, c, col, label=lab)
        phi, u = np.asarray(c.location), np.asarray(c.direction)
        ax.annotate("", xy=phi + 0.3 * u, xytext=phi, arrowprops=dict(color=col, arrowstyle="->", lw=2))
    ax.set(xlim=(-1, 1), ylim=(-1, 1), aspect="equal", title="Worst case (Prop. 2.3): normal turns 180 deg")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    report.save_figure(fig, path, dpi=110)


def run(cfg: Config) -> dict:
    t0 = time.time()
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
                for m in cfg.methods
            }
        wc = worst_case(w, b, cfg.worst_case_delta)
        plot_panels(w, b, cfg, os.path.join(cfg.workdir, "perturbation_panels.png"))
        plot_worst_case(w, b, cfg, os.path.join(cfg.workdir, "worst_case_180.png"))
    res = {"config": dataclasses.asdict(cfg), "w": w, "b": b, "per_delta": table, "worst_case": wc}
    res["wall_s"] = time.time() - t0
    print(f"unit: w = {w.tolist()}, b = {b:.3g}")
    report.write_results(cfg.workdir, res, tables)
    return res


def tables(results: Mapping[str, Any]) -> dict[str, str]:
    """``{"angles": ...}``: per perturbation size, each parameterization's CAB rotation (degrees) and location shift,
    then the worst case ``eps = -(1 + delta) w`` (paper, Prop. 2.3: SP and WN turn by 180 deg; GmP <= ||eps||)."""
    methods = list(next(iter(results["per_delta"].values())))
    rows = [[d, *(f"{row[m]['angle_deg']:.3f} / {row[m]['location_shift']:.3g}" for m in methods)]
            for d, row in results["per_delta"].items()]  # fmt: skip
    wc = results["worst_case"]
    caption = (
        f"Worst case eps = -(1+delta) w: SP {wc['sp_angle_deg']:.3f} deg, WN {wc['wn_angle_deg']:.3f} deg, GmP "
        f"(same-size step on theta) {wc['gmp_angle_deg_same_size']:.4f} deg <= bound {wc['gmp_bound_deg']:.4f} deg"
    )
    head = ["delta", *(f"{m.upper()} angle deg / abs dphi" for m in methods)]
    return {"angles": report.markdown_table(head, rows) + "\n\n" + caption}


main = cli.entry(__name__)  # main(argv) runs the script; python -m runs it on sys.argv

if __name__ == "__main__":
    main()
