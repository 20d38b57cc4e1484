"""One CLI convention and one runner for every experiment script.

An experiment module holds a frozen ``Config`` dataclass (subclass of ``Common``), ``CONFIGS`` (protocol name ->
its ``get_config()``), a ``quick(cfg)`` dict of smoke-run settings, ``run(cfg) -> dict`` and ``tables(results)``
(``experiments.report``); ``main(argv, __name__)`` turns the dataclass into flags, so every script has the same
shared flags: ``--methods sp gmp``, ``--lr`` (values, or ``cv``: 0.1 for GmP, 0.01 for the others;
``gmpjax.layers.registry.learning_rates``), ``--seeds N`` (replicas), ``--seed S`` (the first), ``--workdir DIR``
(alias ``--out``), ``--resume`` (the workdir must exist), ``--quick`` (the script's smoke settings, except where a
flag was given), ``--no-progress`` and ``--protocol`` (when there are several). A field ``max_epochs`` becomes
``--max-epochs``; a bad value prints one line (``prog: error: ...``) and exits with status 2. A field holding a
frozen dataclass (the training rules ``rules: gmpjax.train.rules.Rules``) is set field by field with dotted flags,
as ml_collections' ``--config.x``: ``--rules.patience 10``, ``--rules.plateau.factor 0.5`` (``none`` for an
optional value).

>>> @dataclasses.dataclass(frozen=True)
... class Config(Common):
...     epochs: int = field(100, "training epochs")
>>> p = build_parser(Config, prog="demo")
>>> cfg = parse(p, Config, {"paper": Config}, ["--epochs", "5", "--methods", "sp", "gmp"], quick=lambda c: {})
>>> cfg.epochs, cfg.methods
(5, ('sp', 'gmp'))
>>> replace_dotted(Common(), {"seed": 3}).seed
3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NoReturn, TypeVar, cast

from gmpjax.data.paths import DataError

__all__ = [
    "Common",
    "field",
    "check_choice",
    "positive",
    "build_parser",
    "parse",
    "main",
    "replace_dotted",
]

# flags of earlier versions -> their dotted successors (argparse names the new one)
RENAMED = {
    "--es-patience": "--rules.patience",
    "--stop-patience": "--rules.patience",
    "--restore": "--rules.restore",
    "--plateau-patience": "--rules.plateau.patience",
    "--plateau-factor": "--rules.plateau.factor",
    "--plateau-min-delta": "--rules.plateau.min_delta",
}

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
        from gmpjax.layers.registry import learning_rates

        if not self.methods:
            raise ValueError("--methods needs at least one parameterization (e.g. --methods sp gmp)")
        if self.method_names is None:
            for m in self.methods:
                try:
                    check_parameterization(m)
                except ValueError as e:
                    raise ValueError(f"--methods: {e}") from None
            # one spelling from here on (the registry name, e.g. "GmP+IMN" -> gmp_imn): lrs and tables key on it
            object.__setattr__(self, "methods", tuple(check_parameterization(m) for m in self.methods))
        else:
            check_choice("methods", self.methods, self.method_names)
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise ValueError(f"--workdir: {self.workdir!r} is a file, not a folder; pass a folder path")
        if "cv" in self.lr and not self.lr_cv:
            raise ValueError("--lr: 'cv' (0.1 for GmP, 0.01 for the others) does not apply here; give numbers")
        if not self.lr:
            raise ValueError("--lr needs a value: 'cv' or positive numbers")
        try:
            learning_rates([v for v in self.lr if v != "cv"])
        except ValueError as e:
            raise ValueError(f"--lr {e}") from None
        positive(self, "seeds")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0 (got {self.seed})")


def positive(cfg: Any, *names: str) -> None:
    """ValueError naming ``--name`` for the first of ``names`` whose value is below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(cfg, name)})")


def check_choice(flag: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    """ValueError naming ``--flag`` if a value is not in ``allowed``.

    >>> check_choice("methods", ["relu"], ["relu", "triangle"])
    """
    for v in values:
        if v not in allowed:
            raise ValueError(f"--{flag.replace('_', '-')}: unknown name {v!r}; choose from {' '.join(allowed)}")


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


def _help_of(cls: type) -> dict[str, str]:
    """``name -> text`` of the ``Attributes:`` lines of a dataclass docstring."""
    return dict(re.findall(r"^\s{6}(\w+): (.+)$", cls.__doc__ or "", flags=re.M))


_NONE = ("none",)  # "given as none" (argparse's None means "not given")


def _value_type(tp: Any) -> Callable[[str], Any]:
    """argparse ``type`` of a nested field: its scalar type, ``none`` -> None when the field is optional."""
    base, _ = _scalar(tp)
    optional = type(None) in typing.get_args(tp)
    conv = base if base in (int, float, str) else str

    def parse(text: str) -> Any:
        return _NONE if optional and text.lower() == "none" else conv(text)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _add_nested(p: argparse.ArgumentParser, prefix: str, cls: type, value: Any) -> None:
    """``--prefix.field`` flags for every field of the dataclass ``cls`` (recursively)."""
    hints, helps = typing.get_type_hints(cls), _help_of(cls)
    for f in dataclasses.fields(cls):
        tp, name = hints[f.name], f"{prefix}.{f.name}"
        inner = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        current = getattr(value, f.name, None) if value is not None else None
        if inner:
            _add_nested(p, name, inner[0], current)
            continue
        kw: dict[str, Any] = {"dest": name, "default": None, "type": _value_type(tp)}
        if typing.get_origin(tp) is typing.Literal:
            kw["choices"] = typing.get_args(tp)
        names = ["--" + name] + (["--" + name.replace("_", "-")] if "_" in f.name else [])
        p.add_argument(*names, **kw, help=f"{helps.get(f.name, '')} (default: {current})")


class _Renamed(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.error(f"{self.option_strings[0]} was renamed {self.help}")


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
        if dataclasses.is_dataclass(tp):
            _add_nested(p, f.name, cast(type, tp), f.default)
            if f.name == "rules":
                for old, new in RENAMED.items():
                    p.add_argument(old, nargs="?", action=_Renamed, help=new)
        elif tp is bool:
            flag, const = (_flag("no_" + f.name), False) if f.default is True else (_flag(f.name), True)
            p.add_argument(flag, dest=f.name, action="store_const", const=const, default=None, help=help_)
        else:
            names = [_flag(f.name)] + (["--out"] if f.name == "workdir" else [])
            shown = " ".join(map(str, cast(tuple, f.default))) if many else f.default
            kw: dict[str, Any] = {"dest": f.name, "default": None, "help": f"{help_} (default: {shown})"}
            if meta.get("choices") is not None:
                kw["choices"] = tuple(meta["choices"])
            if many:
                kw["nargs"] = "+"
            p.add_argument(*names, type=tp if tp in (int, float, str) else str, **kw)
    return p


def replace_dotted(obj: Any, values: Mapping[str, Any]) -> Any:
    """``dataclasses.replace`` with dotted keys: ``{"rules.plateau.patience": 5}`` replaces inside nested fields."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, v in values.items():
        head, dot, tail = key.partition(".")
        if dot:
            nested.setdefault(head, {})[tail] = v
        else:
            top[head] = v
    for head, inner in nested.items():
        current = top.get(head, getattr(obj, head))
        if current is None:
            raise ValueError(f"--{head}.{next(iter(inner))}: {head} is off in this configuration; it has no fields")
        top[head] = replace_dotted(current, inner)
    return dataclasses.replace(obj, **top)


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
    given = {k: v for k, v in vars(args).items() if k != "protocol" and v is not None}
    given = {k: tuple(v) if isinstance(v, list) else None if v is _NONE else v for k, v in given.items()}
    protocol = getattr(args, "protocol", None) or next(iter(configs))
    try:
        cfg = configs[protocol]()
        if given.get("quick"):
            cfg = dataclasses.replace(cfg, quick=True)
            cfg = replace_dotted(cfg, {k: v for k, v in quick(cfg).items() if k not in given})
        cfg = replace_dotted(cfg, given)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    if cfg.resume and not os.path.isdir(cfg.workdir):
        parser.error(
            f"--resume: workdir {cfg.workdir!r} does not exist (check the path, or drop --resume to start a new run)"
        )
    return cfg


def main(argv: Sequence[str] | None, module_name: str) -> Any:
    """Run the experiment module ``module_name`` (pass ``__name__``) on ``argv``: its ``CONFIGS``, ``quick``,
    ``run`` and docstring (the ``--help`` text); a bad value found while running is one line and exit status 2."""
    module = sys.modules[module_name]
    configs: Mapping[str, Callable[[], Common]] = module.CONFIGS
    prog = "python -m " + (module.__spec__.name if module.__spec__ else module_name)
    config_cls = type(next(iter(configs.values()))())
    parser = build_parser(config_cls, prog=prog, doc=module.__doc__ or "", protocols=tuple(configs))
    cfg = parse(parser, config_cls, configs, argv, quick=module.quick)
    try:
        return module.run(cfg)
    except (ValueError, FileNotFoundError, DataError) as e:
        parser.error(str(e))
