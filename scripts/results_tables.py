"""Rebuild the README's and docs' results tables from the committed results of the full runs.

Each table in a markdown file is a generated block::

    <!-- results MODULE:TABLE [FILE] -->
    ...experiments.MODULE.tables(results/FILE.json)[TABLE], then one line of the run's provenance...
    <!-- /results -->

with FILE defaulting to MODULE. One command rewrites every block of ``README.md`` and ``docs/*.md``; the test
suite runs it with ``--check`` (``tests/test_report.py``), so a table cannot drift from its file::

    python scripts/results_tables.py                    # rewrite the blocks
    python scripts/results_tables.py --check            # exit 1 when a block differs from what its file gives
    python scripts/results_tables.py --collect WORKDIR NAME [--drop KEY ...]   # copy WORKDIR/results.json
                                                        # to results/NAME.json (less the KEYs), then rewrite

It runs from any folder: the repository root is put first on ``sys.path``, so ``experiments`` and ``gmpjax``
come from this checkout.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from experiments.report import RESULTS_FILE  # noqa: E402 (after the repository root is on sys.path)
from gmpjax.records import without_keys, write_json  # noqa: E402

COMMAND = "python scripts/results_tables.py"
_BLOCK = re.compile(r"(<!-- results (\w+):(\w+)(?: ([\w.-]+))? -->\n)(.*?)(<!-- /results -->)", re.S)
DOC_FILES = ("README.md", "docs/*.md")
"""The markdown files (globs, relative to the repository root) whose results blocks are rewritten."""
RESULTS_DIR = "results"
"""The repository folder holding the committed results of the full runs, ``results/<name>.json``."""


def load_results(name: str, root: str = ".") -> dict[str, Any]:
    """``results/<name>.json`` under ``root``; a clear error when it is missing or has no provenance."""
    path = os.path.join(root, RESULTS_DIR, f"{name}.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} does not exist: run the full experiment and {COMMAND} --collect WORKDIR {name}."
        )
    with open(path) as f:
        results = json.load(f)
    if "provenance" not in results:
        raise ValueError(f"{path} has no 'provenance' (commit, machine): write it with report.write_results.")
    return results


def provenance_line(name: str, prov: dict[str, Any]) -> str:
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
    results = load_results(name, root)
    mod = importlib.import_module(f"experiments.{module}")
    if not hasattr(mod, "tables"):
        raise AttributeError(f"experiments.{module} has no tables(results) function.")
    out = mod.tables(results)
    if table not in out:
        raise KeyError(f"experiments.{module}.tables gives {sorted(out)}, not {table!r}.")
    return f"{out[table].rstrip()}\n\n{provenance_line(name, results['provenance'])}\n"


def rebuild(text: str, root: str = ".") -> str:
    """``text`` with every results block regenerated (see the module docstring for the block syntax)."""
    return _BLOCK.sub(lambda m: m[1] + render_block(m[2], m[3], m[4] or m[2], root) + m[6], text)


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
        results = {
            **without_keys(results, frozenset(drop).__contains__),
            "provenance": {**results["provenance"], "dropped": sorted(drop)},
        }
    dst = os.path.join(root, RESULTS_DIR, f"{name}.json")
    write_json(dst, results)
    os.chmod(dst, 0o644)
    return dst


def stale_files(root: str, write: bool) -> list[str]:
    """The markdown files under ``root`` whose blocks differ from what their results give (rewritten if ``write``)."""
    stale = []
    for path in sorted({f for g in DOC_FILES for f in glob.glob(os.path.join(root, g))}):
        with open(path) as f:
            old = f.read()
        new = rebuild(old, root)
        if new != old:
            stale.append(os.path.relpath(path, root))
            if write:
                with open(path, "w") as f:
                    f.write(new)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/results_tables.py [--check] [--collect WORKDIR NAME [--drop KEY ...]]``; the exit status."""
    p = argparse.ArgumentParser(prog=COMMAND, description=main.__doc__)
    p.add_argument("--check", action="store_true", help="only report blocks that differ (exit 1)")
    p.add_argument("--collect", nargs=2, metavar=("WORKDIR", "NAME"), help="copy a run's results.json first")
    p.add_argument("--drop", nargs="+", default=(), metavar="KEY", help="with --collect: keys to leave out")
    p.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.drop and not args.collect:
        p.error("--drop only applies with --collect WORKDIR NAME")
    try:
        if args.collect:
            workdir, name = args.collect
            print("wrote", collect(workdir, name, root=args.root, drop=args.drop))
        stale = stale_files(args.root, write=not args.check)
    except (OSError, ValueError, KeyError, AttributeError, ImportError) as e:
        p.error(str(e))
    verb = "out of date" + (f" (run {COMMAND})" if stale else "") if args.check else "rewritten"
    print(f"{len(stale)} file(s) {verb}" + (": " + ", ".join(stale) if stale else ""))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
