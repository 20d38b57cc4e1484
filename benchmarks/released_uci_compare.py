"""Per-split comparison of the released TF/Keras UCI script with gmpjax on the energy data.

Three sub-commands (see ``docs/uci_official.md`` for the findings):

* ``keras``: run the *unmodified* released ``uci_regression/uci_regression.py`` once per
  seed, in a fresh process each, under a TensorFlow venv. The only interventions are
  outside the script: ``pandas.read_excel`` returns the local energy file (the script
  would download ``ENB2012_data.xlsx``), ``tf.keras`` is ``tf_keras`` (Keras 2, as TF 2.8)
  and TensorFlow runs on one CPU thread. The released script trains GmP, SP, BN and WN
  in that order and prints one ``<METHOD> Test RMSE (seed s): value`` line each::

      /path/to/tf-venv/bin/python benchmarks/released_uci_compare.py keras \\
          --released /path/to/geometric-parameterization --seeds 0 1 2 --out results/uci_compare   # keras.json

* ``ours``: the same protocol with gmpjax pieces (``gmpjax.train.loop``), one knob per
  candidate difference (split, restore rule, target scaling, float64, Adam epsilon)::

      python benchmarks/released_uci_compare.py ours --methods sp wn bn --split sklearn --out results/uci_compare

  (writes ``ours.json``; give each configuration its own folder)

* ``table``: print per-split RMSE of several JSON files (or folders holding ``keras.json``/``ours.json``)
  side by side::

      python benchmarks/released_uci_compare.py table results/uci_compare

Nothing of the released code is copied here: ``keras`` executes the script from the
path given on the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if not __package__:  # run as `python benchmarks/released_uci_compare.py`, possibly under a TF venv without gmpjax
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import out_folder  # noqa: E402 (needs the repository root on sys.path, set just above)
from gmpjax.records import write_json  # noqa: E402 (numpy only: it works under the TF venv too)

FILE_NAMES = {"keras": "keras.json", "ours": "ours.json"}  # written into the --out folder

_LINE = re.compile(r"^(GmP|SP|BN|WN) Test RMSE \(seed (\d+)\): ([0-9.eE+-]+|nan)\s*$")


# --------------------------------------------------------------------------- released script (TF venv)


def _energy_frame():
    """The energy table with the column names of ``ENB2012_data.xlsx`` (X1..X8, Y1, Y2).

    The local file (Gal & Ghahramani's copy, same rows in the same order) has no Y2
    (cooling load); the script drops Y2 unused, so a zero column stands in for it.
    """
    import numpy as np
    import pandas as pd

    root = Path(os.environ.get("GMPJAX_DATA_DIR", "/work/shared/data"))
    data = np.loadtxt(root / "uci" / "energy" / "data.txt")
    frame = pd.DataFrame(data, columns=[f"X{i}" for i in range(1, 9)] + ["Y1"])
    frame["Y2"] = 0.0
    return frame


def _alias_keras_28() -> None:
    """Make the Keras 2.8 module paths the released ``utils.py`` imports resolve to ``tf_keras``.

    (``keras.engine.base_layer`` etc.; they are only used by image layers the UCI script never builds.)
    """
    import importlib

    import tf_keras

    sys.modules["keras"] = tf_keras
    for name in ("backend", "constraints", "initializers", "regularizers", "engine", "utils"):
        sys.modules[f"keras.{name}"] = importlib.import_module(f"tf_keras.src.{name}")
    nested = ("engine.base_layer", "engine.base_preprocessing_layer", "engine.input_spec", "utils.control_flow_util")
    for name in nested:
        sys.modules[f"keras.{name}"] = importlib.import_module(f"tf_keras.src.{name}")


def _wrap_negative_scatter_indices() -> None:
    """Let ``tf.tensor_scatter_nd_update`` take row index ``-1`` as the last row.

    The released GmP initialiser scatters into row ``[-1]``. Current TensorFlow on CPU
    rejects that index; on GPU (where the paper ran) an out-of-range index is ignored.
    Both readings give the same initial unit vectors (the last angle comes out as
    ``pi/2 - atan2(w_{n-1}, |w_n|)`` either way), so wrapping is faithful. Only GmP uses it.
    """
    import tensorflow as tf

    original = tf.tensor_scatter_nd_update

    def scatter(tensor, indices, updates, name=None):
        indices = tf.convert_to_tensor(indices)
        rows = tf.shape(tensor, out_type=indices.dtype)[0]
        return original(tensor, tf.where(indices < 0, indices + rows, indices), updates, name=name)

    tf.tensor_scatter_nd_update = scatter


def keras_child(released: Path, seed: int) -> None:
    """Run the released script for ``energy`` and ``seed`` in this process (stdout: its result lines)."""
    import pandas as pd

    frame = _energy_frame()

    def read_excel(*args, **kwargs):  # the script's only read_excel call for energy
        return frame.copy()

    pd.read_excel = read_excel
    _alias_keras_28()
    _wrap_negative_scatter_indices()
    script = released / "uci_regression" / "uci_regression.py"
    sys.path.insert(0, str(released))
    sys.argv = [str(script), "energy", str(seed)]
    import runpy

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the script appends to ./outputs/uci_energy.txt
        runpy.run_path(str(script), run_name="__main__")


def run_keras(args) -> dict:
    env = dict(
        os.environ,
        TF_USE_LEGACY_KERAS="1",
        TF_NUM_INTEROP_THREADS="1",
        TF_NUM_INTRAOP_THREADS="1",
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="-1",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    out: dict[str, dict[str, float]] = {}
    for seed in args.seeds:
        cmd = [sys.executable, __file__, "_keras_child", "--released", str(args.released), "--seed", str(seed)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"seed {seed}: released script failed:\n{proc.stderr[-3000:]}")
        for line in proc.stdout.splitlines():
            if m := _LINE.match(line.strip()):
                out.setdefault(m.group(1).lower(), {})[m.group(2)] = float(m.group(3))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[str(seed)]:.3f}" for k, v in out.items()), flush=True)
    return {"source": "released uci_regression.py (tf_keras)", "test_rmse": out}


# --------------------------------------------------------------------------- gmpjax (gmpjax venv)


def sklearn_split(n: int, seed: int):
    """Row indices of sklearn ``train_test_split(test_size=0.2, random_state=seed)`` (row order kept)."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(np.arange(n), test_size=0.2, random_state=seed)
    return tr, te


def run_ours(args) -> dict:
    if args.x64:
        os.environ["JAX_ENABLE_X64"] = "1"
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from gmpjax.data.uci import load_uci, make_split, split_indices
    from gmpjax.models import MLP
    from gmpjax.train.engine import init_train_state, make_eval_step, make_train_step
    from gmpjax.train.loop import LoopConfig, fit
    from gmpjax.train.plateau import PlateauConfig
    from gmpjax.train.rules import Rules

    dt = jnp.float64 if args.x64 else jnp.float32
    x, y = load_uci("energy")
    cfg = LoopConfig(
        max_epochs=args.max_epochs,
        batching="drop",
        batch_size=1024,
        monitor_split="val",
        rules=Rules(
            monitor="metric",
            patience=100,
            restore=args.restore,
            plateau=PlateauConfig(patience=50, factor=0.1, min_delta=1e-4),
        ),
    )

    def loss_mae(model, batch):
        return jnp.mean(jnp.abs(model(batch[0])[:, 0] - batch[1]))

    def mse(model, batch):
        return jnp.mean((model(batch[0])[:, 0] - batch[1]) ** 2)

    out: dict[str, dict[str, float]] = {}
    for method in args.methods:
        lr = 0.1 if method.startswith("gmp") else 0.01
        tx = optax.inject_hyperparams(optax.adam)(learning_rate=lr, eps=args.adam_eps)
        for seed in args.seeds:
            if args.split == "gmpjax":
                tr, te = split_indices(len(y), seed, 0.2)
            else:
                tr, te = sklearn_split(len(y), seed)
                if args.split == "sklearn-sorted":  # same rows, ascending order
                    tr, te = np.sort(tr), np.sort(te)
            sp = make_split(x, y, tr, te, standardize_target=args.standardize_target)
            data = {
                "train": (jnp.asarray(sp.x_train, dt), jnp.asarray(sp.y_train, dt)),
                "val": (jnp.asarray(sp.x_test, dt), jnp.asarray(sp.y_test, dt)),
            }
            key = jax.random.key(args.init_seed + seed)
            model = MLP(x.shape[1], (100,), 1, parameterization=method, param_dtype=dt, rngs=nnx.Rngs(key))
            graphdef, state = init_train_state(model, tx)
            step = make_train_step(graphdef, tx, loss_mae)
            ev = make_eval_step(graphdef, mse)
            res = jax.jit(lambda s, d: fit(step, ev, s, d, cfg, key=jax.random.fold_in(key, 1)))(state, data)  # noqa: B023
            test = float(ev(res.state, data["val"])["metric"])
            rmse = float(np.sqrt(test) * sp.y_std)
            out.setdefault(method, {})[str(seed)] = rmse
            print(
                f"{method} seed {seed}: rmse {rmse:.3f} epochs {int(res.epochs)} stopped {bool(res.stopped)}",
                flush=True,
            )
    return {"source": f"gmpjax ({vars(args)})", "test_rmse": out}


# --------------------------------------------------------------------------- table


def _result_files(paths) -> list[Path]:
    """The JSON files named on the command line; a folder stands for its keras.json and ours.json."""
    files: list[Path] = []
    for p in map(Path, paths):
        found = [p / n for n in FILE_NAMES.values() if (p / n).is_file()] if p.is_dir() else [p]
        if not found:
            raise SystemExit(f"table: {p} holds neither {' nor '.join(FILE_NAMES.values())}")
        files += found
    return files


def _cell(rmse: float | None) -> str:
    """A table cell: the RMSE to 3 decimals; ``nan`` for a diverged run (NaN, which ``write_json`` stores as null)."""
    return "nan" if rmse is None else f"{rmse:.3f}"


def table(paths) -> None:
    files = _result_files(paths)
    stems = [f.stem for f in files]
    # columns are the file names; "folder/name" where two files share a name (e.g. two `ours` folders)
    labels = [f.stem if stems.count(f.stem) == 1 else f"{f.parent.name}/{f.stem}" for f in files]
    runs = {label: json.loads(f.read_text())["test_rmse"] for label, f in zip(labels, files, strict=True)}
    methods = sorted({m for r in runs.values() for m in r})
    for m in methods:
        cols = [n for n, r in runs.items() if m in r]
        seeds = sorted({s for n in cols for s in runs[n][m]}, key=int)
        print(f"\n{m.upper()}\n| split | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
        for s in seeds:
            cells = [_cell(runs[n][m][s]) if s in runs[n][m] else "" for n in cols]
            print(f"| {s} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keras", help="run the released script (needs tensorflow, tf_keras, pandas, sklearn)")
    k.add_argument("--released", type=Path, required=True, help="checkout of the released repository")
    k.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    k.add_argument("--out", type=out_folder, required=True, help="output folder (keras.json)")
    c = sub.add_parser("_keras_child")
    c.add_argument("--released", type=Path, required=True)
    c.add_argument("--seed", type=int, required=True)
    o = sub.add_parser("ours", help="the same protocol with gmpjax")
    o.add_argument("--methods", nargs="+", default=["sp"])
    o.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    o.add_argument("--split", choices=("sklearn", "sklearn-sorted", "gmpjax"), default="sklearn")
    o.add_argument("--restore", choices=("always", "if_stopped", "never"), default="if_stopped")
    o.add_argument("--standardize-target", action="store_true")
    o.add_argument("--x64", action="store_true")
    o.add_argument("--adam-eps", type=float, default=1e-7)
    o.add_argument("--max-epochs", type=int, default=5000)
    o.add_argument("--init-seed", type=int, default=0)
    o.add_argument("--out", type=out_folder, required=True, help="output folder (ours.json)")
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+", help="JSON files, or folders holding keras.json and/or ours.json")
    a = p.parse_args(argv)
    if a.cmd == "_keras_child":
        keras_child(a.released, a.seed)
        return
    if a.cmd == "table":
        table(a.files)
        return
    result = run_keras(a) if a.cmd == "keras" else run_ours(a)
    write_json(Path(a.out) / FILE_NAMES[a.cmd], result)  # a diverged run's NaN RMSE is written as null


if __name__ == "__main__":
    main()
