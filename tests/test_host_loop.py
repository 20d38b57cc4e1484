"""The host loop (``gmpjax.train.host.train``): logs, callbacks, the compiled loop's early stopping and plateau
rules on host values, and kill-and-resume exactness through orbax checkpoints."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gmpjax.train.checkpoint import Checkpointer
from gmpjax.train.engine import MetricsLogger, init_train_state, make_eval_step, make_train_step
from gmpjax.train.host import HostConfig, train
from gmpjax.train.loop import LoopConfig, fit
from gmpjax.train.plateau import PlateauConfig
from gmpjax.train.rules import Rules

# a scripted validation curve (one value per evaluation): it improves, stalls, improves a little, stalls
CURVE = np.array([1.0, 0.8, 0.8, 0.79, 0.8, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75, 0.76, 0.77, 0.78, 0.79], np.float32)
# these rules give plateau decays and a stop before the end of the curve
RULES = {"patience": 4, "min_delta": 0.005, "plateau": PlateauConfig(patience=2, factor=0.5, min_delta=0.005)}


def _mse(model, batch):
    return jnp.mean((model(batch[0]) - batch[1]) ** 2)


def _setup(lr=0.05):
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr)
    graphdef, state = init_train_state(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), tx)
    x = jax.random.normal(jax.random.key(1), (8, 2))
    data = (x, x @ jnp.array([[1.0], [-2.0]]))
    return graphdef, tx, state, data


@pytest.fixture(scope="module")
def setup():
    graphdef, tx, state, data = _setup()
    return graphdef, tx, state, data, jax.jit(make_train_step(graphdef, tx, _mse))


def _scripted(state) -> dict:
    """The monitored value after ``state.step`` steps: ``CURVE[step - 1]`` (plus the real loss, unmonitored)."""
    return {"val": float(CURVE[int(state.step) - 1])}


def test_logs_eval_and_callback_stop(setup, tmp_path):
    _, _, state, data, step = setup
    seen = []

    def stop_at_6(t, s, rec):
        seen.append((t, sorted(rec)))
        return t >= 6

    cfg = HostConfig(num_steps=10, eval_every=3, log_every=2, steps_per_epoch=3)
    out = train(
        step,
        _scripted,
        state,
        iter(lambda: data, None),
        cfg,
        logger=MetricsLogger(tmp_path),
        callbacks=[stop_at_6],
        progress=False,
    )
    assert out.step == 6 and int(out.last.step) == 6 and [t for t, _ in seen] == list(range(1, 7))
    assert seen[1] == (2, ["step", "train_loss"]) and seen[0] == (1, ["step"])
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train_loss" in r] == [2, 4, 6]
    evals = [r for r in lines if "val" in r]
    assert [(r["step"], r["epoch"], r["lr"]) for r in evals] == [
        (3, 1.0, pytest.approx(0.05)),
        (6, 2.0, pytest.approx(0.05)),
    ]
    assert out.evals == evals and out.resumed_from is None and np.isnan(out.best_value)
    # a state that already reached num_steps is returned as is (the end is evaluated only when it is trained to)
    again = train(step, _scripted, out.last, iter(lambda: data, None), HostConfig(num_steps=6), progress=False)
    assert again.step == 6 and again.evals == []


def test_early_stopping_and_plateau_match_the_compiled_loop(setup):
    """Same rules, same objects: host values through ``train`` == the compiled ``fit`` on the same curve."""
    graphdef, tx, state, data, step = setup
    n = len(CURVE)
    loop_cfg = LoopConfig(max_epochs=n, rules=Rules(monitor="val", restore="always", **RULES))

    def eval_on_device(s, _):
        return {"val": jnp.asarray(CURVE)[s.step - 1]}

    ref = jax.jit(
        lambda s: fit(
            make_train_step(graphdef, tx, _mse),
            eval_on_device,
            s,
            {"train": data, "val": data},
            loop_cfg,
            key=jax.random.key(0),
        )
    )(state)
    host_cfg = HostConfig(num_steps=n, eval_every=1, log_every=0, rules=Rules(monitor="val", restore="always", **RULES))
    out = train(step, _scripted, state, iter(lambda: data, None), host_cfg, progress=False)

    epochs = int(ref.epochs)
    assert bool(ref.stopped) and out.stopped and out.step == epochs < n
    assert out.best_step == int(ref.best_epoch) and out.best_value == pytest.approx(float(ref.best_value))
    assert out.lr_scale == float(ref.lr_scale) < 1.0
    # the host record holds the rate used up to that evaluation; the compiled history the rate set after it
    np.testing.assert_allclose([r["lr"] for r in out.evals[1:]], np.asarray(ref.history["lr"])[: epochs - 1], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out.state.params), jax.tree.leaves(ref.state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out.last.params), jax.tree.leaves(ref.last.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_mode_max_and_if_stopped(setup):
    _, _, state, data, step = setup
    ev = lambda s: {"acc": -_scripted(s)["val"]}  # noqa: E731  (same curve, maximised)
    base = dict(num_steps=len(CURVE), eval_every=1, log_every=0)
    rules = Rules(monitor="acc", mode="max", **RULES)
    cfg = HostConfig(**base, rules=dataclasses.replace(rules, restore="if_stopped"))
    out = train(step, ev, state, iter(lambda: data, None), cfg, progress=False)
    cfg = HostConfig(**base, rules=dataclasses.replace(rules, monitor="val", mode="min"))
    mn = train(step, _scripted, state, iter(lambda: data, None), cfg, progress=False)
    assert out.stopped and (out.step, out.best_step, out.lr_scale) == (mn.step, mn.best_step, mn.lr_scale)
    assert out.best_value == pytest.approx(-mn.best_value) and out.state is not out.last
    with pytest.raises(ValueError, match="not a metric of eval_fn"):
        train(step, _scripted, state, iter(lambda: data, None), HostConfig(**base, rules=rules), progress=False)


class _Killed(Exception):
    pass


def _run(setup, workdir, *, resume=False, kill_at=None, num_steps=12, restore="never"):
    """Train on a step-indexed stream with checkpoints every 4 steps; optionally die after step ``kill_at``."""
    _, _, state, data, step = setup
    x, y = data
    extras = {}

    def batches(start):  # a stream that is a pure function of the step: resumable without iterator state
        k = start
        while True:
            yield x + 0.01 * k, y
            k += 1

    def die(t, s, rec):
        if t == kill_at:
            raise _Killed

    def evaluate(s):
        return {"val": float(CURVE[int(s.step) - 1]), "loss": float(_mse(nnx.merge(setup[0], s.params, s.rest), data))}

    cfg = HostConfig(
        num_steps=num_steps, eval_every=3, log_every=2, rules=Rules(monitor="val", restore=restore, **RULES)
    )
    ckpt = Checkpointer(workdir / "ckpt", save_every=4, max_to_keep=2)
    try:
        return train(
            step,
            evaluate,
            state,
            batches,
            cfg,
            checkpointer=ckpt,
            resume=resume,
            config_json={"lr": 0.05},
            extra=lambda t: {"note": t},
            on_resume=lambda t, e: extras.update(e),
            logger=MetricsLogger(workdir),
            callbacks=[die],
            progress=False,
        ), extras
    finally:
        ckpt.close()


class _CluStyleWriter:
    """The shape of clu's ``metric_writers.MetricWriter`` that ``train`` uses (clu itself is not a dependency)."""

    def __init__(self):
        self.scalars: list[tuple[int, dict]] = []
        self.flushed = 0

    def write_scalars(self, step, scalars):
        self.scalars.append((int(step), dict(scalars)))

    def flush(self):
        self.flushed += 1


def test_clu_style_writer_and_gmpjax_log(setup, tmp_path, caplog):
    """Any ``write_scalars(step, dict)`` writer takes the metrics; the ``gmpjax`` logger reports the events."""
    _, _, state, data, step = setup
    writer = _CluStyleWriter()
    cfg = HostConfig(num_steps=12, eval_every=3, log_every=2, rules=Rules(monitor="val", **RULES))
    with caplog.at_level("INFO", logger="gmpjax"), Checkpointer(tmp_path / "ck", save_every=4) as ckpt:
        out = train(step, _scripted, state, iter(lambda: data, None), cfg, logger=writer, checkpointer=ckpt)
    assert writer.flushed == 1 and [t for t, _ in writer.scalars if "train_loss" in _] == [2, 4, 6, 8, 10, 12]
    evals = [(t, d) for t, d in writer.scalars if "val" in d]
    assert [t for t, _ in evals] == [3, 6, 9, 12] and all(isinstance(v, float) for _, d in evals for v in d.values())
    assert out.evals == [{"step": t, **d} for t, d in evals]
    messages = [r.getMessage() for r in caplog.records if r.name == "gmpjax"]
    assert any(m.startswith("checkpoint: saving step 12") for m in messages)
    assert any(m.startswith("plateau at step") for m in messages), messages
    with pytest.raises(TypeError, match="write_scalars"):
        train(step, _scripted, state, iter(lambda: data, None), HostConfig(num_steps=1), logger=object())


@pytest.mark.parametrize("restore", ["never", "always"])
def test_kill_and_resume_is_exact(setup, tmp_path, restore):
    ref, _ = _run(setup, tmp_path / "ref", restore=restore)
    with pytest.raises(_Killed):
        _run(setup, tmp_path / "run", kill_at=10, restore=restore)  # last checkpoint: step 9 (an evaluation)
    out, extra = _run(setup, tmp_path / "run", resume=True, restore=restore)
    assert out.resumed_from == 9 and extra["note"] == 9 and extra["config"] == {"lr": 0.05}
    assert (out.step, out.stopped, out.best_step, out.lr_scale) == (ref.step, ref.stopped, ref.best_step, ref.lr_scale)
    for a, b in zip(jax.tree.leaves(out.state), jax.tree.leaves(ref.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the log of the interrupted + resumed run is the uninterrupted one's
    log = lambda d: (d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert log(tmp_path / "run") == log(tmp_path / "ref")
    with Checkpointer(tmp_path / "run" / "ckpt") as ckpt:
        params = ckpt.restore_params(best=restore == "always")
        want = out.state.params
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))


def test_refuses_to_overwrite_and_checks_the_config(setup, tmp_path):
    _run(setup, tmp_path, num_steps=4)
    with pytest.raises(ValueError, match="--resume"):
        _run(setup, tmp_path, num_steps=8)
    graphdef, tx, state, data, step = setup
    with Checkpointer(tmp_path / "ckpt") as ckpt, pytest.raises(ValueError, match="lr=0.05 but this run has lr=0.1"):
        train(
            step,
            None,
            state,
            iter(lambda: data, None),
            HostConfig(num_steps=8),
            checkpointer=ckpt,
            resume=True,
            config_json={"lr": 0.1},
            progress=False,
        )


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"num_steps": -1}, "num_steps"),
        ({"num_steps": 5, "eval_every": 0}, "eval_every"),
        ({"num_steps": 5, "rules": {"patience": 3}}, "must be a Rules"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        HostConfig(**kw)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"monitor": ""}, "monitor"),
        ({"mode": "up"}, "mode"),
        ({"restore": "best"}, "restore"),
        ({"min_delta": -1.0}, "min_delta"),
        ({"patience": 0}, "patience"),
        ({"plateau": 3}, "PlateauConfig"),
    ],
)
def test_bad_rules(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Rules(**kw)


def test_plateau_needs_inject_hyperparams(setup):
    graphdef, _, _, data, _ = setup
    tx = optax.sgd(0.1)
    _, state = init_train_state(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), tx)
    step = jax.jit(make_train_step(graphdef, tx, _mse))
    evaluate = jax.jit(make_eval_step(graphdef, _mse))
    cfg = HostConfig(num_steps=3, eval_every=1, rules=Rules(monitor="metric", plateau=PlateauConfig(patience=1)))
    with pytest.raises(TypeError, match="inject_hyperparams"):
        train(step, lambda s: evaluate(s, data), state, iter(lambda: data, None), cfg, progress=False)
