"""Build one member or all of them into dist/ with `hatch build` (wheel + sdist).

    python3 tools/build.py                 # all six
    python3 tools/build.py imagen          # one member
    python3 tools/build.py --tag imagen-pytorch-v0.2.0   # the member a release tag names, checking the version
    python3 tools/build.py --tag imagen-pytorch-v0.2.0 --print-path   # only its folder (what the release tests)

Release tags are `<distribution>-v<version>`, e.g. `imagen-pytorch-v0.2.0`. Falls back to
`python -m build`-free `pip wheel` only if hatch is missing (`--no-hatch`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workspace import ROOT, Member, member_named, members  # noqa: E402


def member_for_tag(tag: str) -> Member:
    match = re.fullmatch(r"(?P<dist>[a-z0-9-]+)-v(?P<version>\d+\.\d+\.\d+(?:[.-]?\w+)?)", tag)
    if match is None:
        raise ValueError(f"release tag {tag!r} is not <distribution>-v<version>, e.g. imagen-pytorch-v0.2.0")
    member = member_named(match["dist"])
    if member.version != match["version"]:
        raise ValueError(f"tag {tag} names version {match['version']} but {member.distribution} is {member.version}")
    return member


def build(member: Member, out: Path, use_hatch: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    hatch = shutil.which("hatch") or (str(Path(sys.executable).with_name("hatch")) if use_hatch else None)
    if use_hatch and hatch and Path(hatch).exists():
        subprocess.run([hatch, "build", str(out)], cwd=ROOT / member.path, check=True, capture_output=True)
    else:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT / member.path)],
            check=True,
        )
    return sorted(set(out.iterdir()) - before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("member", nargs="?", help="one member (default: all)")
    parser.add_argument("--tag", help="a release tag; builds the member it names")
    parser.add_argument("--out", default=str(ROOT / "dist"))
    parser.add_argument("--no-hatch", action="store_true")
    parser.add_argument(
        "--print-path",
        action="store_true",
        help="print the chosen members' folders (the tag's version checked) and build nothing",
    )
    args = parser.parse_args(argv)
    if args.tag:
        chosen = [member_for_tag(args.tag)]
    elif args.member:
        chosen = [member_named(args.member)]
    else:
        chosen = members()
    if args.print_path:
        print("\n".join(member.path for member in chosen))
        return 0
    for member in chosen:
        for path in build(member, Path(args.out), use_hatch=not args.no_hatch):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
