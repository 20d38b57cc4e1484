"""What a stopped replica costs in ``gmpjax.train.loop.sweep``: one batch, segments, chunks.

One UCI job of the paper protocol (a dataset x method: 10 splits x 6 learning rates = 60
replicas, full-batch Adam, early stopping patience 100, at most 1000 epochs) is trained with

* ``one``: all 60 replicas in one ``while_loop`` (it runs until the last one stops);
* ``segment=k``: stopped replicas compacted away every ``k`` epochs (more compiled programs);
* ``chunk=c``: ``c`` replicas at a time, one compiled program run ``60 / c`` times;

and each layout's wall and process CPU time (compilation included: it is part of what a layout
costs), the epochs the replicas ran, and the epochs the compiled programs stepped
(``sum over batches of batch size x its slowest replica's epochs``) are written to JSON.

    python -m benchmarks.sweep [--out benchmarks/results] [--dataset boston] [--method gmp]   # <out>/sweep.json
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import out_folder

FILE_NAME = "sweep.json"  # written into the --out folder


def _layouts() -> list[tuple[str, dict]]:
    return [
        ("one", {}),
        ("segment=100", {"segment": 100}),
        ("segment=25", {"segment": 25}),
        ("chunk=12", {"chunk": 12}),
        ("chunk=6", {"chunk": 6}),
        ("chunk=2", {"chunk": 2}),
        ("chunk=1", {"chunk": 1}),
    ]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="boston")
    p.add_argument("--method", default="gmp")
    p.add_argument(
        "--out", type=out_folder, default=os.path.join("benchmarks", "results"), help=f"output folder ({FILE_NAME})"
    )
    a = p.parse_args(argv)

    import dataclasses

    from experiments import uci
    from gmpjax.data.uci import load_uci, stacked_splits
    from gmpjax.records import provenance, write_json

    cfg = uci.get_config()
    data = stacked_splits(*load_uci(a.dataset), splits=cfg.seeds, seed=0, monitor="val", val_fraction=0.2)
    lrs = [float(v) for v in cfg.lr]
    prov = provenance()  # at the start: the load average before the runs
    rows = []
    for name, kw in _layouts():
        t0, c0 = time.perf_counter(), time.process_time()
        layout = dataclasses.replace(cfg, chunk=kw.get("chunk", 0), segment=kw.get("segment") or 0)
        out, _ = uci.train_dataset(layout, a.method, data, lrs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        epochs = out["epochs"].reshape(-1)
        c = kw.get("chunk", len(epochs))
        padded = np.concatenate([epochs, np.full(-len(epochs) % c, epochs[-1])]).reshape(-1, c)
        stepped = int(padded.shape[1] * padded.max(axis=1).sum()) if "segment" not in kw else None
        rows.append(
            {
                "layout": name,
                "wall_s": wall,
                "cpu_s": cpu,
                "replica_epochs": int(epochs.sum()),
                "stepped_replica_epochs": stepped,
                "test_rmse_selected": float(
                    np.mean(
                        out["test_rmse"][
                            np.arange(cfg.seeds), np.argmin(np.nan_to_num(out["val_mse"], nan=np.inf), axis=1)
                        ]
                    )
                ),
            }
        )
        print(f"{name:12s} wall {wall:6.1f} s  cpu {cpu:6.1f} s  replica-epochs {rows[-1]['replica_epochs']}")
    m = prov["machine"]
    result = {
        "what": f"one UCI paper-protocol job ({a.dataset}, {a.method}): 60 replicas, <= 1000 epochs",
        "machine": f"{m['cpu']}, {m['cores']} cores, {m['backend']}",
        "load_average_at_start": prov["load_average"],
        "jax": m["jax"],
        "provenance": prov,
        "rows": rows,
    }
    write_json(os.path.join(a.out, FILE_NAME), result)
    return result


if __name__ == "__main__":
    main()
