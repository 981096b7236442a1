"""Check that every package's requirement on synthesis-core admits the core's current version, and
that no member points at another by path in its published metadata.

    python3 tools/check_pins.py     # exit 1 and a line per problem, else "ok"
"""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workspace import CORE_DIR, ROOT, Member, members  # noqa: E402


def problems(all_members: list[Member]) -> list[str]:
    core = next(m for m in all_members if m.path == CORE_DIR)
    found = []
    for member in all_members:
        if member is core:
            continue
        requirement = member.requirement_on(core.distribution)
        if requirement is None:
            found.append(f"{member.distribution}: does not depend on {core.distribution}")
            continue
        parsed = Requirement(requirement)
        if parsed.url:
            found.append(
                f"{member.distribution}: depends on {core.distribution} by URL/path ({requirement}); use a version range"
            )
        elif not parsed.specifier:
            found.append(f"{member.distribution}: {core.distribution} has no version range ({requirement})")
        elif not parsed.specifier.contains(core.version, prereleases=True):
            found.append(f"{member.distribution}: {requirement!r} does not admit {core.distribution} {core.version}")
    return found


def main(argv: list[str] | None = None) -> int:
    found = problems(members(ROOT))
    for line in found:
        print(line)
    if not found:
        print("ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
