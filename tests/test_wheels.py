"""Each package's wheel installs and imports with only the synthesis-core wheel beside it.

The wheels are built from the working tree (hatchling, as `hatch build` does). Each model is
installed with the core into its own fresh folder, on top of an interpreter that already has the
third-party dependencies (torch, transformers, ...) but none of the workspace members: the
editable installs of the dev environment are hidden by starting Python without `site` processing.
"""

import json
import site
import subprocess
import sys
import zipfile

import pytest
from workspace import CORE_DIR, ROOT, members

MEMBERS = members()
PACKAGES = [m for m in MEMBERS if m.path != CORE_DIR]

PROBE = r"""
import importlib, importlib.metadata as md, importlib.util, json, sys
target, site_packages, name, dist, siblings = sys.argv[1:6]
sys.path[:0] = [target]
sys.path.append(site_packages)  # third-party packages only: .pth files (our editable installs) are not read
from packaging.requirements import Requirement
module = importlib.import_module(name)
unmet = []
for req in map(Requirement, md.requires(dist) or []):
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        if not req.specifier.contains(md.version(req.name), prereleases=True):
            unmet.append(str(req))
    except md.PackageNotFoundError:
        unmet.append(str(req))
visible = [s for s in siblings.split(",") if s and importlib.util.find_spec(s) is not None]
print(json.dumps({"version": module.__version__, "file": module.__file__, "unmet": unmet, "siblings": visible}))
"""


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    for member in MEMBERS:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-q",
                "-w",
                str(out),
                str(ROOT / member.path),
            ],
            check=True,
        )
    return {m.distribution: next(out.glob(m.distribution.replace("-", "_") + "-*.whl")) for m in MEMBERS}


def test_six_wheels_carry_their_versions_and_the_core_range(wheels):
    for member in MEMBERS:
        wheel = wheels[member.distribution]
        assert wheel.name.startswith(f"{member.distribution.replace('-', '_')}-{member.version}-")
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert f"Version: {member.version}" in metadata
        assert "License-File: LICENSE" in metadata and any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
        assert f"{member.import_name}/py.typed" in names
        if member.path != CORE_DIR:
            assert "Requires-Dist: synthesis-core<0.5,>=0.4" in metadata


@pytest.mark.parametrize("member", PACKAGES, ids=lambda m: m.distribution)
def test_wheel_installs_alone_beside_the_core(member, wheels, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-compile",
            "--target",
            str(target),
            str(wheels["synthesis-core"]),
            str(wheels[member.distribution]),
        ],
        check=True,
    )
    siblings = ",".join(m.import_name for m in PACKAGES if m is not member)
    run = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            PROBE,
            str(target),
            site.getsitepackages()[0],
            member.import_name,
            member.distribution,
            siblings,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["version"] == member.version
    assert result["file"].startswith(str(target)), "imported from the dev checkout, not from the wheel"
    assert result["unmet"] == [], f"requirements not met by the environment: {result['unmet']}"
    assert result["siblings"] == [], "a sibling package leaked into the isolated install"
