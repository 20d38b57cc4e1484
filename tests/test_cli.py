"""Every experiment script parses the same shared flags the same way (experiments/cli.py)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil

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


def _parser(mod):
    cls = type(next(iter(mod.CONFIGS.values()))())
    return cls, cli.build_parser(cls, prog=mod.__name__, doc=mod.__doc__ or "", protocols=tuple(mod.CONFIGS))


def _parse(mod, argv):
    cls, p = _parser(mod)
    return cli.parse(p, cls, mod.CONFIGS, argv, quick=mod.quick)


def _argv(name: str, value) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        if value:
            return [flag]
        return ["--no-" + name.replace("_", "-")]
    if isinstance(value, tuple):
        return [flag, *map(str, value)] if value else []
    return [flag, str(value)]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_help_shows_the_shared_flags(name, capsys):
    with pytest.raises(SystemExit) as e:
        SCRIPTS[name].main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in SHARED:
        assert flag in out, f"{name} --help lacks {flag}"


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
    "argv, needle",
    [
        (["--seeds", "0"], "--seeds"),
        (["--seeds", "two"], "--seeds"),
        (["--lr", "-1"], "--lr"),
        (["--methods", "nosuchmethod"], "nosuchmethod"),
        (["--epochz", "3"], "unrecognized"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(name, argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(SCRIPTS[name], argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


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
    assert cfg.rules.plateau.patience == 50 and _parse(uci, ["--rules.patience", "none"]).rules.patience is None
    for argv, msg in [
        (["--es-patience", "5"], "--es-patience was renamed --rules.patience"),
        (["--plateau-factor", "0.5"], "--plateau-factor was renamed --rules.plateau.factor"),
        (["--rules.restore", "best"], "invalid choice: 'best'"),
        (["--rules.patience", "0"], "Rules.patience must be an int >= 1"),
    ]:
        with pytest.raises(SystemExit) as e:
            _parse(uci, argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err
