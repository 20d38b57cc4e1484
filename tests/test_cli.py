"""Every experiment script parses the same shared flags the same way (experiments/cli.py)."""

from __future__ import annotations

import dataclasses
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
    for k, v in changes.items():
        assert getattr(quick, k) == v
        if getattr(base, k) in (v, (), None) or isinstance(v, bool):
            continue  # nothing to give explicitly (a bool flag can only be given one way)
        explicit = _parse(mod, ["--quick", *_argv(k, getattr(base, k))])
        assert getattr(explicit, k) == getattr(base, k), f"{name}: --quick overrode --{k}"


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


def test_run_jobs_resumes_finished_jobs_and_refuses_other_settings(tmp_path):
    calls = []

    def job(name):
        calls.append(name)
        return {"value": len(name)}

    cfg = cli.Common(workdir=str(tmp_path), progress=False)
    assert cli.run_jobs(cfg, ["a", "bb"], job) == {"a": {"value": 1}, "bb": {"value": 2}}
    again = dataclasses.replace(cfg, resume=True)
    assert cli.run_jobs(again, ["a", "bb", "ccc"], job)["ccc"] == {"value": 3}
    assert calls == ["a", "bb", "ccc"]
    with pytest.raises(ValueError, match="other settings"):
        cli.run_jobs(dataclasses.replace(again, seed=1), ["a"], job)


def test_write_json_is_atomic_and_handles_numpy(tmp_path):
    import json

    import numpy as np

    path = tmp_path / "r.json"
    cli.write_json(str(path), {"a": np.arange(3), "b": float("nan")})
    assert json.loads(path.read_text()) == {"a": [0, 1, 2], "b": None}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
