"""Regenerate the export table of shared-core/src/synthesis_core/__init__.py from each module's __all__.

.venv/bin/python tools/gen_core_exports.py   # rewrites the block between the BEGIN/END markers
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

MODULES = [
    "utils",
    "checks",
    "layers",
    "attention",
    "chunked",
    "quantize",
    "gan",
    "diffusion",
    "text",
    "checkpoint",
    "training",
    "video",
    "folders",
    "shapes",
    "cli",
    "protocol",
]
INIT = Path(__file__).resolve().parent.parent / "shared-core/src/synthesis_core/__init__.py"


def main() -> None:
    lines, seen = [], {}
    for name in MODULES:
        module = importlib.import_module(f"synthesis_core.{name}")
        exported = [n for n in module.__all__ if n not in seen]
        for n in exported:
            seen[n] = name
        body = ", ".join(f'"{n}"' for n in exported)
        lines.append(f'    "{name}": ({body},),')
    block = "_EXPORTS = {\n" + "\n".join(lines) + "\n}"
    text = INIT.read_text()
    text = re.sub(r"# BEGIN EXPORTS\n.*# END EXPORTS", f"# BEGIN EXPORTS\n{block}\n# END EXPORTS", text, flags=re.S)
    INIT.write_text(text)


if __name__ == "__main__":
    main()
