"""Execute every Python block of one markdown file, in order, in one namespace (used by tests/test_docs_code.py).

A block may be preceded by a declared setup block, an HTML comment that the rendered page does not show::

    <!-- setup
    model, tx = ...
    -->
    ```python
    ...the documented code...
    ```

The setup code runs just before its block, in the same namespace. Prints ``BLOCK <line> ok`` per block.

``python tests/scripts/run_doc_blocks.py README.md`` (the tests run it with 8 host devices).
"""

from __future__ import annotations

import re
import sys
import traceback

BLOCK = re.compile(r"(?:<!--\s*setup\s*\n(?P<setup>.*?)-->\s*\n)?```python\n(?P<code>.*?)^```", re.S | re.M)


def blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line of the block, setup code, code)`` for every ```python block of ``text``."""
    return [
        (text.count("\n", 0, m.start("code")) + 1, m.group("setup") or "", m.group("code"))
        for m in BLOCK.finditer(text)
    ]


def main(path: str) -> int:
    namespace: dict = {"__name__": "__doc_block__"}
    for line, setup, code in blocks(open(path).read()):
        try:
            exec(compile(setup, f"{path}:{line} (setup)", "exec"), namespace)
            exec(compile(code, f"{path}:{line}", "exec"), namespace)
        except Exception:
            traceback.print_exc()
            print(f"BLOCK {line} failed", flush=True)
            return 1
        print(f"BLOCK {line} ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
