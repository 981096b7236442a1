"""What the workspace is made of: its members, their versions and who depends on whom.

Every tool in this folder reads the members from their own `pyproject.toml` files, so adding a
package under `packages/` needs no change here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import tomllib

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
            raise ValueError(f"{self.about_file}: no __version__ = \"...\" line")
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


def load_member(path: str, root: Path = ROOT) -> Member:
    data = tomllib.loads((root / path / "pyproject.toml").read_text())
    project = data["project"]
    about = root / path / data["tool"]["hatch"]["version"]["path"]
    import_name = about.parent.name
    return Member(path, project["name"], import_name, about, tuple(project.get("dependencies", [])), root)


def members(root: Path = ROOT) -> list[Member]:
    """The core first, then the packages in alphabetical order of their folders."""
    paths = [CORE_DIR] + sorted(f"packages/{p.name}" for p in (root / "packages").iterdir()
                                if (p / "pyproject.toml").exists())
    return [load_member(p, root) for p in paths]


def member_named(name: str, root: Path = ROOT) -> Member:
    """Find a member by distribution name, import name or folder (`imagen`, `imagen-pytorch`, `packages/imagen`)."""
    for member in members(root):
        if normalize(name) in {normalize(member.distribution), normalize(member.import_name),
                               normalize(member.path), normalize(Path(member.path).name)}:
            return member
    known = ", ".join(m.distribution for m in members(root))
    raise ValueError(f"no workspace member named {name!r}; known: {known}")
