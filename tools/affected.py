"""Which distributions a change affects: the members whose files changed, plus every member that
depends on them (a change to synthesis-core selects all five packages).

    python3 tools/affected.py --base origin/main          # from git
    git diff --name-only A B | python3 tools/affected.py  # from a list of paths on stdin
    python3 tools/affected.py --json --base HEAD~1        # a JSON list, for a CI matrix

A change outside every member (root pyproject, tools/, tests/, .ci/, workflows) selects every member,
since it can change how all of them are built or tested; Markdown outside the members and
benchmark results select nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workspace import ROOT, Member, members  # noqa: E402

NEUTRAL_PREFIXES = ("benchmarks/",)


def dependents_closure(selected: set[str], all_members: list[Member]) -> set[str]:
    """Add every member that depends, directly or not, on a selected one (by distribution name)."""
    result = set(selected)
    changed = True
    while changed:
        changed = False
        for member in all_members:
            if member.distribution in result:
                continue
            if any(member.requirement_on(other) for other in result):
                result.add(member.distribution)
                changed = True
    return result


def affected(paths: list[str], all_members: list[Member] | None = None) -> list[str]:
    """Distribution names affected by changes to `paths` (relative to the root), in workspace order."""
    all_members = members() if all_members is None else all_members
    selected: set[str] = set()
    for raw in paths:
        path = raw.strip().lstrip("./")
        if not path:
            continue
        owner = next((m for m in all_members if path == m.path or path.startswith(m.path + "/")), None)
        if owner is not None:
            selected.add(owner.distribution)
        elif path.endswith(".md") or path.startswith(NEUTRAL_PREFIXES):
            continue
        else:
            selected.update(m.distribution for m in all_members)
    closed = dependents_closure(selected, all_members)
    return [m.distribution for m in all_members if m.distribution in closed]


def changed_paths(base: str) -> list[str]:
    out = subprocess.run(
        ["git", "diff", "--name-only", f"{base}...HEAD"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return out.splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="git revision to compare HEAD with; without it, paths are read from stdin")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {distribution, path}")
    args = parser.parse_args(argv)
    paths = changed_paths(args.base) if args.base else sys.stdin.read().splitlines()
    names = affected(paths)
    if args.json:
        by_name = {m.distribution: m.path for m in members()}
        print(json.dumps([{"distribution": n, "path": by_name[n]} for n in names]))
    else:
        print("\n".join(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
