"""One CLI convention and one runner for every experiment script.

An experiment is a frozen ``Config`` dataclass (subclass of ``Common``), one
``get_config()`` per protocol, a ``quick(cfg)`` dict of smoke-run settings and a
``run(cfg) -> dict``. ``main`` turns the dataclass into flags, so every script
has the same shared flags:

* ``--methods sp gmp`` (space-separated), ``--lr`` (one or several values, or ``cv``:
  0.1 for GmP, 0.01 for the others), ``--seeds N`` (replicas), ``--seed S`` (the first seed);
* ``--workdir DIR`` (alias ``--out``), ``--resume`` (a workdir that does not exist is an error);
* ``--quick``: the script's smoke settings, except where a flag was given;
* ``--no-progress``;
* ``--protocol`` when the experiment has several configs (``paper``, ``official``).

A field ``max_epochs`` becomes ``--max-epochs``; a bad value prints one line
(``prog: error: ...``) and exits with status 2.

Shared reporting (atomic JSON, markdown tables, figures, per-job results for
``--resume``) lives here too, so scripts keep only what is particular to their
paper figure or table.

>>> @dataclasses.dataclass(frozen=True)
... class Config(Common):
...     epochs: int = field(100, "training epochs")
>>> p = build_parser(Config, prog="demo")
>>> cfg = parse(p, Config, {"paper": Config}, ["--epochs", "5", "--methods", "sp", "gmp"], quick=lambda c: {})
>>> cfg.epochs, cfg.methods
(5, ('sp', 'gmp'))
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NoReturn, TypeVar, cast

import numpy as np

from gmpjax.data.paths import DataError

__all__ = [
    "Common",
    "field",
    "check_choice",
    "build_parser",
    "parse",
    "main",
    "lr_values",
    "run_jobs",
    "write_json",
    "markdown_table",
    "fmt_mean_se",
    "save_figure",
]

C = TypeVar("C", bound="Common")


def field(default: Any, help: str = "", *, choices: Sequence[Any] | None = None) -> Any:
    """A config field with a ``--help`` line (and optional choices)."""
    if isinstance(default, list | dict | set):
        raise TypeError("config defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass(frozen=True)
class Common:
    """The flags every experiment script shares.

    A script whose methods are not GmP parameterizations sets ``method_names`` (the allowed
    ``--methods``); one where ``--lr cv`` has no meaning sets ``lr_cv = False``.
    """

    method_names: ClassVar[tuple[str, ...] | None] = None
    lr_cv: ClassVar[bool] = True

    methods: tuple[str, ...] = field(("sp", "wn", "bn", "gmp"), "parameterizations, space-separated")
    lr: tuple[str, ...] = field(("cv",), "learning rate(s), or 'cv' (0.1 for GmP, 0.01 for the others)")
    seeds: int = field(1, "number of seeds (replicas) per method")
    seed: int = field(0, "first seed")
    workdir: str = field("results", "output folder (results, figures, checkpoints); alias --out")
    quick: bool = field(False, "small smoke run (flags given explicitly still win)")
    progress: bool = field(True, "show progress bars (--no-progress turns them off)")
    resume: bool = field(False, "continue the run in --workdir (it must exist)")

    def __post_init__(self) -> None:
        from gmpjax.layers import check_parameterization

        if not self.methods:
            raise ValueError("--methods needs at least one parameterization (e.g. --methods sp gmp)")
        if self.method_names is None:
            _check_methods(self.methods, check_parameterization)
            # one spelling from here on ("GMP", "gmp+imn" -> "gmp", "gmp_imn"): lrs and paper numbers are keyed by it
            object.__setattr__(self, "methods", tuple(check_parameterization(m) for m in self.methods))
        else:
            check_choice("methods", self.methods, self.method_names)
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise ValueError(f"--workdir: {self.workdir!r} is a file, not a folder; pass a folder path")
        if "cv" in self.lr and not self.lr_cv:
            raise ValueError("--lr: 'cv' (0.1 for GmP, 0.01 for the others) does not apply here; give numbers")
        if not self.lr:
            raise ValueError("--lr needs a value: 'cv' or positive numbers")
        for v in self.lr:
            if v != "cv":
                try:
                    ok = float(v) > 0 and math.isfinite(float(v))
                except ValueError:
                    ok = False
                if not ok:
                    raise ValueError(f"--lr values must be 'cv' or positive numbers (got {v!r})")
        for name in ("seeds",):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (got {getattr(self, name)})")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0 (got {self.seed})")


def check_choice(flag: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    """ValueError naming ``--flag`` if a value is not in ``allowed``.

    >>> check_choice("methods", ["relu"], ["relu", "triangle"])
    """
    for v in values:
        if v not in allowed:
            raise ValueError(f"--{flag.replace('_', '-')}: unknown name {v!r}; choose from {' '.join(allowed)}")


def _check_methods(methods: Sequence[str], check: Callable[[str], Any]) -> None:
    """Run ``check`` on every method; its ValueError is re-raised prefixed with ``--methods``."""
    bad = []
    for m in methods:
        try:
            check(m)
        except ValueError as e:  # noqa: PERF203 -- a handful of names
            bad.append(str(e))
    if bad:
        raise ValueError(f"--methods: {bad[0]}")


def lr_values(cfg: Common, method: str) -> tuple[float, ...]:
    """The learning rates ``cfg.lr`` gives ``method`` (``cv`` -> its registry row's ``cv_lr``), duplicates removed.

    >>> lr_values(Common(lr=("cv", "0.3")), "gmp")
    (0.1, 0.3)
    """
    from gmpjax.layers.registry import default_lr

    out: list[float] = []
    for v in cfg.lr:
        x = default_lr(method) if v == "cv" else float(v)
        if x not in out:
            out.append(x)
    return tuple(out)


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar(tp: Any) -> tuple[Any, bool]:
    """``(element type, is_tuple)`` of a field annotation (``X``, ``X | None``, ``tuple[X, ...]``)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar(args[0])
    if origin is tuple:
        return typing.get_args(tp)[0], True
    return tp, False


def build_parser(config_cls: type[Common], *, prog: str, doc: str = "", protocols: Sequence[str] = ()) -> _Parser:
    """An argparse parser with one flag per field of ``config_cls`` (defaults ``None``: "not given")."""
    first, _, rest = (doc or "").partition("\n")
    p = _Parser(
        prog=prog, description=first, epilog=rest.strip() or None, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if len(protocols) > 1:
        p.add_argument("--protocol", choices=tuple(protocols), default=None, help=f"default {protocols[0]}")
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        meta: Mapping[str, Any] = f.metadata or {}
        help_ = meta.get("help", "")
        tp, many = _scalar(hints[f.name])
        if tp is bool:
            if f.default is True:
                p.add_argument(
                    _flag("no_" + f.name), dest=f.name, action="store_const", const=False, default=None, help=help_
                )
            else:
                p.add_argument(_flag(f.name), dest=f.name, action="store_const", const=True, default=None, help=help_)
            continue
        names = [_flag(f.name)] + (["--out"] if f.name == "workdir" else [])
        shown = " ".join(map(str, cast(tuple, f.default))) if many else f.default
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": f"{help_} (default: {shown})"}
        if meta.get("choices") is not None:
            kw["choices"] = tuple(meta["choices"])
        if many:
            kw["nargs"] = "+"
        p.add_argument(*names, type=tp if tp in (int, float, str) else str, **kw)
    return p


def parse(
    parser: argparse.ArgumentParser,
    config_cls: type[C],
    configs: Mapping[str, Callable[[], C]],
    argv: Sequence[str] | None,
    *,
    quick: Callable[[C], Mapping[str, Any]],
) -> C:
    """Parse ``argv`` into a config: protocol's ``get_config()``, then ``quick`` (flags not given), then the flags."""
    args = parser.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if getattr(args, f.name) is not None}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    protocol = getattr(args, "protocol", None) or next(iter(configs))
    try:
        cfg = configs[protocol]()
        if given.get("quick"):
            cfg = dataclasses.replace(cfg, quick=True)
            cfg = dataclasses.replace(cfg, **{k: v for k, v in quick(cfg).items() if k not in given})
        cfg = dataclasses.replace(cfg, **given)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    if cfg.resume and not os.path.isdir(cfg.workdir):
        parser.error(
            f"--resume: workdir {cfg.workdir!r} does not exist (check the path, or drop --resume to start a new run)"
        )
    return cfg


def main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    doc: str,
    configs: Mapping[str, Callable[[], C]],
    quick: Callable[[C], Mapping[str, Any]],
    run: Callable[[C], Any],
) -> Any:
    """Parse, run, and turn a bad value found while running into one line and exit status 2."""
    config_cls = type(next(iter(configs.values()))())
    parser = build_parser(config_cls, prog=prog, doc=doc, protocols=tuple(configs))
    cfg = parse(parser, config_cls, configs, argv, quick=quick)
    try:
        return run(cfg)
    except (ValueError, FileNotFoundError, DataError) as e:
        parser.error(str(e))


# --------------------------------------------------------------------------- results


def _to_json(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _to_json(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):
        return _to_json(np.asarray(obj).tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temp file + rename); numpy arrays become lists, non-finite floats null."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_to_json(obj), f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def run_jobs(
    cfg: Common,
    jobs: Sequence[str],
    fn: Callable[[str], dict],
    *,
    desc: str = "jobs",
    grow: Sequence[str] = ("methods",),
) -> dict[str, dict]:
    """Run ``fn(job)`` for every job name, saving each result as ``<workdir>/jobs/<job>.json``.

    With ``cfg.resume`` the jobs whose file exists are loaded instead of run, so an interrupted
    sweep continues where it stopped. The configuration is saved with the jobs; resuming with a
    different one is an error (it would mix results of two settings), except for the fields in
    ``grow``, which only add or remove jobs (e.g. ``methods``), and ``workdir``/``progress``.
    """
    from tqdm.auto import tqdm

    folder = os.path.join(cfg.workdir, "jobs")
    os.makedirs(folder, exist_ok=True)
    stamp = os.path.join(folder, "_config.json")
    skip = {"resume", "progress", "workdir", *grow}
    mine = _to_json({k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip})
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
        out[job] = _to_json(fn(job))
        write_json(path, out[job])
    return out


def fmt_mean_se(mean: float, se: float, digits: int = 3) -> str:
    """``"m ± se"`` with ``digits`` decimals (4 when ``|m| < 0.1``).

    >>> fmt_mean_se(0.4741, 0.0132)
    '0.474 ± 0.013'
    """
    d = digits + 1 if abs(mean) < 0.1 else digits
    return f"{mean:.{d}f} ± {se:.{d}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table.

    >>> print(markdown_table(["a", "b"], [[1, 2]]))
    | a | b |
    |---|---|
    | 1 | 2 |
    """
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
