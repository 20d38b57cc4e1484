"""Row-sharded u(theta) on 8 host devices, used by tests/test_unit_kernel.py.

For a (2, 4) ('data', 'model') mesh with Auto and with Explicit axes, theta (64, 31) is sharded
``P('model', None)`` and a GmP layer's loss ``mean(r * relu(x @ u(theta)^T + lambda))^2`` is
trained 3 SGD steps in one compiled step. Prints ``RESULT {...}`` with, per axis type:
``max_abs_diff`` against the same steps on one device, the all-gathers in the compiled step
whose result has theta's or u's full shape, the sharding of the returned theta, and whether
the native kernel's custom call is in the compiled program.

``python tests/scripts/unit_sharding.py`` with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np

M, K, BATCH, STEPS = 64, 31, 16, 3


def loss(params, x):
    import jax.numpy as jnp

    from gmpjax import hyperspherical as hs

    u = hs.angles_to_unit(params["theta"])
    h = params["radius"] * jnp.maximum(x @ u.T + params["offset"], 0.0)
    return jnp.mean(jnp.sum(h, axis=-1) ** 2)


def train(params, xs):
    import jax

    for x in xs:
        g = jax.grad(loss)(params, x)
        params = jax.tree.map(lambda p, d: p - 0.05 * d, params, g)
    return params


def init():
    import jax
    import jax.numpy as jnp

    from gmpjax import hyperspherical as hs

    params = {
        "theta": hs.sample_uniform_angles(jax.random.key(0), (M, K)),
        "radius": jnp.ones((M,)),
        "offset": 0.1 * jax.random.normal(jax.random.key(1), (M,)),
    }
    xs = jax.random.normal(jax.random.key(2), (STEPS, BATCH, K + 1))
    return params, xs


def gathers_of(hlo: str, shapes: list[tuple[int, ...]]) -> list[str]:
    """All-gather instructions whose result has one of ``shapes`` (theta's or u's full shape)."""
    wanted = {"f32[" + ",".join(map(str, s)) + "]" for s in shapes}
    found = []
    for line in hlo.splitlines():
        if re.search(r"\ball-gather(-start)?\(", line):
            m = re.search(r"=\s*(\S+\[[0-9,]*\])", line)
            if m and m.group(1) in wanted:
                found.append(line.strip()[:200])
    return found


def main() -> int:
    import jax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    params, xs = init()
    ref = jax.jit(train)(params, xs)
    result: dict = {"devices": jax.device_count()}
    moved = float(np.max(np.abs(np.asarray(ref["theta"]) - np.asarray(params["theta"]))))
    result["moved"] = moved
    for kind in ("auto", "explicit"):
        axis_type = AxisType.Auto if kind == "auto" else AxisType.Explicit
        mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type, axis_type))
        specs = {"theta": P("model", None), "radius": P("model"), "offset": P("model")}
        placed = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
        xs_placed = jax.device_put(xs, NamedSharding(mesh, P(None, "data", None)))
        with jax.set_mesh(mesh):
            step = jax.jit(train)
            hlo = step.lower(placed, xs_placed).compile().as_text()
            out = step(placed, xs_placed)
        diff = max(float(np.max(np.abs(np.asarray(out[k]) - np.asarray(ref[k])))) for k in ref)
        result[kind] = {
            "max_abs_diff": diff,
            "theta_gathers": gathers_of(hlo, [(M, K), (M, K + 1)]),
            "theta_spec": str(out["theta"].sharding.spec),
            "native_calls": len(re.findall(r"gmpjax_unit_(fwd|bwd)_f32", hlo)),
            "shard_shape": list(out["theta"].addressable_shards[0].data.shape),
        }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
