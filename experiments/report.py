"""Reporting shared by the experiment scripts: per-job results for ``--resume``, the results file, tables, figures.

JSON values and atomic JSON files come from ``gmpjax.records`` (``to_json``, ``write_json``), as for the benchmarks.

>>> mean_se([1.0, 3.0]), fmt_mean_se(0.4741, 0.0132)
((2.0, 1.0), '0.474 ± 0.013')
>>> print(markdown_table(["a", "b"], [[1, 2]]))
| a | b |
|---|---|
| 1 | 2 |
>>> color("gmp_imn@0.1")
'tab:blue'
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gmpjax.records import provenance, to_json, without_keys, write_json

__all__ = [
    "COLORS",
    "color",
    "fmt_mean_se",
    "markdown_table",
    "mean_se",
    "run_jobs",
    "save_figure",
    "write_results",
]

COLORS = {"sp": "tab:red", "wn": "tab:green", "bn": "tab:purple", "gmp": "tab:blue"}


def color(name: str) -> str:
    """The colour of a method (``"gmp_imn@0.1"`` is drawn as ``gmp``; unknown names grey)."""
    return COLORS.get(name.split("@")[0].split("_")[0], "tab:gray")


def mean_se(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and standard error ``std(ddof=1) / sqrt(n)`` (0 for n = 1)."""
    v = np.asarray(values, np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se


def fmt_mean_se(mean: float, se: float, digits: int = 3) -> str:
    """``"m ± se"`` with ``digits`` decimals (4 when ``|m| < 0.1``)."""
    d = digits + 1 if abs(mean) < 0.1 else digits
    return f"{mean:.{d}f} ± {se:.{d}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def save_figure(fig: Any, path: str, dpi: int = 120) -> str:
    """Save a matplotlib figure (folders created), close it, return ``path``."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def run_jobs(
    cfg: Any, jobs: Sequence[str], fn: Callable[[str], dict], *, desc: str = "jobs", grow: Sequence[str] = ("methods",)
) -> dict[str, dict]:
    """Run ``fn(job)`` for every job name, saving each result as ``<cfg.workdir>/jobs/<job>.json``.

    With ``cfg.resume`` the jobs whose file exists are loaded instead of run, so an interrupted
    sweep continues where it stopped. The configuration (a dataclass) is saved with the jobs;
    resuming with a different one is an error (it would mix results of two settings), except
    for the fields in ``grow``, which only add or remove jobs (e.g. ``methods``), and
    ``workdir``/``progress``. Each result gets ``job_wall_s``: the seconds ``fn(job)`` took (compilation included).
    """
    from tqdm.auto import tqdm

    folder = os.path.join(cfg.workdir, "jobs")
    os.makedirs(folder, exist_ok=True)
    stamp = os.path.join(folder, "_config.json")
    skip = {"resume", "progress", "workdir", *grow}
    mine = to_json({k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip})
    if cfg.resume and os.path.exists(stamp):
        with open(stamp) as f:
            theirs = json.load(f)
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(
                f"--resume: {cfg.workdir!r} was run with other settings ({', '.join(diff)}); use a new --workdir"
            )
    write_json(stamp, mine)
    out: dict[str, dict] = {}
    bar = tqdm(list(jobs), desc=desc, disable=not cfg.progress, file=sys.stderr)
    for job in bar:
        path = os.path.join(folder, f"{job}.json")
        if cfg.resume and os.path.exists(path):
            with open(path) as f:
                out[job] = json.load(f)
            continue
        bar.set_postfix_str(job)
        t0 = time.perf_counter()
        out[job] = to_json(fn(job))
        out[job]["job_wall_s"] = time.perf_counter() - t0
        write_json(path, out[job])
    return out


# --------------------------------------------------------------------------- results files

RESULTS_FILE = "results.json"
"""The file every experiment writes in its ``--workdir`` (``write_results``)."""


def write_results(
    workdir: str, results: Mapping[str, Any], tables: Callable[[Mapping[str, Any]], Mapping[str, str]] | None = None
) -> dict[str, Any]:
    """Write ``results`` plus ``gmpjax.records.provenance()`` (commit, machine, date, command, load) to
    ``<workdir>/results.json`` (atomic); with the script's ``tables``, also print them and write them to
    ``<workdir>/tables.md``. Keys starting with ``_`` (data only a figure reads) are left out at every depth.
    Returns the JSON values written (``scripts/results_tables.py`` builds the docs from them).
    """
    results = {**results, "provenance": provenance(repo=os.path.dirname(os.path.abspath(__file__)))}
    out = to_json(without_keys(results, lambda k: k.startswith("_")))
    write_json(os.path.join(workdir, RESULTS_FILE), out)
    if tables is not None:
        text = "\n\n".join(f"## {name}\n\n{table}" for name, table in tables(out).items())
        with open(os.path.join(workdir, "tables.md"), "w") as f:
            f.write(text + "\n")
        print(text)
    return out
