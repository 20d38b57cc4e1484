"""griffe extension: two Markdown readings of the docstrings, applied to the text griffe loaded (not the files).

- The package's docstrings carry their doctests in the prose (``>>>`` lines, as pytest's ``--doctest-modules``
  runs them) rather than in a Google ``Examples:`` section; without a fence Markdown would read ``>>>`` as nested
  block quotes. A doctest block runs from its first ``>>>`` line to the next blank line, as in doctest itself.
- Sphinx roles (``:func:`name```, ``:class:``, ``:meth:``, ...) become mkdocstrings cross-references
  (``[`name`][name]``), resolved from the docstring's scope (``scoped_crossrefs``); one that does not resolve is
  a warning, which fails the strict build.
- A reST literal-block marker at the end of a line (``Layout::``) becomes a plain colon; the indented block after
  it is a Markdown code block already.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj|exc):`~?([\w.]+)`")
_LITERAL_MARKER = re.compile(r"(\S)::$", re.MULTILINE)
_FLAGS = re.compile(r"\s*#\s*doctest:\s*[+-]\w+(\s*,\s*[+-]\w+)*\s*$")


def fence_doctests(text: str) -> str:
    """Wrap every run of doctest lines (``>>>`` up to a blank line) outside a code fence in a ``pycon`` fence."""
    out: list[str] = []
    in_fence = in_doctest = False
    indent = ""
    for line in text.split("\n"):
        stripped = line.strip()
        if in_doctest and not stripped:
            out.append(f"{indent}```")
            in_doctest = False
        elif not in_doctest and stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_doctest and not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            in_doctest = True
        out.append(_FLAGS.sub("", line) if in_doctest else line)
    if in_doctest:
        out.append(f"{indent}```")
    return "\n".join(out)


def roles_to_crossrefs(text: str) -> str:
    """``:func:`a.b``` -> ``[`a.b`][a.b]`` (a mkdocstrings cross-reference); a trailing ``::`` -> ``:``."""
    return _LITERAL_MARKER.sub(r"\1:", _ROLE.sub(lambda m: f"[`{m.group(1)}`][{m.group(1)}]", text))


class DocstringMarkdown(griffe.Extension):
    """Fence the bare doctest blocks and turn Sphinx roles into cross-references, before a docstring is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring text in place (the source files are not touched)."""
        if obj.docstring is not None:
            obj.docstring.value = roles_to_crossrefs(fence_doctests(obj.docstring.value))
