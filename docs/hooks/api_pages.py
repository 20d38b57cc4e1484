"""mkdocs hook: the API reference pages and the notebooks, generated from the repository at build time.

One page per public module of ``gmpjax`` (every ``.py`` file and package under ``gmpjax/`` whose dotted path has
no component starting with ``_``), found by walking the source tree, so a new module or a new name in an
``__all__`` shows up without editing the docs. Each page is a single mkdocstrings directive; the handler options
live in ``mkdocs.yml``. The notebooks in ``notebooks/`` (and images beside them) are added as they are stored,
with their outputs and never executed, for mkdocs-jupyter to render.

The hook also loads the package with griffe (statically, jax is not imported) and logs a warning for every public
module and every name of a public module's ``__all__`` without a docstring, and for every documented argument
that is not in the signature; under ``strict: true`` each fails the build.
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import Any

import griffe
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "gmpjax"
API_DIR = "api"
NOTEBOOKS = "notebooks"
NOTEBOOK_FILES = {".ipynb", ".png", ".svg", ".jpg", ".jpeg", ".gif"}

log = logging.getLogger(f"mkdocs.hooks.{__name__}")


def public_modules(root: Path = ROOT, package: str = PACKAGE) -> list[tuple[str, bool]]:
    """``(dotted name, is_package)`` of every public module of ``package``, parents before children, sorted."""
    out = []
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        out.append((".".join(parts), is_pkg))
    return sorted(out, key=lambda m: m[0].split("."))


def page_uri(module: str, is_package: bool) -> str:
    """Site path of a module's page: ``gmpjax.layers`` -> ``api/layers/index.md``, ``gmpjax.cab`` -> ``api/cab.md``."""
    parts = module.split(".")[1:]
    if is_package:
        return "/".join([API_DIR, *parts, "index.md"])
    return "/".join([API_DIR, *parts]) + ".md"


def page_markdown(module: str, children: list[str]) -> str:
    """The generated page: one mkdocstrings directive, plus links to the submodules of a package."""
    text = f"::: {module}\n"
    if children:
        links = "\n".join(f"- [`{c}`][{c}]" for c in children)
        text += f"\n## Modules\n\n{links}\n"
    return text


def _nav_tree(modules: list[tuple[str, bool]]) -> list[Any]:
    """A nested nav: a package is a section whose first page is its own index page."""

    def section(prefix: str) -> list[Any]:
        depth = prefix.count(".") + 1
        items: list[Any] = []
        for name, is_pkg in modules:
            if not name.startswith(prefix + ".") or name.count(".") != depth:
                continue
            if is_pkg:
                items.append({name: [page_uri(name, True), *section(name)]})
            else:
                items.append({name: page_uri(name, False)})
        return items

    return [page_uri(PACKAGE, True), *section(PACKAGE)]


def _children(module: str, modules: list[tuple[str, bool]]) -> list[str]:
    return [n for n, _ in modules if n.startswith(module + ".") and n.count(".") == module.count(".") + 1]


def load(root: Path = ROOT, package: str = PACKAGE) -> griffe.Module:
    """The package as griffe reads it from the source files (nothing is imported)."""
    return griffe.load(
        package, search_paths=[str(root)], try_relative_path=False, resolve_aliases=True, docstring_parser="google"
    )


def _module(pkg: griffe.Module, name: str) -> griffe.Module:
    return pkg if name == pkg.path else pkg[name.split(".", 1)[1]]


def _exported(mod: griffe.Module) -> list[str]:
    """The module's ``__all__``; without one, its public classes and functions."""
    if mod.exports is not None:
        return [str(e) for e in mod.exports]
    own = {n: m for n, m in mod.members.items() if not n.startswith("_") and not m.is_alias}
    return [n for n, m in own.items() if m.is_class or m.is_function]


def undocumented(pkg: griffe.Module, root: Path = ROOT) -> list[str]:
    """Public modules and names exported by a public module that have no docstring."""
    missing = []
    for name, _ in public_modules(root, pkg.path):
        mod = _module(pkg, name)
        if mod.docstring is None or not mod.docstring.value.strip():
            missing.append(f"{name} (module docstring)")
        for n in _exported(mod):
            obj = mod.members.get(n)
            target = obj.final_target if obj is not None and obj.is_alias else obj
            if target is None or target.docstring is None or not target.docstring.value.strip():
                missing.append(f"{name}.{n}")
    return missing


def _documented_params(obj: griffe.Object) -> list[str]:
    """Names in the ``Args:`` sections of ``obj``'s docstring; ``a, b: text`` and ``a/b: text`` give a and b."""
    if obj.docstring is None:
        return []
    sections = obj.docstring.parse("google", warnings=False)
    names = []
    for section in sections:
        if section.kind in (griffe.DocstringSectionKind.parameters, griffe.DocstringSectionKind.other_parameters):
            for param in section.value:
                names += [n.strip() for n in param.name.replace("/", ",").split(",") if n.strip()]
    return names


def _matches(param: str, documented: str) -> bool:
    return fnmatch.fnmatchcase(param, documented) or param == documented.lstrip("*")


def unknown_params(pkg: griffe.Module, root: Path = ROOT) -> list[str]:
    """Documented arguments that are not in the signature (griffe's own check, which knows no ``a, b:`` groups).

    A name may be ``*args``/``**kwargs`` or a glob (``*_metadata``) that matches at least one parameter.
    """
    bad = []
    for name, _ in public_modules(root, pkg.path):
        mod = _module(pkg, name)
        objs = [m for m in mod.members.values() if not m.is_alias and (m.is_function or m.is_class)]
        objs += [f for c in objs if c.is_class for f in c.members.values() if not f.is_alias and f.is_function]
        for obj in objs:
            params = {p.name for p in obj.parameters} if isinstance(obj, griffe.Function | griffe.Class) else set()
            unknown = [d for d in _documented_params(obj) if not any(_matches(p, d) for p in params)]
            bad += [f"{obj.path}: documented argument {d!r} is not in the signature" for d in unknown]
    return bad


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Append the notebooks and the generated API pages to the nav written in mkdocs.yml."""
    notebooks = sorted((ROOT / NOTEBOOKS).glob("*.ipynb"))
    nav = list(config.nav or [])
    if notebooks:
        nav.append({"Notebooks": [f"{NOTEBOOKS}/{p.name}" for p in notebooks]})
    nav.append({"API reference": _nav_tree(public_modules())})
    config.nav = nav
    return config


@event_priority(100)  # before mkdocs-jupyter wraps the .ipynb files
def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add one generated page per public module and the stored notebooks."""
    modules = public_modules()
    for name, is_pkg in modules:
        content = page_markdown(name, _children(name, modules) if is_pkg else [])
        files.append(File.generated(config, page_uri(name, is_pkg), content=content))
    # the notebooks and any image files beside them (figures a Markdown cell links to), rooted at the repository
    # (not File.generated: mkdocs-jupyter reads abs_src_path from src_dir)
    for path in sorted((ROOT / NOTEBOOKS).rglob("*")):
        if path.suffix.lower() in NOTEBOOK_FILES and ".ipynb_checkpoints" not in path.parts:
            rel = path.relative_to(ROOT).as_posix()
            files.append(File(rel, str(ROOT), config.site_dir, config.use_directory_urls))
    pkg = load()
    for name in undocumented(pkg):
        log.warning(f"public symbol without a docstring: {name}")
    for line in unknown_params(pkg):
        log.warning(line)
    return files
