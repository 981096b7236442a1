"""Bump one member's version (`hatch version` underneath) and open a dated section in its CHANGELOG.md.

    python3 tools/bump.py imagen minor            # 0.1.0 -> 0.2.0
    python3 tools/bump.py synthesis-core patch -m "Fix the DDIM eta=1 step"

The new section is put above the previous ones; the line given with -m (or a placeholder to fill in)
goes under it. Use `--no-hatch` to rewrite `__about__.py` directly where hatch is not installed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workspace import Member, member_named  # noqa: E402

PARTS = ("major", "minor", "patch")


def next_version(version: str, part: str) -> str:
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"version {version!r} is not MAJOR.MINOR.PATCH")
    major, minor, patch = map(int, match.groups())
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ValueError(f"part must be one of {PARTS}, got {part!r}")


def open_changelog_section(changelog: Path, version: str, line: str, today: dt.date) -> None:
    text = changelog.read_text() if changelog.exists() else "# Changelog\n"
    section = f"## {version} - {today.isoformat()}\n- {line}\n\n"
    first = re.search(r"^## ", text, flags=re.M)
    text = text[: first.start()] + section + text[first.start() :] if first else text.rstrip("\n") + "\n\n" + section
    changelog.write_text(text)


def set_version(member: Member, part: str, use_hatch: bool) -> str:
    new = next_version(member.version, part)
    hatch = shutil.which("hatch") if use_hatch else None
    if hatch:
        subprocess.run([hatch, "version", part], cwd=member.root / member.path, check=True, capture_output=True)
    else:
        text = member.about_file.read_text()
        member.about_file.write_text(re.sub(r'__version__\s*=\s*"[^"]+"', f'__version__ = "{new}"', text))
    if member.version != new:
        raise RuntimeError(f"{member.distribution}: expected version {new}, found {member.version}")
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("member", help="distribution, import or folder name (imagen, imagen-pytorch, shared-core)")
    parser.add_argument("part", choices=PARTS)
    parser.add_argument("-m", "--message", default="(describe the change)", help="the CHANGELOG line")
    parser.add_argument("--no-hatch", action="store_true", help="edit __about__.py directly")
    args = parser.parse_args(argv)
    member = member_named(args.member)
    old = member.version
    new = set_version(member, args.part, use_hatch=not args.no_hatch)
    open_changelog_section(member.changelog, new, args.message, dt.date.today())
    print(f"{member.distribution}: {old} -> {new} (tag {member.distribution}-v{new})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
