"""The API reference site (mkdocs.yml) builds in strict mode and shows every public symbol of gmpjax (issue 21).

The build runs once, in a subprocess, into a temporary folder. The coverage check enumerates the package at run
time (pkgutil + import), independently of the static walk the docs hook does, and looks for every public module
and every name of its ``__all__`` as an anchor on the built pages (through the objects inventory).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import subprocess
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pytest

import gmpjax

ROOT = Path(__file__).resolve().parents[1]
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_jupyter", "griffe")


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # a parent package is missing
        return True


MISSING = [p for p in DOCS_PACKAGES if _absent(p)]
needs_docs = pytest.mark.skipif(
    bool(MISSING), reason=f"docs packages not installed ({', '.join(MISSING)}): pip install -e '.[docs]'"
)


def _load_hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_docs_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def public_modules() -> list[ModuleType]:
    """gmpjax and every submodule whose dotted name has no ``_private`` component, imported."""
    names = [m.name for m in pkgutil.walk_packages(gmpjax.__path__, "gmpjax.")]
    return [gmpjax] + [
        importlib.import_module(n) for n in sorted(names) if not any(p.startswith("_") for p in n.split("."))
    ]


def public_names(module: ModuleType) -> list[str]:
    """``__all__``, or else the public classes and functions defined in the module."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v)) and v.__module__ == module.__name__
    ]


def _own_docstring_missing(obj: object) -> bool:
    """For gmpjax's own classes and functions: no docstring. Other objects (constants, aliases of library types)
    carry their type's docstring at run time, so for them the site check (shown only with a docstring) decides."""
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return False
    if not getattr(obj, "__module__", "").startswith("gmpjax"):
        return False
    return not (obj.__doc__ or "").strip()


def read_inventory(path: Path) -> dict[str, str]:
    """``{name: page#anchor}`` from a Sphinx-format objects.inv (the one mkdocstrings writes)."""
    data = path.read_bytes()
    body = data.split(b"zlib.\n", 1)[1]
    out = {}
    for line in zlib.decompress(body).decode().splitlines():
        name, _role, _prio, uri = line.split(" ", 4)[:4]
        out[name] = uri.replace("$", name)
    return out


@needs_docs
def test_hook_finds_the_modules_that_pkgutil_finds():
    hook = _load_hook("api_pages")
    static = [name for name, _ in hook.public_modules()]
    assert static == sorted(static, key=lambda n: n.split("."))
    assert sorted(static) == sorted(m.__name__ for m in public_modules())
    assert hook.page_uri("gmpjax.layers", True) == "api/layers/index.md"
    assert hook.page_uri("gmpjax.layers.gmp", False) == "api/layers/gmp.md"


@needs_docs
def test_hook_reports_missing_docstrings_and_unknown_arguments(tmp_path):
    pkg = tmp_path / "toypkg"
    (pkg / "_private").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Toy."""\n')
    (pkg / "_private" / "__init__.py").write_text("X = 1\n")
    (pkg / "mod.py").write_text(
        '"""A module."""\n__all__ = ["f", "C", "CONST", "DOC"]\nCONST = 1\nDOC = 2\n"""Documented."""\n\n\n'
        'def f(a, b, c_metadata=None):\n    """F.\n\n    Args:\n      a, b: two.\n      *_metadata: globbed.\n'
        '      ghost: not an argument.\n    """\n\n\nclass C:\n    """C.\n\n    Args:\n      x/y: either.\n    """\n\n'
        "    def __init__(self, x=0, y=0):\n        pass\n"
    )
    (pkg / "nodoc.py").write_text("def g():\n    pass\n\n\ndef _h():\n    pass\n")
    hook = _load_hook("api_pages")
    assert hook.public_modules(tmp_path, "toypkg") == [("toypkg", True), ("toypkg.mod", False), ("toypkg.nodoc", False)]
    loaded = hook.load(tmp_path, "toypkg")
    assert hook.undocumented(loaded, tmp_path) == [
        "toypkg.mod.CONST",
        "toypkg.nodoc (module docstring)",
        "toypkg.nodoc.g",
    ]
    assert hook.unknown_params(loaded, tmp_path) == [
        "toypkg.mod.f: documented argument 'ghost' is not in the signature"
    ]


@needs_docs
def test_doctests_are_fenced_and_roles_become_crossrefs():
    ext = _load_hook("docstring_markdown")
    text = "Intro.\n\n    >>> f(1)  # doctest: +ELLIPSIS\n    2\n\nAfter.\n\n```\n>>> kept\n```"
    assert ext.fence_doctests(text) == (
        "Intro.\n\n    ```pycon\n    >>> f(1)\n    2\n    ```\n\nAfter.\n\n```\n>>> kept\n```"
    )
    assert ext.fence_doctests(">>> x\n1") == "```pycon\n>>> x\n1\n```"
    assert ext.roles_to_crossrefs("see :func:`tent` and :class:`gmpjax.layers.TriangleNet`.") == (
        "see [`tent`][tent] and [`gmpjax.layers.TriangleNet`][gmpjax.layers.TriangleNet]."
    )
    assert ext.roles_to_crossrefs("Layout::\n\n    a::b\n") == "Layout:\n\n    a::b\n"


@needs_docs
def test_site_builds_strict_and_shows_every_public_symbol(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    proc = subprocess.run(
        [*cmd, "--site-dir", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    assert not [line for line in log.splitlines() if line.startswith("WARNING")], log[-6000:]

    # the narrative pages, the equations and the notebooks (rendered from their stored cells, not executed)
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert (site / page.with_suffix(".html").name).is_file(), page.name
    assert (site / "math.html").read_text().count('class="arithmatex"') >= 10
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert (site / "notebooks" / nb.with_suffix(".html").name).is_file(), nb.name

    inventory = read_inventory(site / "objects.inv")
    missing, no_doc, checked = [], [], 0
    for module in public_modules():
        if not (module.__doc__ or "").strip():
            no_doc.append(module.__name__)
        wanted = [module.__name__] + [f"{module.__name__}.{n}" for n in public_names(module)]
        for name in wanted:
            checked += 1
            obj = module if name == module.__name__ else getattr(module, name.rsplit(".", 1)[1])
            if _own_docstring_missing(obj):
                no_doc.append(name)
            uri = inventory.get(name)
            if uri is None:
                missing.append(name)
                continue
            page, anchor = uri.split("#", 1)
            if f'id="{anchor}"' not in (site / page).read_text():
                missing.append(f"{name} (no anchor on {page})")
    assert not no_doc, f"public names without a docstring: {no_doc}"
    assert not missing, f"public names not on the API pages ({len(missing)} of {checked}): {missing}"
    assert checked > 250, checked
