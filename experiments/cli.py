"""One CLI convention and one runner for every experiment script; ``tyro`` turns the config into flags.

An experiment module holds a frozen ``Config(Common)`` dataclass, ``CONFIGS`` (protocol -> its ``get_config``), a
``quick(cfg)`` dict of smoke-run settings (dotted keys reach nested fields), ``run(cfg)`` and ``tables(results)``.
``main(argv, __name__)`` gives every script the flags of ``Common`` (``--methods``, ``--lr``, ``--seeds``, ``--seed``,
``--workdir`` alias ``--out``, ``--quick``, ``--no-progress``, ``--resume``), ``--protocol`` when there are several,
one flag per field (``max_epochs``: ``--max-epochs``) and dotted flags for a nested dataclass, as ml_collections'
``--config.x``: ``--rules.patience 10`` (``none`` for an optional value), ``--rules.plateau.factor 0.5``. A value
a config rejects is one line (``prog: error: ...``) and exit status 2; a flag tyro cannot read (a typo, ``--seeds
two``) gets tyro's own message, also exit status 2.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar, NoReturn

import tyro
from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec, StructConstructorSpec

from gmpjax.data.paths import DataError
from gmpjax.layers.registry import check_parameterization, learning_rates

__all__ = ["Common", "field", "check_choice", "positive", "parse", "main", "entry"]

# flags of earlier versions -> their dotted successors
RENAMED = {"--es-patience": "--rules.patience", "--stop-patience": "--rules.patience", "--restore": "--rules.restore",
           "--plateau-patience": "--rules.plateau.patience", "--plateau-factor": "--rules.plateau.factor",
           "--plateau-min-delta": "--rules.plateau.min-delta"}  # fmt: skip


def field(default: Any, help: str = "", *, choices: Sequence[Any] | None = None) -> Any:
    """A config field with a ``--help`` line; ``choices``: the allowed values (``Common`` checks them)."""
    if isinstance(default, list | dict | set):
        raise TypeError("config defaults must be immutable (use a tuple)")
    shown = f"{help} {{{','.join(map(str, choices))}}}" if choices else help
    return dataclasses.field(default=default, metadata={"help": shown, "choices": choices})


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
        if not self.methods:
            raise ValueError("--methods needs at least one parameterization (e.g. --methods sp gmp)")
        # one spelling from here on, each name once (a registry name: "GmP+IMN" -> gmp_imn): lrs and tables key on it
        spelled = (_spelling(m, strict=self.method_names is None) for m in self.methods)
        object.__setattr__(self, "methods", tuple(dict.fromkeys(spelled)))
        if self.method_names is not None:
            check_choice("methods", self.methods, self.method_names)
        for f in dataclasses.fields(self):
            if f.metadata.get("choices") is not None:
                v = getattr(self, f.name)
                check_choice(f.name, v if isinstance(v, tuple) else (v,), f.metadata["choices"])
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
        positive(self, "seed", least=0)

    def runs(self, methods: Sequence[str] | None = None) -> dict[str, tuple[str, float]]:
        """``name -> (method, lr)`` for every method (default ``self.methods``) x its learning rates
        (``registry.learning_rates``); the name is the method, ``method@lr`` when some method has several rates.

        >>> Common(methods=("sp", "gmp"), lr=("cv", "0.1")).runs()
        {'sp@0.01': ('sp', 0.01), 'sp@0.1': ('sp', 0.1), 'gmp@0.1': ('gmp', 0.1)}
        """
        rates = {m: learning_rates(self.lr, m if self.lr_cv else None) for m in methods or self.methods}
        many = any(len(r) > 1 for r in rates.values())
        return {f"{m}@{lr:g}" if many else m: (m, lr) for m, r in rates.items() for lr in r}


def _spelling(name: str, strict: bool) -> str:
    """The registry's name of a parameterization ("GmP+IMN" -> gmp_imn); any other name as given unless ``strict``."""
    try:
        return check_parameterization(name)
    except ValueError as e:
        if strict:
            raise ValueError(f"--methods: {e}") from None
        return name


def positive(cfg: Any, *names: str, least: int = 1) -> None:
    """ValueError naming ``--name`` for the first of ``names`` whose value is below ``least`` (None passes: unset)."""
    for name in names:
        if (v := getattr(cfg, name)) is not None and (isinstance(v, bool) or v < least):
            raise ValueError(f"--{name.replace('_', '-')} must be >= {least} (got {v!r})")


def check_choice(flag: str, values: Sequence[Any], allowed: Sequence[Any]) -> None:
    """ValueError naming ``--flag`` if a value is not in ``allowed``.

    >>> check_choice("methods", ["relu"], ["relu", "triangle"])
    """
    for v in values:
        if v not in allowed:
            raise ValueError(f"--{flag.replace('_', '-')}: unknown name {v!r}; choose from {' '.join(allowed)}")


# tyro reads the flags; building the dataclasses (and their checks) waits for `_build`, so that a value a config
# rejects is our one-line error rather than tyro's box
_REGISTRY, _INNER = ConstructorRegistry(), []


@_REGISTRY.struct_rule
def _deferred(info: Any) -> Any:
    """tyro's own spec of a dataclass, its ``instantiate`` returning a ``functools.partial`` (built by ``_build``)."""
    if _INNER or not dataclasses.is_dataclass(info.type):
        return None
    _INNER.append(info)
    try:
        spec = ConstructorRegistry.get_struct_spec(info)
    finally:
        _INNER.pop()
    if isinstance(spec, StructConstructorSpec):
        spec = dataclasses.replace(spec, instantiate=functools.partial(functools.partial, spec.instantiate))
    return spec


# an optional value is None or none
_REGISTRY.primitive_rule(
    lambda info: None if info.type is not type(None) else PrimitiveConstructorSpec(
        1, "{None}", lambda args: None, lambda x: x is None, lambda x: ["None"], choices=("None", "none"))
)  # fmt: skip


def _build(x: Any) -> Any:
    """The dataclasses of a tree of ``functools.partial`` (inner ones first)."""
    if not isinstance(x, functools.partial):
        return x
    return x.func(*x.args, **{k: _build(v) for k, v in x.keywords.items()})


def replace_dotted(obj: Any, values: Mapping[str, Any]) -> Any:
    """``dataclasses.replace`` with dotted keys: ``{"rules.plateau.patience": 5}`` replaces inside nested fields.

    >>> replace_dotted(Common(), {"seed": 3}).seed
    3
    """
    top = {k: v for k, v in values.items() if "." not in k}
    for head in dict.fromkeys(k.split(".")[0] for k in values if "." in k):
        inner = {k[len(head) + 1 :]: v for k, v in values.items() if k.startswith(head + ".")}
        if (current := top.get(head, getattr(obj, head))) is None:
            raise ValueError(f"--{head}.{next(iter(inner))}: {head} is off in this configuration; it has no fields")
        top[head] = replace_dotted(current, inner)
    return dataclasses.replace(obj, **top)


def _error(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message} (see --help)", file=sys.stderr)
    raise SystemExit(2)


def _prescan(argv: Sequence[str], protocols: Sequence[str], prog: str) -> tuple[str, list[str]]:
    """``(protocol, the other flags)``: ``--protocol NAME`` taken out, ``--out`` spelled ``--workdir``, an old flag
    an error naming its successor."""
    protocol, rest, it = protocols[0], [], iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        if flag in RENAMED:
            _error(prog, f"{flag} was renamed {RENAMED[flag]}")
        if flag == "--protocol" and len(protocols) > 1:
            protocol = value if eq else next(it, "")
            if protocol not in protocols:
                _error(prog, f"--protocol: choose from {' '.join(protocols)} (got {protocol!r})")
        else:
            rest.append("--workdir" + eq + value if flag == "--out" else arg)
    return protocol, rest


def _prog(module: ModuleType) -> str:
    return "python -m " + (module.__spec__.name if module.__spec__ else module.__name__)


def parse(module: ModuleType, argv: Sequence[str] | None = None) -> Any:
    """The config of ``module`` (an experiment script) from ``argv``: the protocol's ``get_config()``, then with
    ``--quick`` its ``quick(cfg)`` settings, then the flags given; a bad value is one line and exit status 2."""
    configs, prog = module.CONFIGS, _prog(module)
    protocol, args = _prescan(sys.argv[1:] if argv is None else argv, tuple(configs), prog)
    doc = (module.__doc__ or "") + (f"\n\n--protocol {{{','.join(configs)}}}: the settings to start from (default "
                                    f"{next(iter(configs))})." if len(configs) > 1 else "")  # fmt: skip
    try:
        cfg = configs[protocol]()
        if "--quick" in args:
            cfg = dataclasses.replace(cfg, quick=True)
            cfg = replace_dotted(cfg, module.quick(cfg))
        kw = {"prog": prog, "description": doc, "config": (tyro.conf.AvoidSubcommands,), "registry": _REGISTRY}
        cfg = _build(tyro.cli(type(cfg), default=cfg, args=args, **kw))
    except (ValueError, TypeError) as e:
        _error(prog, str(e))
    if cfg.resume and not os.path.isdir(cfg.workdir):
        _error(prog, f"--resume: workdir {cfg.workdir!r} does not exist (check the path, or drop --resume)")
    return cfg


def main(argv: Sequence[str] | None, module_name: str) -> Any:
    """Run the experiment module ``module_name`` (pass ``__name__``) on ``argv``: its ``CONFIGS``, ``quick``,
    ``run`` and docstring (the ``--help`` text); a bad value found while running is one line and exit status 2."""
    module = sys.modules[module_name]
    cfg = parse(module, argv)
    try:
        return module.run(cfg)
    except (ValueError, FileNotFoundError, DataError) as e:
        _error(_prog(module), str(e))


def entry(module_name: str) -> Callable[[Sequence[str] | None], Any]:
    """A script's ``main(argv=None)``: ``main(argv, module_name)`` (``argv=None`` reads ``sys.argv``).

    >>> import experiments.quickstart as q
    >>> q.main(["--seeds", "0"])
    Traceback (most recent call last):
    SystemExit: 2
    """

    def script_main(argv: Sequence[str] | None = None) -> Any:
        return main(argv, module_name)

    return script_main
