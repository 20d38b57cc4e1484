"""Every experiment script parses the same shared flags the same way (experiments/cli.py)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import typing

import pytest

import experiments
from experiments import cli

SHARED = ("--methods", "--lr", "--seeds", "--seed", "--workdir", "--out", "--quick", "--no-progress", "--resume")
EXPECTED = {
    "banana_2d",
    "imagenet32_vgg6",
    "imagenet_resnet18",
    "levy_1d",
    "perturbation_2d",
    "quickstart",
    "transformer_lm",
    "triangular_1d",
    "triangular_head",
    "uci",
}


def _scripts() -> dict[str, object]:
    out = {}
    for info in pkgutil.iter_modules(experiments.__path__):
        mod = importlib.import_module(f"experiments.{info.name}")
        if hasattr(mod, "CONFIGS"):
            out[info.name] = mod
    return out


SCRIPTS = _scripts()


def test_every_experiment_script_uses_the_shared_cli():
    assert set(SCRIPTS) >= EXPECTED, f"scripts without CONFIGS/quick/run/main: {sorted(EXPECTED - set(SCRIPTS))}"
    for name, mod in SCRIPTS.items():
        for attr in ("CONFIGS", "quick", "run", "main"):
            assert hasattr(mod, attr), f"experiments.{name} has no {attr}"


def _parse(mod, argv):
    return cli.parse(mod, argv)


def _argv(name: str, value) -> list[str]:
    """The flags that set field ``name`` (dotted for a nested field) to ``value``."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + name.replace("_", "-")]
    if isinstance(value, tuple):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def _leaves(obj, prefix=""):
    """``(dotted name, value)`` of every field with a flag: nested dataclasses recursively; an optional nested
    dataclass that is off (``None``) has no flags."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, name + ".")
        elif value is not None or not any(dataclasses.is_dataclass(a) for a in typing.get_args(hints[f.name])):
            yield name, value


def _flags(cfg) -> list[str]:
    """Every flag of a config, nested fields dotted (``--rules.plateau.min-delta``)."""
    return [_argv(name, value)[0] for name, value in _leaves(cfg)]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_help_shows_the_shared_flags(name, capsys):
    with pytest.raises(SystemExit) as e:
        SCRIPTS[name].main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    default = next(iter(SCRIPTS[name].CONFIGS.values()))()
    for flag in (*SHARED, *_flags(default), *(["--protocol"] if len(SCRIPTS[name].CONFIGS) > 1 else [])):
        assert flag in out, f"{name} --help lacks {flag}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_flags_of_each_protocol_give_its_config(name):
    """Each protocol's config, written out as flags (every field, nested ones dotted), parses back to itself from the
    default protocol: every field has a flag that reads its type (tuples, None, floats, bools, --rules.*)."""
    mod = SCRIPTS[name]
    for protocol, get_config in mod.CONFIGS.items():
        cfg = get_config()
        argv = [a for key, value in _leaves(cfg) for a in _argv(key, value)]
        assert _parse(mod, argv) == cfg, f"{name}: the flags of --protocol {protocol} do not give its config"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_same_flags_same_meaning(name, tmp_path):
    mod = SCRIPTS[name]
    default = next(iter(mod.CONFIGS.values()))()
    method = default.methods[0]
    cfg = _parse(
        mod,
        [
            "--methods",
            method,
            "--lr",
            "0.05",
            "--seeds",
            "2",
            "--seed",
            "3",
            "--workdir",
            str(tmp_path),
            "--no-progress",
        ],
    )
    assert cfg.methods == (method,) and cfg.lr == ("0.05",) and cfg.seeds == 2 and cfg.seed == 3
    assert cfg.workdir == str(tmp_path) and cfg.progress is False and cfg.quick is False
    assert _parse(mod, ["--out", str(tmp_path)]).workdir == str(tmp_path)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_never_overrides_a_given_flag(name):
    mod = SCRIPTS[name]
    base = next(iter(mod.CONFIGS.values()))()
    changes = dict(mod.quick(dataclasses.replace(base, quick=True)))
    if not changes:
        pytest.skip(f"{name}: the full run is already quick")
    quick = _parse(mod, ["--quick"])
    get = lambda obj, key: functools.reduce(getattr, key.split("."), obj)  # noqa: E731  ("rules.patience")
    for k, v in changes.items():
        assert get(quick, k) == v
        if get(base, k) in (v, (), None) or isinstance(v, bool):
            continue  # nothing to give explicitly (a bool flag can only be given one way)
        explicit = _parse(mod, ["--quick", *_argv(k, get(base, k))])
        assert get(explicit, k) == get(base, k), f"{name}: --quick overrode --{k}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize(
    "argv, needle, one_line",
    [
        (["--seeds", "0"], "--seeds", True),  # rejected by the config: our one line
        (["--lr", "-1"], "--lr", True),
        (["--methods", "nosuchmethod"], "nosuchmethod", True),
        (["--protocol", "nosuch"], "--protocol", False),  # one line where there are protocols, else unknown flag
        (["--seeds", "two"], "--seeds", False),  # not read by tyro: tyro's message
        (["--epochz", "3"], "--epochz", False),
    ],
)
def test_bad_values_exit_2_naming_the_flag(name, argv, needle, one_line, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(SCRIPTS[name], argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err, err
    if one_line or (argv[0] == "--protocol" and len(SCRIPTS[name].CONFIGS) > 1):
        assert len(err.splitlines()) == 1 and err.startswith(f"python -m experiments.{name}: error: "), err


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_choices_of_a_field_are_checked(name, capsys):
    """A field declared with ``cli.field(..., choices=...)`` rejects another value: one line naming flag and choices."""
    mod = SCRIPTS[name]
    fields = [f for f in dataclasses.fields(next(iter(mod.CONFIGS.values()))()) if f.metadata.get("choices")]
    for f in fields:
        with pytest.raises(SystemExit) as e:
            _parse(mod, ["--" + f.name.replace("_", "-"), "nosuchchoice"])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1, err
        assert f"--{f.name.replace('_', '-')}: unknown name 'nosuchchoice'" in err, err
        assert " ".join(map(str, f.metadata["choices"])) in err, err


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_resume_on_a_missing_workdir_is_an_error(name, tmp_path, capsys):
    missing = tmp_path / "typo"
    with pytest.raises(SystemExit) as e:
        _parse(SCRIPTS[name], ["--resume", "--workdir", str(missing)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and str(missing) in err


def test_dotted_rules_flags_and_renamed_flags(capsys):
    """``--rules.x`` sets one field of the nested training rules; an old flag names its successor."""
    uci = SCRIPTS["uci"]
    cfg = _parse(uci, ["--rules.patience", "7", "--rules.restore", "never", "--rules.plateau.min-delta", "0.01"])
    assert (cfg.rules.patience, cfg.rules.restore, cfg.rules.plateau.min_delta) == (7, "never", 0.01)
    assert (
        cfg.rules.plateau.patience == 50
        and _parse(uci, ["--rules.plateau.min_delta", "0.5"]).rules.plateau.min_delta == 0.5
    )
    for none in ("none", "None"):  # an optional value, nested or not
        assert _parse(uci, ["--rules.patience", none]).rules.patience is None
        assert _parse(SCRIPTS["imagenet32_vgg6"], ["--max-steps", "3", "--max-steps", none]).max_steps is None
    for argv, msg, one_line in [
        (["--es-patience", "5"], "--es-patience was renamed --rules.patience", True),
        (["--plateau-factor=0.5"], "--plateau-factor was renamed --rules.plateau.factor", True),
        (["--rules.patience", "0"], "Rules.patience must be an int >= 1", True),
        (["--rules.plateau.factor", "2"], "plateau factor must be in (0, 1)", True),
        (["--rules.restore", "best"], "'best'", False),  # tyro: not one of the Literal's values
    ]:
        with pytest.raises(SystemExit) as e:
            _parse(uci, argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and (len(err.strip().splitlines()) == 1 or not one_line), err
