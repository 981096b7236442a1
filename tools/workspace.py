"""What the workspace is made of: its members, their versions and who depends on whom.

The members are listed once, in the root `pyproject.toml` (`[tool.workspace] members`, the core
first); every tool, test and workflow reads them through this module, and each member's own
`pyproject.toml` says its name, version file and dependencies.

    python tools/workspace.py paths              # the members' folders, one a line
    python tools/workspace.py install-editable   # pip install -e every member into this interpreter

This file runs on a bare Python 3.10 (tools/dev.py imports it before any environment exists), so
it reads TOML with `tomllib` (or `tomli`) where there is one, and otherwise only the members list.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport, where the environment has it (hatchling brings it)
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
CORE_DIR = "shared-core"


@dataclass(frozen=True)
class Member:
    path: str  # relative to the workspace root, e.g. "packages/imagen"
    distribution: str  # e.g. "imagen-pytorch"
    import_name: str  # e.g. "imagen_pytorch"
    about_file: Path  # where __version__ lives
    dependencies: tuple[str, ...]  # requirement strings of [project].dependencies
    root: Path = ROOT  # the workspace this member belongs to

    @property
    def version(self) -> str:
        match = re.search(r'__version__\s*=\s*"([^"]+)"', self.about_file.read_text())
        if match is None:
            raise ValueError(f'{self.about_file}: no __version__ = "..." line')
        return match.group(1)

    @property
    def changelog(self) -> Path:
        return self.root / self.path / "CHANGELOG.md"

    def requirement_on(self, distribution: str) -> str | None:
        """This member's requirement string naming `distribution`, if any."""
        for requirement in self.dependencies:
            name = re.split(r"[\s<>=!~;\[@]", requirement, maxsplit=1)[0]
            if normalize(name) == normalize(distribution):
                return requirement
        return None


def normalize(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _read_toml(path: Path) -> dict[str, Any]:
    if tomllib is None:
        raise RuntimeError(f"reading {path} needs Python 3.11+ (tomllib) or tomli; only member_paths() works without")
    return tomllib.loads(path.read_text())


def member_paths(root: Path = ROOT) -> list[str]:
    """The members' folders relative to `root`, as the root pyproject lists them (the core first)."""
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    if tomllib is not None:
        paths = tomllib.loads(text).get("tool", {}).get("workspace", {}).get("members")
    else:  # Python 3.10: the list is plain strings, so it is also a Python literal
        table = re.search(r"^\[tool\.workspace\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
        array = re.search(r"^members\s*=\s*(\[.*?\])", table.group(1), re.M | re.S) if table else None
        paths = ast.literal_eval(re.sub(r"#[^\n]*", "", array.group(1))) if array else None
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise ValueError(f'{pyproject}: expected [tool.workspace] members = ["shared-core", "packages/...", ...]')
    if paths[0] != CORE_DIR:
        raise ValueError(f"{pyproject}: [tool.workspace] members must list {CORE_DIR!r} first, got {paths[0]!r}")
    return paths


def load_member(path: str, root: Path = ROOT) -> Member:
    data = _read_toml(root / path / "pyproject.toml")
    project = data["project"]
    about = root / path / data["tool"]["hatch"]["version"]["path"]
    import_name = about.parent.name
    return Member(path, project["name"], import_name, about, tuple(project.get("dependencies", [])), root)


def members(root: Path = ROOT) -> list[Member]:
    """The members in the order the root pyproject lists them: the core first."""
    return [load_member(p, root) for p in member_paths(root)]


def member_named(name: str, root: Path = ROOT) -> Member:
    """Find a member by distribution name, import name or folder (`imagen`, `imagen-pytorch`, `packages/imagen`)."""
    for member in members(root):
        if normalize(name) in {
            normalize(member.distribution),
            normalize(member.import_name),
            normalize(member.path),
            normalize(Path(member.path).name),
        }:
            return member
    known = ", ".join(m.distribution for m in members(root))
    raise ValueError(f"no workspace member named {name!r}; known: {known}")


def install_editable(python: str = sys.executable, root: Path = ROOT) -> None:
    """`pip install -e` every member into `python` (what `hatch env create` and tools/dev.py run)."""
    editable = [arg for path in member_paths(root) for arg in ("-e", str(root / path))]
    subprocess.run([python, "-m", "pip", "install", "-q", *editable], check=True, cwd=root)


def main(argv: list[str]) -> int:
    if argv == ["paths"]:
        print("\n".join(member_paths()))
        return 0
    if argv == ["install-editable"]:
        install_editable()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
