"""Reporting shared by the experiment scripts: atomic JSON, per-job results for ``--resume``, tables, figures.

>>> mean_se([1.0, 3.0]), fmt_mean_se(0.4741, 0.0132)
((2.0, 1.0), '0.474 ± 0.013')
>>> print(markdown_table(["a", "b"], [[1, 2]]))
| a | b |
|---|---|
| 1 | 2 |
>>> color("gmp_imn@0.1"), to_json({"x": np.arange(2), "y": float("nan")})
('tab:blue', {'x': [0, 1], 'y': None})
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "COLORS",
    "color",
    "cpu_model",
    "fmt_mean_se",
    "markdown_table",
    "mean_se",
    "run_jobs",
    "plot_curves",
    "print_tables",
    "save_figure",
    "to_json",
    "write_json",
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


def to_json(obj: Any) -> Any:
    """``obj`` as JSON values: arrays become lists, dataclasses dicts, non-finite floats ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_json(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):
        return to_json(np.asarray(obj).tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str, obj: Any) -> None:
    """Write ``to_json(obj)`` to ``path`` atomically (temp file + rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_json(obj), f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_figure(fig: Any, path: str, dpi: int = 120) -> str:
    """Save a matplotlib figure (folders created), close it, return ``path``."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_curves(records: Sequence[Mapping[str, Any]], png: str, title: str = "") -> None:
    """Train loss per logged step and validation top-1/top-5 per epoch (host-trainer records, ``metrics.jsonl``)."""
    import matplotlib.pyplot as plt

    tr = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    ev = [(r["epoch"], r["val_top1"], r["val_top5"]) for r in records if "val_top1" in r]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    if tr:
        ax[0].plot(*zip(*tr, strict=True))
    ax[0].set(xlabel="step", ylabel="train loss", title=title)
    if ev:
        e, t1, t5 = zip(*ev, strict=True)
        ax[1].plot(e, [100 * v for v in t1], "o-", label="top-1")
        ax[1].plot(e, [100 * v for v in t5], "s-", label="top-5")
        ax[1].legend()
    ax[1].set(xlabel="epoch", ylabel="validation accuracy (%)")
    fig.tight_layout()
    save_figure(fig, png, dpi=100)


def run_jobs(
    cfg: Any, jobs: Sequence[str], fn: Callable[[str], dict], *, desc: str = "jobs", grow: Sequence[str] = ("methods",)
) -> dict[str, dict]:
    """Run ``fn(job)`` for every job name, saving each result as ``<cfg.workdir>/jobs/<job>.json``.

    With ``cfg.resume`` the jobs whose file exists are loaded instead of run, so an interrupted
    sweep continues where it stopped. The configuration (a dataclass) is saved with the jobs;
    resuming with a different one is an error (it would mix results of two settings), except
    for the fields in ``grow``, which only add or remove jobs (e.g. ``methods``), and
    ``workdir``/``progress``.
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
        out[job] = to_json(fn(job))
        write_json(path, out[job])
    return out


# --------------------------------------------------------------------------- results files and the docs' tables

RESULTS_FILE = "results.json"
"""The file every experiment writes in its ``--workdir`` (``write_results``)."""

RESULTS_DIR = "results"
"""The repository folder holding the committed results of the full runs, ``results/<name>.json``."""


def _git(*args: str) -> str:
    import subprocess

    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=os.path.dirname(__file__))
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere ``platform``'s processor or architecture)."""
    import platform

    fallback = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), fallback)
    except OSError:
        return fallback


def machine() -> dict[str, Any]:
    """This machine in words: CPU model, cores, memory, OS, Python and jax versions, jax backend and devices."""
    import platform

    import jax

    cpu = cpu_model()
    mem_gib = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    devices = jax.devices()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem_gib, "os": platform.platform(terse=True),
        "python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
    }  # fmt: skip


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Where a result comes from: git commit (``+dirty`` with uncommitted changes), machine, UTC time, command, load."""
    import datetime

    commit = _git("rev-parse", "--short=10", "HEAD") or "unknown"
    if commit != "unknown" and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    argv = list(sys.argv if argv is None else argv)
    module = argv[0].rsplit(os.sep, 1)[-1].removesuffix(".py") if argv else ""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python -m experiments." + module, *argv[1:]]) if module else ""
    return {"commit": commit, "machine": machine(), "date": date, "command": command, "load_average": load}


def write_results(workdir: str, results: Mapping[str, Any]) -> str:
    """Write ``results`` plus its ``provenance`` to ``<workdir>/results.json`` (atomic); returns the path."""
    path = os.path.join(workdir, RESULTS_FILE)
    write_json(path, {**results, "provenance": provenance()})
    return path


def print_tables(tables: Mapping[str, str]) -> None:
    """Print an experiment's ``tables(results)`` (the README builder reads the same function), one after another."""
    print("\n\n".join(f"{name}:\n{text}" for name, text in tables.items()))


# One command rebuilds the README's and docs' results tables from the committed full-run results:
#   python -m experiments.report            (rewrite the blocks)
#   python -m experiments.report --check    (exit 1 when a block differs from what its file gives)
# A block in a markdown file is
#   <!-- results MODULE:TABLE [FILE] -->
#   ...generated: experiments.MODULE.tables(results/FILE.json)[TABLE] and the run's provenance...
#   <!-- /results -->
# with FILE defaulting to MODULE.

_BLOCK = re.compile(r"(<!-- results (\w+):(\w+)(?: ([\w.-]+))? -->\n)(.*?)(<!-- /results -->)", re.S)
DOC_FILES = ("README.md", "docs/*.md")
"""The markdown files (globs, relative to the repository root) whose results blocks the builder rewrites."""


def load_results(name: str, root: str = ".") -> dict[str, Any]:
    """``results/<name>.json`` under ``root``; a clear error when it is missing or has no provenance."""
    path = os.path.join(root, RESULTS_DIR, f"{name}.json")
    if not os.path.exists(path):
        how = f"run the full experiment and python -m experiments.report --collect WORKDIR {name}"
        raise FileNotFoundError(f"{path} does not exist: {how}.")
    with open(path) as f:
        results = json.load(f)
    if "provenance" not in results:
        raise ValueError(f"{path} has no 'provenance' (commit, machine): write it with report.write_results.")
    return results


def provenance_line(name: str, prov: Mapping[str, Any]) -> str:
    """One italic line naming the results file, command, commit, machine and date of a table."""
    m = prov.get("machine", {})
    where = f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, jax {m.get('jax', '?')} {m.get('backend', '?')}"
    extra = f", {prov['wall_s']:.0f} s wall" if prov.get("wall_s") is not None else ""
    if prov.get("load_average") is not None:
        extra += f", load average {prov['load_average']:.1f} at the start"
    run = f"`{prov.get('command', '?')}` at commit `{prov['commit']}`"
    return f"*`results/{name}.json`: {run} on {where}, {prov['date']}{extra}.*"


def render_block(module: str, table: str, name: str, root: str = ".") -> str:
    """The generated text of one block: the table ``experiments.<module>.tables(results)[table]`` and its provenance."""
    import importlib

    results = load_results(name, root)
    mod = importlib.import_module(f"experiments.{module}")
    if not hasattr(mod, "tables"):
        raise AttributeError(f"experiments.{module} has no tables(results) function.")
    out = mod.tables(results)
    if table not in out:
        raise KeyError(f"experiments.{module}.tables gives {sorted(out)}, not {table!r}.")
    return f"{out[table].rstrip()}\n\n{provenance_line(name, results['provenance'])}\n"


def rebuild(text: str, root: str = ".") -> str:
    """``text`` with every results block regenerated (see the module comment above for the block syntax)."""
    return _BLOCK.sub(lambda m: m[1] + render_block(m[2], m[3], m[4] or m[2], root) + m[6], text)


def _drop(obj: Any, keys: frozenset[str]) -> Any:
    if isinstance(obj, dict):
        return {k: _drop(v, keys) for k, v in obj.items() if k not in keys}
    return [_drop(v, keys) for v in obj] if isinstance(obj, list) else obj


def collect(workdir: str, name: str, root: str = ".", drop: Sequence[str] = ()) -> str:
    """Copy a full run's ``<workdir>/results.json`` to ``results/<name>.json`` (it must carry provenance).

    ``drop``: keys removed at every depth (e.g. per-step curves only a figure reads), listed in the provenance.
    """
    src = os.path.join(workdir, RESULTS_FILE)
    with open(src) as f:
        results = json.load(f)
    if "provenance" not in results:
        raise ValueError(f"{src} has no provenance: it was not written by report.write_results.")
    if drop:
        results = {**_drop(results, frozenset(drop)), "provenance": {**results["provenance"], "dropped": sorted(drop)}}
    dst = os.path.join(root, RESULTS_DIR, f"{name}.json")
    write_json(dst, results)
    os.chmod(dst, 0o644)
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.report [--check] [--collect WORKDIR NAME]``; returns the exit status."""
    import argparse
    import glob

    p = argparse.ArgumentParser(prog="python -m experiments.report", description=main.__doc__)
    p.add_argument("--check", action="store_true", help="only report blocks that differ (exit 1)")
    p.add_argument("--collect", nargs=2, metavar=("WORKDIR", "NAME"), help="copy a run's results.json first")
    p.add_argument("--drop", nargs="+", default=(), metavar="KEY", help="with --collect: keys to leave out")
    p.add_argument(
        "--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    try:
        if args.collect:
            workdir, name = args.collect
            print("wrote", collect(workdir, name, root=args.root, drop=args.drop))
        stale = []
        for path in sorted({f for g in DOC_FILES for f in glob.glob(os.path.join(args.root, g))}):
            with open(path) as f:
                old = f.read()
            new = rebuild(old, args.root)
            if new != old:
                stale.append(os.path.relpath(path, args.root))
                if not args.check:
                    with open(path, "w") as f:
                        f.write(new)
    except (OSError, ValueError, KeyError, AttributeError, ImportError) as e:
        p.error(str(e))
    verb = "out of date (run python -m experiments.report)" if args.check else "rewritten"
    print(f"{len(stale)} file(s) {verb}" + (": " + ", ".join(stale) if stale else ""))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
